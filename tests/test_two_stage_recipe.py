"""The benchmark's two-stage recipes (the authors' schedules) and the gate diagnostics of a run's record."""
import json
from pathlib import Path

import pytest
import torch

from leebert_plugin.benchmark.gate_diagnostics import gate_table, stage1_diagnostics
from leebert_plugin.benchmark.matrix import Matrix
from leebert_plugin.benchmark.recipe import DEEBERT, METHODS, SMARTBERT, Budget, TwoStageRecipe, overrides


def settings(method: str, budget: Budget, n_train: int = 1000, layers: int = 6) -> dict:
    o = overrides(method, Path("data"), Path("save"), 1, n_train, budget, "exit_bert_minilm_l6", None, layers,
                  torch.device("cpu"))
    return dict(ov.lstrip("+").split("=", 1) for ov in o)


def test_smartbert_trains_the_authors_schedule_not_the_shared_budget():
    s = settings("smartbert", Budget(2, batch_size=32, lr=5e-5, exit_lr_scale=10.0))
    # 5 + 4 epochs at batch 16: ceil(1000 / 16) = 63 updates an epoch
    assert s["task.stage1_epochs"] == "5" and s["task.soft_gate_epochs"] == "3"  # 3 soft, then 2 hard
    assert s["optimization.max_epoch"] == "9" and s["optimization.max_update"] == str(9 * 63)
    assert s["dataset.batch_size"] == "16" and s["optimization.lr"] == "[2e-05]"
    assert s["optimizer.exit_lr_scale"] == "1.0"  # every part at one learning rate, as the authors
    assert s["lr_scheduler._name"] == "two_stage_linear" and s["lr_scheduler.warmup_updates"] == "10"
    assert float(s["criterion.gate_lambda"]) == pytest.approx(0.02)  # 0.04 for 12 layers, MiniLM's 6


def test_gate_lambda_is_scaled_to_depth():
    assert [SMARTBERT.gate_lambda(n) for n in (12, 6, 4, 24)] == pytest.approx([0.04, 0.02, 0.04 / 3, 0.08])
    # what the scaling keeps: the regulariser lambda / (L g) and its total push lambda / (L g^2) at the same g
    g = 0.3
    for layers in (6, 12, 24):
        lam = SMARTBERT.gate_lambda(layers)
        assert lam / (layers * g) == pytest.approx(0.04 / (12 * g))
        assert lam / (layers * g * g) == pytest.approx(0.04 / (12 * g * g))


def test_deebert_trains_its_authors_two_stages():
    s = settings("deebert", Budget(2))
    assert (s["task.stage1_epochs"], s["optimization.max_epoch"], s["dataset.batch_size"]) == ("3", "6", "8")
    assert s["optimization.max_update"] == str(6 * 125) and s["optimization.lr"] == "[2e-05]"
    assert s["lr_scheduler._name"] == "two_stage_linear" and s["lr_scheduler.warmup_updates"] == "0"
    assert s["task.soft_gate_epochs"] == "0" and "criterion.gate_lambda" not in s
    assert s["+model.exit_pooling" if "+model.exit_pooling" in s else "model.exit_pooling"] == "mean"  # the budget's


def test_full_fine_tuning_for_smartbert_trains_as_many_epochs_as_its_backbone():
    s = settings("full_ft_smartbert", Budget(2))
    assert s["optimization.max_epoch"] == str(SMARTBERT.stage1_epochs) == "5"
    assert s["optimization.max_update"] == str(5 * 63) and s["dataset.batch_size"] == "16"
    assert s["optimization.lr"] == "[2e-05]" and s["lr_scheduler.warmup_updates"] == "10"
    assert s["model.exit_layers"] == "'6'" and "task.stage1_epochs" not in s
    plain = settings("full_ft", Budget(2))  # the shared budget's full fine-tuning is unchanged
    assert plain["optimization.max_epoch"] == "2" and plain["dataset.batch_size"] == "32"
    assert plain["lr_scheduler.warmup_updates"] == str(round(0.06 * 2 * 32))


def test_a_recipe_against_the_authors_rules_is_refused():
    with pytest.raises(ValueError, match="at least 3 epochs"):
        TwoStageRecipe(2, 4, 2e-5, 16, 10, soft_gate_epochs=1, gated=True)
    with pytest.raises(ValueError, match="one hard epoch"):
        TwoStageRecipe(5, 4, 2e-5, 16, 10, soft_gate_epochs=5, gated=True)
    with pytest.raises(ValueError, match="soft gates first"):
        TwoStageRecipe(5, 4, 2e-5, 16, 10, soft_gate_epochs=0, gated=True)
    assert METHODS["smartbert"]["recipe"] is SMARTBERT and METHODS["deebert"]["recipe"] is DEEBERT


