"""scripts/sweep_thresholds.py: chooses on dev, reports on test, agrees with fairseq-validate."""
import csv

import pytest

from helpers import BIN, run, validate


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
