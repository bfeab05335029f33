"""The command-line boundary: a UsageError is a ValueError in the library and one line at a command."""
import subprocess
import sys

import pytest
from hydra.core.utils import JobReturn, JobStatus

from helpers import ROOT, assert_one_clear_error, run
from leebert_plugin import cli
from leebert_plugin.errors import UsageError, usage_error_line

BAD = UsageError("exit_threshold=1.5 is out of range", "pass a value in [0, 1]")


def test_a_usage_error_is_a_value_error_with_one_line():
    assert isinstance(BAD, ValueError) and not isinstance(BAD, SystemExit)
    assert str(BAD) == "leebert-plugin: error: exit_threshold=1.5 is out of range. Fix: pass a value in [0, 1]"
    assert (BAD.problem, BAD.fix) == ("exit_threshold=1.5 is out of range", "pass a value in [0, 1]")


def _rewrapped() -> Exception:
    """What fairseq's trainer does with a failure while loading a checkpoint."""
    try:
        try:
            raise BAD
        except Exception:
            raise Exception("Cannot load model parameters from checkpoint x.pt")
    except Exception as err:
        return err


def test_the_line_is_found_behind_a_re_raise_and_in_a_workers_traceback_text():
    assert usage_error_line(BAD) == str(BAD)
    assert usage_error_line(_rewrapped()) == str(BAD)
    explicit = RuntimeError("wrapped")
    explicit.__cause__ = BAD
    assert usage_error_line(explicit) == str(BAD)
    spawned = RuntimeError(f"\n\n-- Process 1 terminated with the following error:\nTraceback ...\n"
                           f"leebert_plugin.errors.UsageError: {BAD}\n")
    assert usage_error_line(spawned) == str(BAD)
    assert usage_error_line(RuntimeError("out of memory")) is None
    assert usage_error_line(None) is None
    # raised again in the caller's process: the same problem and fix, the same line, even where
    # they hold sentences of their own
    again = UsageError.from_line(usage_error_line(spawned))
    assert (again.problem, again.fix, str(again)) == (BAD.problem, BAD.fix, str(BAD))
    wordy = UsageError("no data. The folder is empty", "run prepare_data. Then retry")
    again = UsageError.from_line(f"stderr noise\n{wordy}\n")
    assert (again.problem, again.fix) == (wordy.problem, wordy.fix)
    with pytest.raises(ValueError, match="not a 'leebert-plugin: error:' line"):
        UsageError.from_line("Traceback (most recent call last)")


def test_run_turns_a_usage_error_into_its_line_and_leaves_other_errors_alone():
    def bad():
        raise _rewrapped()

    with pytest.raises(SystemExit) as exit_:
        cli.run(bad)
    assert exit_.value.code == str(BAD)
    assert cli.run(lambda: 3) == 3

    def broken():
        raise KeyError("a bug, not a bad input")

    with pytest.raises(KeyError):
        cli.run(broken)


def test_the_hydra_callback_ends_a_failed_job_in_the_line_and_ignores_others():
    callback = cli.UsageErrorInOneLine()
    failed = JobReturn(status=JobStatus.FAILED, _return_value=_rewrapped())
    with pytest.raises(SystemExit) as exit_:
        callback.on_job_end(config=None, job_return=failed)
    assert exit_.value.code == str(BAD)
    callback.on_job_end(config=None, job_return=JobReturn(status=JobStatus.FAILED, _return_value=KeyError("bug")))
    callback.on_job_end(config=None, job_return=JobReturn(status=JobStatus.COMPLETED, _return_value=0.5))


def test_an_uncaught_usage_error_under_a_fairseq_command_is_one_line_and_status_1():
    code = ("import sys; sys.argv[0] = 'fairseq-validate'; import leebert_plugin\n"
            "from leebert_plugin.errors import UsageError\n"
            "try:\n    raise UsageError('the problem', 'the fix')\nexcept Exception:\n    raise Exception('wrapped')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert_one_clear_error(proc, "the problem", "the fix")


def test_outside_a_fairseq_command_the_library_leaves_the_excepthook_alone():
    code = "import sys; hook = sys.excepthook; import leebert_plugin; print(sys.excepthook is hook)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.stdout.strip() == "True", proc.stderr


def test_argument_errors_are_usage_errors_and_numbers_are_finite_and_in_range(tmp_path):
    p = cli.ArgumentParser(prog="sweep")
    p.add_argument("--batch-size", type=cli.number(int, low=1))
    p.add_argument("--scale", type=cli.number(float, low=0, high=1, low_open=True))
    assert p.parse_args(["--batch-size", "3", "--scale", "1"]).batch_size == 3
    for argv, words in [(["--batch-size", "0"], "0 is below 1"), (["--batch-size", "2.5"], "'2.5' is not an integer"),
                        (["--scale", "0"], "0 is at or below 0"), (["--scale", "inf"], "'inf' is not a finite"),
                        (["--scale", "1.5"], "1.5 is above 1"), (["--nope"], "unrecognized arguments: --nope")]:
        with pytest.raises(UsageError, match=words) as err:
            p.parse_args(argv)
        assert str(err.value).startswith("leebert-plugin: error: sweep: ") and "see sweep --help" in err.value.fix
    (tmp_path / "a.tsv").write_text("x")
    cli.refuse_existing([tmp_path / "b.tsv"], overwrite=False)
    cli.refuse_existing([tmp_path / "a.tsv"], overwrite=True)
    with pytest.raises(UsageError, match="a.tsv already exists"):
        cli.refuse_existing([tmp_path / "a.tsv", tmp_path / "b.tsv"], overwrite=False)


def test_a_failed_job_with_threads_still_running_ends_in_the_line_and_status_1(tmp_path):
    """issue 34: a UsageError raised mid-epoch (the bi-level split check) printed its line and then
    aborted (status 134) in the interpreter's teardown under the data loader's threads; with a
    thread still running, the callback runs the exit handlers and ends the process with status 1."""
    script = tmp_path / "job.py"
    script.write_text(f"""
import atexit, sys, threading, time
from hydra.core.utils import JobReturn, JobStatus
from leebert_plugin import cli
from leebert_plugin.errors import UsageError
atexit.register(lambda: open({str(tmp_path / 'released')!r}, 'w').write('lock released'))
threading.Thread(target=lambda: time.sleep(60), daemon=True).start()
failed = JobReturn(status=JobStatus.FAILED, _return_value=UsageError("D1 is empty", "use a d2_ratio nearer 0.5"))
cli.UsageErrorInOneLine().on_job_end(config=None, job_return=failed)
print("not reached")
""")
    proc = run([sys.executable, str(script)], cwd=ROOT)
    assert proc.returncode == 1 and "not reached" not in proc.stdout
    assert proc.stderr.strip().splitlines() == ["leebert-plugin: error: D1 is empty. Fix: use a d2_ratio nearer 0.5"]
    assert (tmp_path / "released").read_text() == "lock released"