def test_a_record_says_the_recipe_it_was_trained_under(tmp_path):
    """A SmartBERT record of the shared half/half split (epochs 2) is not taken for the recipe's."""
    m = Matrix(tmp_path, tmp_path / "out", ["smartbert", "pabee"], [1], Budget(2), 100, "exit_bert_minilm_l6", 6,
               None, torch.device("cpu"))
    rec = m.budget_record("smartbert")
    assert {k: rec[k] for k in ("epochs", "batch_size", "lr", "exit_lr_scale", "stage1_epochs", "stage2_epochs",
                                "soft_gate_epochs", "warmup_updates")} == \
        {"epochs": 9, "batch_size": 16, "lr": 2e-5, "exit_lr_scale": 1.0, "stage1_epochs": 5, "stage2_epochs": 4,
         "soft_gate_epochs": 3, "warmup_updates": 10}
    assert rec["gate_lambda"] == pytest.approx(0.02) and "exit_pooling" not in rec
    assert m.budget_record("pabee")["epochs"] == 2 and "stage1_epochs" not in m.budget_record("pabee")


LOG = "\n".join([
    '[2026-12-07 03:00:00][valid][INFO] - ' + json.dumps({"epoch": 1, "valid_accuracy": "60", "valid_gate_logit_mean": "0.1",
                                                          "valid_gate_logit_std": "0.5", "valid_last_acc_gates_on": "60",
                                                          "valid_last_acc_gates_off": "70", "valid_mean_skipped": "1.5",
                                                          "valid_skip_L2": "50", "valid_skip_L1": "100"}),
    '[2026-12-07 03:00:01][valid][INFO] - ' + json.dumps({"epoch": 2, "valid_accuracy": "80", "valid_gate_logit_mean": "-1",
                                                          "valid_gate_logit_std": "2", "valid_last_acc_gates_on": "80",
                                                          "valid_last_acc_gates_off": "81", "valid_mean_skipped": "0.5",
                                                          "valid_skip_L1": "25", "valid_skip_L2": "25"}),
    "[2026-12-07 03:00:02][leebert_plugin.tasks.two_stage][INFO] - stage 2: restored /s/checkpoint_best.pt "
    "(kept stage-1 epoch 2); training the intermediate exits only (1234 parameters)",
    '[2026-12-07 03:00:03][valid][INFO] - ' + json.dumps({"epoch": 3, "valid_accuracy": "80", "valid_acc_L1": "70"}),
])


def test_stage_1_gate_diagnostics_are_read_off_the_training_log():
    d = stage1_diagnostics(LOG)
    assert d["kept_epoch"] == 2 and [e["epoch"] for e in d["epochs"]] == [1, 2]  # stage 2's record has none
    assert d["epochs"][0] == {"epoch": 1, "gate_logit_mean": 0.1, "gate_logit_std": 0.5, "last_acc_gates_on": 60.0,
                              "last_acc_gates_off": 70.0, "mean_skipped": 1.5, "skip_per_layer": [100.0, 50.0]}
    assert stage1_diagnostics(LOG.split("\n")[-1]) is None  # a run without gates


def test_the_gate_table_averages_each_stage_1_epoch_over_the_seeds_that_logged_it():
    one = stage1_diagnostics(LOG)
    two = {"epochs": [dict(one["epochs"][1], mean_skipped=1.5, skip_per_layer=[75.0, 25.0])], "kept_epoch": None}
    table = gate_table({"smartbert": [(1, one), (2, two), (3, None)], "pabee": [(1, None)]})
    rows = [r for r in table.splitlines() if r.startswith("| smartbert")]
    assert rows == ["| smartbert | 1 | 1 | 1.50 | 100 / 50 | 0.10 ± 0.50 | 60.00 | 70.00 |",
                    "| smartbert | 2 | 2 | 1.00 | 50 / 25 | -1.00 ± 2.00 | 80.00 | 81.00 |"]
    assert "- smartbert: the dev selection kept stage-1 epoch 2 (seed 1), - (seed 2)" in table
    assert "pabee" not in table and gate_table({"pabee": [(1, None)]}) == ""
    mixed = gate_table({"s": [(1, {"epochs": [{"epoch": 1, "mean_skipped": 1.0, "skip_per_layer": [10.0, 20.0]}]}),
                              (2, {"epochs": [{"epoch": 1, "skip_per_layer": [10.0, 20.0, 30.0]}]}), (3, {})]})
    assert "| s | 1 | 2 | 1.00 | - | - ± - | - | - |" in mixed  # depths differ: no per-layer mean by position
