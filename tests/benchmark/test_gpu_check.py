"""The GPU check's own logic, in seconds: decisions within the near-threshold tolerance, margins,
PASS/FAIL/SKIP reporting and the exit status, log parsing, the frozen-part comparison.
(The checks themselves run with ``python scripts/gpu_check.py --device cpu --quick``.)"""
import io
import math
import subprocess

import pytest
import torch

from leebert_plugin.benchmark import gpu_check as gc
from leebert_plugin.errors import UsageError


def test_equal_decisions_agree():
    agreement = gc.decisions_agree([1, 2, 4], [1, 2, 4], [0.0, 0.5, 0.5])
    assert agreement.ok and agreement.differ == 0


def test_a_differing_decision_is_excused_only_near_the_threshold():
    near = gc.decisions_agree([1, 2, 4], [1, 3, 4], [0.3, 5e-5, 0.2])
    assert near.ok and (near.differ, near.excused) == (1, 1)
    far = gc.decisions_agree([1, 2, 4], [1, 3, 4], [0.3, 2e-4, 0.2])
    assert not far.ok and (far.differ, far.excused) == (1, 0)
    assert gc.decisions_agree([2], [3], [2e-4], tol=1e-3).ok
    assert "1 of 3 differ, 0 of them within the tolerance" == far.describe()


def test_decisions_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="one length"):
        gc.decisions_agree([1, 2], [1], [0.0, 0.0])


def test_margins_look_only_at_the_exits_that_decided():
    values = torch.tensor([[0.50, 0.9, 0.2],   # exit 0
                           [0.70, 0.5, 0.2],   # exit 1
                           [0.50, 0.5, 0.5]])  # the last exit decides nothing
    assert gc.margins(values, 0.5).tolist() == pytest.approx([0.0, 0.0, 0.3])
    # sample 1 left at exit 0 in both runs: exit 1's value (at the threshold) was never looked at
    assert gc.margins(values, 0.5, torch.tensor([2, 0, 1])).tolist() == pytest.approx([0.0, 0.4, 0.3])


def test_criterion_values_are_the_policies_own():
    logits = torch.tensor([[[0.0, 0.0], [10.0, 0.0]]])  # one exit, two samples
    values = gc.criterion_values("normalized_entropy", logits)
    assert values[0].tolist() == pytest.approx([1.0, 0.0], abs=1e-3)
    assert gc.criterion_values("max_prob", logits)[0, 0] == pytest.approx(0.5)
    assert gc.criterion_values("entropy", logits)[0, 0] == pytest.approx(math.log(2))
    with pytest.raises(UsageError, match="threshold policies only"):
        gc.criterion_values("patience", logits)


def test_mean_layers_allowance():
    assert gc.mean_layers_allowance(0, 80, 3) == pytest.approx(0.001)
    assert gc.mean_layers_allowance(2, 80, 3) == pytest.approx(2 * 3 / 80 + 0.001)


def test_a_check_passes_fails_or_skips_with_one_line():
    def fails():
        raise gc.CheckFailed("the loss is\nNaN")

    def skips():
        raise gc.CheckSkipped("needs CUDA")

    def breaks():
        raise KeyError("model")

    assert gc.run_check("a", lambda: "loss 0.7").line().startswith("PASS a (")
    failed = gc.run_check("b", fails)
    assert failed.status == "FAIL" and failed.reason == "the loss is NaN" and "\n" not in failed.line()
    assert gc.run_check("c", skips).line().endswith(": needs CUDA")
    assert gc.run_check("d", breaks).reason == "KeyError: 'model'"
    slow = gc.run_check("f", lambda: "ok", budget=-1.0)
    assert slow.status == "FAIL" and "over its budget" in slow.reason


def test_report_prints_every_line_and_exits_non_zero_on_any_fail():
    results = [gc.Result("a", "PASS", "", 1.0), gc.Result("b", "SKIP", "no fp16 here", 0.0)]
    out = io.StringIO()
    assert gc.report(results, out) == 0
    assert out.getvalue().splitlines() == ["PASS a (1.0 s)", "SKIP b (0.0 s): no fp16 here",
                                           "gpu check: 1 passed, 0 failed, 1 skipped"]
    assert gc.exit_status([*results, gc.Result("c", "FAIL", "x", 0.0)]) == 1


LOG = """[2026-12-02 18:15:38][train_inner][INFO] - {"epoch": 1, "update": 1.125, "loss": "1.2", "lr": "0"}
[2026-12-02 18:15:38][train][INFO] - {"epoch": 1, "train_loss": "1.012", "train_num_updates": "8"}
[2026-12-02 18:15:39][train_inner][INFO] - {"epoch": 2, "update": 2.1, "loss": "nan", "lr": "0"}
"""


def test_final_train_loss_is_the_last_epoch_summary_else_the_last_inner_record():
    assert gc.final_train_loss(LOG) == pytest.approx(1.012)
    inner_only = "\n".join(line for line in LOG.splitlines() if "train_inner" in line)
    assert math.isnan(gc.final_train_loss(inner_only))
    with pytest.raises(gc.CheckFailed, match="no training loss"):
        gc.final_train_loss("nothing here")


def test_failure_line_prefers_the_plugins_error_line():
    ours = subprocess.CompletedProcess([], 1, "", "Traceback\nleebert-plugin: error: bad. Fix: this\nmore\n")
    assert gc.failure_line(ours) == "exit status 1: leebert-plugin: error: bad. Fix: this"
    theirs = subprocess.CompletedProcess([], 1, "", "Traceback (most recent call last):\n  x\nRuntimeError: CUDA\n")
    assert gc.failure_line(theirs) == "exit status 1: RuntimeError: CUDA"


def test_frozen_tensors_compare_after_rounding_to_the_runs_precision():
    stage1 = {"w": torch.tensor([1.0 + 2 ** -12, 3.0]), "exit": torch.zeros(2)}
    final_bf16 = {"w": stage1["w"].to(torch.bfloat16).float(), "exit": torch.ones(2)}
    assert gc.frozen_mismatches(stage1, final_bf16, ["w"], "bf16") == []
    assert gc.frozen_mismatches(stage1, final_bf16, ["w"], "fp32") == ["w"]
    assert gc.frozen_mismatches(stage1, {"w": stage1["w"]}, ["w", "missing"], "fp32") == ["missing"]


def test_loss_weights_moved_reads_the_task_state():
    state = {"task_state": {"bilevel": {"weights": {"logits": torch.tensor([0.0, -0.02])}}}}
    assert gc.loss_weights_moved(state) == pytest.approx(0.02)
    with pytest.raises(gc.CheckFailed, match="no learned loss weights"):
        gc.loss_weights_moved({"task_state": {}})


def test_precision_flags_and_the_cpus_fp16():
    assert gc.precision_overrides("fp32", cuda=True) == []
    assert gc.precision_overrides("fp16", cuda=True) == ["common.fp16=true"]
    assert gc.precision_overrides("fp16", cuda=False) == ["common.fp16=true", "common.fp16_no_flatten_grads=true"]
    with pytest.raises(UsageError, match="unknown precision"):
        gc.precision_overrides("fp8", cuda=True)
