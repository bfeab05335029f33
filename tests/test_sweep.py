"""scripts/sweep_thresholds.py: chooses on dev, reports on test, agrees with fairseq-validate."""
import csv

import pytest

from helpers import BIN, assert_refused, run, validate


def test_sweep_chooses_on_dev_and_matches_fairseq_validate_on_test(trained, mr_bin, tmp_path):
    thresholds = ["0.9", "0.98", "0.995", "0.999"]
    proc = run([str(BIN / "python"), "scripts/sweep_thresholds.py", str(trained / "checkpoint_best.pt"), str(mr_bin),
                "--policy", "normalized_entropy", "--thresholds", *thresholds, "--max-drop", "5",
                "--out", str(tmp_path), "--device", "cpu"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "sweep.tsv"), delimiter="\t"))
    dev = [r for r in rows if r["split"] == "valid"]
    (test,) = [r for r in rows if r["split"] == "test"]
    assert [float(r["threshold"]) for r in dev] == [float(t) for t in thresholds]
    assert (tmp_path / "pareto.png").stat().st_size > 10_000
    # the choice: the fastest dev threshold within 5 points of full depth
    full = float(proc.stdout.split("dev full depth: accuracy ")[1].split(";")[0])
    eligible = [r for r in dev if float(r["accuracy"]) >= full - 5]
    best = max(eligible, key=lambda r: (float(r["layer_speedup"]), float(r["accuracy"])))
    assert test["threshold"] == best["threshold"]
    # the same threshold through fairseq-validate on test gives the same figures
    cli = validate(trained, mr_bin, "--exit-policy", "normalized_entropy", "--exit-threshold", test["threshold"],
                   subset="test")
    assert float(test["accuracy"]) == pytest.approx(cli["accuracy"], abs=0.01)
    assert float(test["layer_speedup"]) == pytest.approx(cli["speedup"], abs=0.002)
    assert float(test["flops_speedup"]) == pytest.approx(cli["flops_speedup"], abs=0.002)


def _sweep(trained, mr_bin, out, *args):
    return [str(BIN / "python"), "scripts/sweep_thresholds.py", str(trained / "checkpoint_best.pt"), str(mr_bin),
            "--policy", "max_prob", "--out", str(out), "--device", "cpu", *args]


@pytest.mark.parametrize("args, words", [
    (["--thresholds", "0.9"], ["sweep.tsv", "already exist", "--overwrite"]),  # an earlier sweep is kept
    # with --overwrite only the argument is wrong: refused before anything is replaced
    (["--overwrite", "--thresholds", "0.9", "1.5"], ["1.5 is out of range"]),  # every threshold checked first
    (["--overwrite", "--thresholds", "nan"], ["--thresholds", "'nan' is not a finite number"]),
    (["--overwrite", "--thresholds", "0.9", "--batch-size", "0"], ["--batch-size", "0 is below 1"]),
    (["--overwrite", "--thresholds", "0.9", "--target-speedup", "0.5"], ["--target-speedup", "0.5 is below 1"]),
    (["--overwrite", "--thresholds"], ["--thresholds", "expected at least one argument"]),  # argparse's, one line
])
def test_bad_sweep_arguments_are_one_line_and_an_earlier_sweep_is_untouched(trained, mr_bin, tmp_path, args, words):
    (tmp_path / "sweep.tsv").write_text("an earlier sweep\n")
    (tmp_path / "pareto.png").write_bytes(b"an earlier plot")
    assert_refused(tmp_path, lambda: run(_sweep(trained, mr_bin, tmp_path, *args)), *words)


def test_overwrite_replaces_an_earlier_sweep(trained, mr_bin, tmp_path):
    (tmp_path / "sweep.tsv").write_text("an earlier sweep\n")
    proc = run(_sweep(trained, mr_bin, tmp_path, "--thresholds", "0.9", "--max-drop", "100", "--overwrite"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "sweep.tsv").read_text().startswith("split\tthreshold")
