"""The main job's pieces (leebert_plugin/demo.py) on the tiny trained model, and the training progress bar."""
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import run, validate
from leebert_plugin.runtime.launch import json_records
from leebert_plugin import demo
from leebert_plugin.errors import UsageError
from leebert_plugin.runtime.launch import ATTEMPT_MARK, train_with_progress


def test_report_chooses_on_dev_and_its_full_depth_row_is_fairseq_validates(trained, mr_bin, tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "TARGET", 1.2)
    table = demo.report(tmp_path, trained / "checkpoint_best.pt", mr_bin, "cpu")
    full = validate(trained, mr_bin, subset="test")
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in table.splitlines() if line.startswith("| ")}
    assert f"{full['accuracy']:.2f}" == rows["full depth"][0].strip()
    early = rows["early exit"]
    assert float(early[2].strip().rstrip("x")) >= 1.0 and float(early[1]) < 4.0  # fewer layers than full depth
    assert (tmp_path / "pareto.png").stat().st_size > 1000


def test_no_threshold_reaching_the_target_is_said_plainly(trained, mr_bin, tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "TARGET", 1000.0)
    assert "no threshold reached 1000x on dev" in demo.report(tmp_path, trained / "checkpoint_best.pt", mr_bin, "cpu")


def test_train_with_progress_logs_everything_and_counts_updates(tmp_path, capfd):
    script = ("import sys\n"
              "for n in (5, 10, 15):\n"
              "    print('[x][train_inner][INFO] - {\"epoch\": 1, \"num_updates\": \"%d\"}' % n, flush=True)\n"
              "print('stderr line', file=sys.stderr)\n"
              "sys.exit(3)\n")
    code, seconds = train_with_progress([sys.executable, "-c", script], tmp_path / "log", 15, "probe")
    log = (tmp_path / "log").read_text()
    assert code == 3 and seconds > 0
    assert log.count("num_updates") == 3 and "stderr line" in log
    assert "15/15" in capfd.readouterr().err  # the bar reached its total


def test_a_resumed_attempt_appends_to_the_log_and_keeps_what_the_killed_one_logged(tmp_path):
    """The benchmark and the main job resume a killed run in its save dir: the first attempt's
    records (SmartBERT's stage-1 gate records among them) must survive the second attempt."""
    def attempt(epoch: int) -> str:
        return f"print('[x][valid][INFO] - {{\"epoch\": {epoch}, \"valid_gate_logit_mean\": \"0.5\"}}')"

    log = tmp_path / "train.log"
    assert train_with_progress([sys.executable, "-c", attempt(1)], log, 1, "probe")[0] == 0
    assert ATTEMPT_MARK not in log.read_text()  # a first attempt has no mark
    assert train_with_progress([sys.executable, "-c", attempt(2)], log, 1, "probe")[0] == 0
    text = log.read_text()
    assert [int(r["epoch"]) for r in json_records(text, "valid")] == [1, 2]
    assert text.count(ATTEMPT_MARK) == 1 and text.index(ATTEMPT_MARK) < text.index('"epoch": 2')


def test_a_killed_attempt_has_logged_every_line_its_run_printed(tmp_path):
    """A session's end kills the benchmark (SIGKILL, no flush): every line the training printed
    before must already be in the log, the last stage-1 epoch's gate record too."""
    log = tmp_path / "train.log"
    child = ("import time; [print('[x][valid][INFO] - {\"epoch\": %d, \"valid_gate_logit_mean\": \"0.5\"}' % e, "
             "flush=True) for e in (1, 2, 3)]; time.sleep(60)")
    parent = (f"import sys; from pathlib import Path; from leebert_plugin.runtime.launch import train_with_progress; "
              f"train_with_progress([sys.executable, '-c', {child!r}], Path({str(log)!r}), 1, 'probe')")
    proc = subprocess.Popen([sys.executable, "-c", parent], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and '"epoch": 3' not in (log.read_text() if log.is_file() else ""):
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the parent and its training, as a session's end does
        proc.wait()
    assert [int(r["epoch"]) for r in json_records(log.read_text(), "valid")] == [1, 2, 3]


def test_a_rerun_with_other_settings_is_refused(tmp_path):
    demo.same_settings(tmp_path, {"train_rows": 6000, "epochs": 1, "seed": 1})
    demo.same_settings(tmp_path, {"train_rows": 6000, "epochs": 1, "seed": 1})  # the same: goes on
    with pytest.raises(UsageError, match=r"train_rows=6000 \(now 4000\)"):
        demo.same_settings(tmp_path, {"train_rows": 4000, "epochs": 1, "seed": 1})


def test_the_report_ends_with_the_next_commands_and_the_validate_one_runs(trained, mr_bin, tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "TARGET", 1.2)
    checkpoint = trained / "checkpoint_best.pt"
    table = demo.report(tmp_path, checkpoint, mr_bin, "cpu")
    chosen = float(table.split("threshold ", 1)[1].split(" ", 1)[0])
    commands = [line for line in table.splitlines()[-7:] if line and not line.startswith(("#", "```"))]
    export, serve, validate_line = commands[-3:]
    assert table.rstrip().endswith("```")  # the commands are the last thing the user sees
    assert Path(export.split()[0]).name == "python"  # the venv's interpreter, not the base one its link points to
    assert export.split()[1:] == ["-m", "leebert_plugin.export", str(checkpoint), str(mr_bin), str(tmp_path / "export"),
                                  "--overwrite"]
    assert f"from_pretrained('{tmp_path / 'export'}')" in serve and f"threshold={chosen:g}" in serve
    argv = shlex.split(validate_line)
    assert argv[1:4] == [str(mr_bin), "--path", str(checkpoint)]
    other = float(argv[argv.index("--exit-threshold") + 1])
    assert other != chosen  # "another threshold"
    proc = run([*argv, "--cpu", "--log-format", "json"])  # from the repository root, as the report says
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [len(json_records(proc.stdout, subset)) for subset in ("valid", "test")] == [1, 1]


@pytest.fixture
def root_logger_restored():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_library_log_lines_go_to_the_log_file_not_the_terminal(tmp_path, capfd, root_logger_restored):
    demo.library_logs_to(tmp_path / "main-job.log")
    logging.getLogger("hydra.core.utils").debug("Setting JobRuntime")  # below the file's level: dropped
    logging.getLogger("leebert_plugin.models.hf_bert_import").info("no MLM head in the checkpoint")
    demo.step("a progress line")
    out = capfd.readouterr()
    assert out.out == "[main job] a progress line\n" and out.err == ""
    log = (tmp_path / "main-job.log").read_text()
    assert "no MLM head in the checkpoint" in log and "Setting JobRuntime" not in log
