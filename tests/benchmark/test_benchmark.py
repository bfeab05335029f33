"""scripts/benchmark.py end to end on the tiny model: real training runs, dev-chosen figures that
agree with fairseq-validate and with the stored per-example outcomes, a summary, a plot."""
import csv
import json
import math

import pytest
import torch

from helpers import BIN, assert_one_clear_error, run, validate

from leebert_plugin.benchmark.evaluation import CALIBRATED_SPEEDUPS, ENTROPY_GRID, GATED_GRID, VERSION, Outcomes
from leebert_plugin.benchmark.recipe import Budget, overrides
from leebert_plugin.errors import UsageError
from leebert_plugin.models.exit_roberta import arch_layers


def test_benchmark_runs_methods_and_its_points_match_fairseq_validate(mr_bin, tmp_path):
    out = tmp_path / "bench"
    cmd = [str(BIN / "python"), "scripts/benchmark.py", "--data", str(mr_bin), "--restore", "none",
           "--arch", "exit_roberta_tiny", "--methods", "full_ft", "pabee", "smartbert", "--seeds", "1",
           "--epochs", "2", "--exit-pooling", "cls", "--out", str(out), "--device", "cpu",
           # SmartBERT's recipe (5 + 4 epochs at batch 16) shrunk to 1 soft + 1 hard + 1 stage-2 epoch of 13 updates
           "--override", "smartbert:dataset.batch_size=32", "--override", "smartbert:task.stage1_epochs=2",
           "--override", "smartbert:task.soft_gate_epochs=1", "--override", "smartbert:optimization.max_epoch=3",
           "--override", "smartbert:+model.skip_gate_bias=-1"]
    proc = run(cmd, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    for method in ("full_ft", "pabee", "smartbert"):
        assert f"| {method} |" in summary
    assert (out / "pareto.png").stat().st_size > 1000
    with open(out / "points.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    pabee = {(r["policy"], r["patience"], r["threshold"]): r for r in rows if r["method"] == "pabee"}
    per_exit = [r for r in rows if r["method"] == "pabee" and r["policy"] == "per_exit_entropy"]
    entropy_points = [r for r in rows if r["method"] == "pabee" and r["policy"] == "normalized_entropy"]
    assert len(pabee) - len(per_exit) - len(entropy_points) == 1 + 3  # full depth, patience 1..3
    assert set(ENTROPY_GRID) <= {float(r["threshold"]) for r in entropy_points}  # the fixed grid ...
    calibrated = [r for r in entropy_points if float(r["threshold"]) not in ENTROPY_GRID]
    fastest = max(float(r["dev_speedup"]) for r in entropy_points)
    reachable = [s for axis, s in CALIBRATED_SPEEDUPS if axis == "layers" and s <= fastest]
    assert reachable and 1 <= len(calibrated) <= len(CALIBRATED_SPEEDUPS)  # ... and thresholds calibrated on dev
    for s in reachable:  # the slowest calibrated point at least s x fast on dev is no faster than any grid point that is
        at_least = [float(r["dev_speedup"]) for r in entropy_points if float(r["dev_speedup"]) >= s]
        assert min(float(r["dev_speedup"]) for r in calibrated if float(r["dev_speedup"]) >= s) == min(at_least)
    # the per-exit rule's levels: its grid and as many calibrated for a speed-up as the global threshold got
    assert 5 <= len(per_exit) <= 20 + len(CALIBRATED_SPEEDUPS) and (out / "rules.png").stat().st_size > 1000
    assert all(any(float(r["dev_speedup"]) >= s for r in per_exit) for s in reachable)
    assert f"Evaluation {VERSION} (runs with skip gates" in summary and "older evaluation" not in summary
    assert {r["policy"] for r in rows if r["method"] == "smartbert"} == {"none", "entropy"}  # real gated passes
    gated = sorted(float(r["threshold"]) for r in rows if r["method"] == "smartbert" and r["policy"] == "entropy")
    assert gated == [f * math.log(2) for f in GATED_GRID]  # the grid's fractions of ln C, in nats (C = 2 here)
    # a replayed point is what fairseq-validate measures for that checkpoint and policy
    save = out / "pabee" / "seed1"
    measured = validate(save, mr_bin, "--exit-policy", "patience", "--exit-patience", "1", ckpt="checkpoint_last.pt")
    replayed = pabee[("patience", "1", "")]
    assert abs(float(replayed["dev_metric"]) - measured["accuracy"]) < 0.01
    assert abs(float(replayed["dev_speedup"]) - measured["speedup"]) < 0.01
    # so is a per-exit point, its calibrated thresholds passed to fairseq-validate
    mixed = max(per_exit, key=lambda r: len(set(r["thresholds"].split(","))))
    measured = validate(save, mr_bin, "--exit-policy", "per_exit_entropy", "--exit-thresholds", mixed["thresholds"],
                        ckpt="checkpoint_last.pt")
    assert abs(float(mixed["dev_metric"]) - measured["accuracy"]) < 0.01
    assert abs(float(mixed["dev_speedup"]) - measured["speedup"]) < 0.01
    assert "per-exit rule calibrated on dev against the best published rule" in summary and "pabee per-exit - " in summary
    result = json.loads((save / "result.json").read_text())
    assert result["dev_oracle"]["layer_speedup"] >= 1.0 and result["device"] == "cpu"
    # the per-example test outcomes behind the paired bootstrap agree with every point's figure
    outcomes = Outcomes.load(save / "outcomes.npz")
    assert outcomes.correct.shape == (len(result["points"]), 80) and list(outcomes.ids) == list(range(80))
    for i, p in enumerate(result["points"]):
        assert abs(100.0 * outcomes.correct[i].mean() - p["test_metric"]) < 1e-6
    chosen = [r for r in rows if r["method"] == "pabee" and "2x" in r["chosen_at"].split(",")]
    assert len(chosen) <= 1  # one point per target, chosen on dev
    # the override reached SmartBERT's runs only
    from fairseq import checkpoint_utils
    model_cfg = {m: checkpoint_utils.load_checkpoint_to_cpu(str(out / m / "seed1" / "checkpoint_last.pt"))["cfg"].model
                 for m in ("pabee", "smartbert")}
    assert model_cfg["smartbert"].skip_gate_bias == -1 and model_cfg["pabee"].skip_gate_bias is None
    assert checkpoint_utils.load_checkpoint_to_cpu(str(save / "checkpoint_last.pt"))["cfg"].common.cpu  # --device cpu
    # SmartBERT's record says its recipe and the overrides that shrank it, the gates of every stage-1 epoch
    # and the epoch the dev selection kept
    smart_result = json.loads((out / "smartbert" / "seed1" / "result.json").read_text())
    assert smart_result["budget"]["stage1_epochs"] == 5 and smart_result["budget"]["epochs"] == 9
    assert "smartbert:task.stage1_epochs=2" not in smart_result["overrides"] and \
        "task.stage1_epochs=2" in smart_result["overrides"]
    gates = smart_result["gates"]
    assert [e["epoch"] for e in gates["epochs"]] == [1, 2] and gates["kept_epoch"] in (1, 2)
    assert all(len(e["skip_per_layer"]) == 4 and "last_acc_gates_off" in e for e in gates["epochs"])
    assert "gates" not in result  # pabee has none
    # SmartBERT without an exit policy: its gates' layer speed-up, as fairseq-validate measures it
    smart = next(r for r in rows if r["method"] == "smartbert" and r["policy"] == "none")
    measured = validate(out / "smartbert" / "seed1", mr_bin, ckpt="checkpoint_last.pt")
    assert abs(float(smart["dev_speedup"]) - measured["speedup"]) < 0.01
    # a second call reuses the finished runs instead of training again; an older evaluation is redone,
    # from a run's traces when it has them (the same figures as its first scoring), else from its checkpoint
    assert (save / "traces.npz").is_file() and not (out / "smartbert" / "seed1" / "traces.npz").exists()
    full_ft = out / "full_ft" / "seed1"
    (full_ft / "traces.npz").unlink()
    for folder in (save, full_ft):
        (folder / "result.json").write_text(json.dumps(dict(json.loads((folder / "result.json").read_text()),
                                                            evaluation=1)))
    again = run(cmd, timeout=600)
    assert again.returncode == 0 and "benchmark: pabee seed 1 ..." not in again.stdout
    assert f"benchmark: pabee seed 1: scoring again from its traces (evaluation 1 -> {VERSION})" in again.stdout
    assert f"benchmark: full_ft seed 1: evaluating again (evaluation 1 -> {VERSION})" in again.stdout
    assert "benchmark: smartbert seed 1: evaluating" not in again.stdout
    assert json.loads((save / "result.json").read_text()) == result
    assert (full_ft / "traces.npz").is_file()
    # a current record without traces (written before runs kept them) gets them from its checkpoint,
    # written only because scoring them gives the record exactly
    (save / "traces.npz").unlink()
    healed = run(cmd, timeout=600)
    assert healed.returncode == 0, healed.stderr[-2000:]
    assert "benchmark: pabee seed 1: traces written (traced from its checkpoint" in healed.stdout
    assert (save / "traces.npz").is_file() and json.loads((save / "result.json").read_text()) == result
    # finished runs are not reused under other overrides, and a misspelt method prefix is refused
    other = run(cmd[:-2] + ["--override", "common.log_interval=5"], timeout=600)
    assert other.returncode != 0 and "was trained with overrides" in other.stderr and "Fix:" in other.stderr
    longer = run([a if a != "2" else "3" for a in cmd], timeout=600)  # --epochs 3: another budget
    assert_one_clear_error(longer, "trained with another budget (epochs 2, not 3)")
    typo = run(cmd + ["--override", "smartbret:+model.skip_gate_bias=-2"], timeout=600)
    assert typo.returncode != 0 and "unknown method 'smartbret'" in typo.stderr
    # the finished runs of --out folders side by side (here one folder), training nothing
    across = run(cmd[:2] + ["--across", str(out), "--bootstrap", "50"], timeout=300)
    assert across.returncode == 0, across.stderr[-2000:]
    assert "| pabee | full depth |" in across.stdout and "| pabee - full_ft | 2x vs full depth |" in across.stdout
    assert "benchmark: " not in across.stdout  # nothing trained or scored again
    missing = run(cmd[:2] + ["--across", str(out), str(tmp_path / "no-runs")], timeout=300)
    assert_one_clear_error(missing, "no finished runs", "no-runs")


def test_full_fine_tuning_keeps_the_last_layer_of_the_depth_the_arch_sets(tmp_path):
    """full_ft keeps one exit, at the encoder's last layer: the depth comes from the registered
    architecture (a guess from the name gave 12 for exit_bert_tiny's 2 layers and exit_*_large's 24)."""
    depths = {a: arch_layers(a) for a in ("exit_bert_tiny", "exit_roberta_tiny", "exit_bert_minilm_l6",
                                          "exit_bert_base", "exit_roberta_large", "exit_bert_large")}
    assert depths == {"exit_bert_tiny": 2, "exit_roberta_tiny": 4, "exit_bert_minilm_l6": 6, "exit_bert_base": 12,
                      "exit_roberta_large": 24, "exit_bert_large": 24}
    o = overrides("full_ft", tmp_path, tmp_path / "save", 1, 100, Budget(1), "exit_bert_tiny", None,
                  depths["exit_bert_tiny"], torch.device("cpu"))
    assert "model.exit_layers='2'" in o
    with pytest.raises(UsageError, match="'roberta_base' is not an architecture of the exit_roberta model"):
        arch_layers("roberta_base")
