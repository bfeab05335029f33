"""SmartBERT: contrastive loss, the two stages in one command, frozen stage 2, resume.

Bad SmartBERT inputs are rows of test_bad_input_catalogue.py.
"""
import math

import pytest
import torch

from conftest import hydra_train
from helpers import BIN, SMARTBERT_SHORT as SHORT, assert_one_clear_error, guarded_dir, json_records, run, validate
from leebert_plugin.criterions.contrastive import token_info_nce
from leebert_plugin.tasks.stage_schedule import StagePlan

# SHORT without its max_update (1000): the tests below set their own
UNBOUNDED = [o for o in SHORT if not o.startswith("optimization.max_update=")]




def test_token_info_nce_by_hand():
    a = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # T=2, B=1, D=2
    b = a.clone()
    t = 0.5
    # token 0: positive sim 1/t, negative 0 -> -log(e^2 / (e^2 + e^0))
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert float(token_info_nce(a, b, None, t, include_positive=True)) == pytest.approx(expected, rel=1e-6)
    # without the positive in the denominator: -log(e^2 / e^0) = -2
    assert float(token_info_nce(a, b, None, t, include_positive=False)) == pytest.approx(-2.0, rel=1e-6)
    # a padded second token: only token 0 counts, and token 1 is no negative for it
    pad = torch.tensor([[False, True]])
    assert float(token_info_nce(a, b, pad, t, include_positive=True)) == pytest.approx(0.0, abs=1e-6)


def frozen_part(state):
    """Everything stage 2 must not touch: all but the intermediate exits (smartbert heads 0..M-2)."""
    return {k: v for k, v in state.items()
            if torch.is_tensor(v) and not any(k.startswith(f"exit_heads.sentence_classification_head.exits.{i}.")
                                              for i in range(3))}


@pytest.fixture(scope="module")
def two_stage(mr_bin, tmp_path_factory):
    save = tmp_path_factory.mktemp("smartbert")
    proc = hydra_train("mr_smartbert", f"task.data={mr_bin}", f"checkpoint.save_dir={save}",
                       "optimization.max_epoch=2", *SHORT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return save, proc


def test_the_two_stages_run_in_one_command(two_stage):
    save, proc = two_stage
    assert "stage 2: restored" in proc.stdout
    records = json_records(proc.stdout, "valid")
    assert "contrast_layers" in " ".join(records[0]) and "valid_gate_reg" in records[0]
    assert "valid_contrast_exits" in records[1] and "valid_ce_L1" in records[1]
    assert "valid_skip_L1" in records[1] and "valid_mean_skipped" in records[1]
    assert (save / "checkpoint_stage1_best.pt").exists()
    last = torch.load(save / "checkpoint_last.pt", map_location="cpu")
    assert int(last["model"]["training_stage"]) == 2


def test_stage_2_leaves_backbone_gates_and_last_exit_bit_identical(two_stage):
    save, _ = two_stage
    stage1 = torch.load(save / "checkpoint_stage1_best.pt", map_location="cpu")["model"]
    stage2 = torch.load(save / "checkpoint_last.pt", map_location="cpu")["model"]
    frozen = frozen_part(stage1)
    assert any(k.startswith("skip_gates.") for k in frozen) and any(k.startswith("encoder.") for k in frozen)
    for k, v in frozen.items():
        if k != "training_stage":
            assert torch.equal(stage2[k], v), k
    trained = [k for k in stage1 if k not in frozen and torch.is_tensor(stage1[k])]
    assert trained and any(not torch.equal(stage1[k], stage2[k]) for k in trained)


def test_bf16_stage_2_starts_from_the_given_checkpoint_and_keeps_its_frozen_part(two_stage, mr_bin, tmp_path):
    """--bf16 --cpu: fairseq's fp32 masters, built in stage 1, must not overwrite the reload."""
    save, _ = two_stage
    given = torch.load(save / "checkpoint_last.pt", map_location="cpu")
    exits = [k for k in given["model"] if k not in frozen_part(given["model"])]
    for k in exits:  # far from anything this run's stage 1 could hold
        given["model"][k] = given["model"][k] + 0.5
    torch.save(given, tmp_path / "given.pt")
    run = tmp_path / "run"
    proc = hydra_train("mr_smartbert", f"task.data={mr_bin}", f"checkpoint.save_dir={run}", "common.bf16=true",
                       f"task.stage1_checkpoint={tmp_path / 'given.pt'}", "optimization.max_epoch=2",
                       "optimization.max_update=15", *SHORT)  # 13 stage-1 updates, then 2 in stage 2
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stage 2: fairseq's FP16Optimizer now updates" in proc.stdout + proc.stderr
    after = torch.load(run / "checkpoint_last.pt", map_location="cpu")["model"]
    for k, v in frozen_part(given["model"]).items():
        if k != "training_stage":
            # the run's bf16 weights, saved as fp32: the given values rounded to bf16
            assert torch.equal(after[k], v.to(torch.bfloat16).to(after[k].dtype) if v.is_floating_point() else v), k
    for k in exits:  # two small Adam steps from the given exits
        assert float((after[k].float() - given["model"][k]).abs().max()) < 0.05, k
    # ... that did step: the exits are not frozen too
    assert any(not torch.equal(after[k], given["model"][k].to(torch.bfloat16).to(after[k].dtype)) for k in exits)


def test_resuming_in_stage_2_stays_in_stage_2(two_stage, mr_bin, tmp_path):
    save, _ = two_stage
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for name in ("checkpoint_last.pt", "checkpoint_stage1_best.pt"):
        (resumed / name).write_bytes((save / name).read_bytes())
    proc = hydra_train("mr_smartbert", f"task.data={mr_bin}", f"checkpoint.save_dir={resumed}",
                       "optimization.max_epoch=3", *SHORT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stage 2: restored" not in proc.stdout  # the stage came back with the checkpoint
    stage1 = frozen_part(torch.load(save / "checkpoint_stage1_best.pt", map_location="cpu")["model"])
    after = torch.load(resumed / "checkpoint_last.pt", map_location="cpu")["model"]
    for k, v in stage1.items():
        if k != "training_stage":
            assert torch.equal(after[k], v), k


def test_a_stage_1_checkpoint_validated_with_a_policy_says_what_it_applies(two_stage, mr_bin):
    save, _ = two_stage
    proc = run([str(BIN / "fairseq-validate"), str(mr_bin), "--path", str(save / "checkpoint_stage1_best.pt"),
                "--user-dir", "user_dir", "--task", "early_exit_sentence_prediction", "--batch-size", "16", "--cpu",
                "--log-format", "json", "--exit-policy", "normalized_entropy", "--exit-threshold", "0.5"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert out.count("in stage 1 of two-stage training") == 1, out[-3000:]
    assert "exit policy 'normalized_entropy' is not applied" in out and "skipping the layers its gates skip" in out
    (record,) = json_records(proc.stdout, "valid")
    assert float(record["valid_exit_L4"]) == 100.0  # everyone to the last exit, as said


def test_a_max_update_ending_inside_stage_1_is_refused_before_any_update(mr_bin, tmp_path):
    """400 snippets at batch 32: 13 updates an epoch, so stage 2 would start at epoch 2, after update 13."""
    save = guarded_dir(tmp_path, with_checkpoint=False)
    proc = hydra_train("mr_smartbert", f"task.data={mr_bin}", f"checkpoint.save_dir={save}", "optimization.max_epoch=2",
                       "optimization.max_update=10", *UNBOUNDED)
    assert_one_clear_error(proc, "optimization.max_update=10", "optimization.max_epoch=2", "inside stage 1",
                           "stage 2 would start at epoch 2, after update 13", "at least 26", "task.stage1_only=true")
    assert not json_records(proc.stdout, "train_inner") and not list(save.glob("checkpoint*.pt"))


def test_stage1_only_trains_stage_1_alone_on_purpose(mr_bin, tmp_path):
    proc = hydra_train("mr_smartbert", f"task.data={mr_bin}", f"checkpoint.save_dir={tmp_path}", "task.stage1_only=true",
                       "optimization.max_epoch=1", "optimization.max_update=10", *UNBOUNDED)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stage 2: restored" not in proc.stdout
    last = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu")
    assert int(last["model"]["training_stage"]) == 1 and last["optimizer_history"][-1]["num_updates"] == 10
    # the same option with a budget that reaches stage 2 is refused
    again = hydra_train("mr_smartbert", f"task.data={mr_bin}", f"checkpoint.save_dir={tmp_path / 'again'}",
                        "task.stage1_only=true", "optimization.max_epoch=2", *UNBOUNDED)
    assert_one_clear_error(again, "task.stage1_only=true", "goes on past stage 1", "max_epoch=1")


@pytest.fixture(scope="module")
def per_stage(mr_bin, tmp_path_factory):
    """Two stage-1 epochs (soft, then hard gates) and one of stage 2, each stage on its own schedule."""
    save = tmp_path_factory.mktemp("per-stage")
    overrides = [o for o in UNBOUNDED if not o.startswith(("task.stage1_epochs", "lr_scheduler.", "common.log_interval"))]
    proc = hydra_train("mr_smartbert", f"task.data={mr_bin}", f"checkpoint.save_dir={save}", *overrides,
                       "task.stage1_epochs=2", "optimization.max_epoch=3", "lr_scheduler._name=two_stage_linear",
                       "lr_scheduler.warmup_updates=2", "common.log_interval=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return save, proc


def test_each_stage_warms_up_and_decays_on_its_own(per_stage):
    _, proc = per_stage
    lrs = {int(r["num_updates"]): float(r["lr"]) for r in json_records(proc.stdout, "train_inner")}
    assert sorted(lrs) == list(range(1, 40))  # 3 epochs of 13 updates
    lr = 5e-4  # mr_smartbert's
    plan = StagePlan(updates_per_epoch=13, stage1_epochs=2, max_epoch=3)
    for update, logged in lrs.items():  # the rate update k ran at: after k - 1 done
        assert logged == pytest.approx(lr * plan.lr_factor(update - 1, 2), rel=1e-5, abs=1e-12), update  # logged to 6 digits
    assert lrs[1] == 0 and lrs[26] == pytest.approx(lr / 24, rel=1e-5) and lrs[27] == 0 \
        and lrs[28] == pytest.approx(lr / 2, rel=1e-5)


def test_stage_1_epochs_record_the_gates_and_the_epoch_the_selection_kept(per_stage, mr_bin):
    save, proc = per_stage
    records = json_records(proc.stdout, "valid")
    assert len(records) == 3
    for r in records[:2]:  # stage 1
        for key in ("valid_gate_logit_mean", "valid_gate_logit_std", "valid_last_acc_gates_on",
                    "valid_last_acc_gates_off", "valid_skip_L1", "valid_skip_L4"):
            assert key in r, (key, r)
        assert float(r["valid_gate_logit_std"]) >= 0
        assert float(r["valid_last_acc_gates_on"]) == float(r["valid_accuracy"])  # the selection's figure
    assert "valid_gate_logit_mean" not in records[2]  # stage 2: the gates are frozen
    (line,) = [ln for ln in proc.stdout.splitlines() if "stage 2: restored" in ln]
    kept = int(line.split("kept stage-1 epoch ")[1].split(")")[0])
    accuracies = [float(r["valid_accuracy"]) for r in records[:2]]
    assert accuracies[kept - 1] == max(accuracies) and kept == max(i + 1 for i, a in enumerate(accuracies)
                                                                   if a == max(accuracies))
    # gates off, asked for at validation: every layer runs, and the accuracy is the one the epoch recorded
    off = validate(save, mr_bin, "--model-overrides", "{'skip_threshold': 1.0}", ckpt="checkpoint_stage1_best.pt")
    assert off["mean_layers"] == 4.0 and off["accuracy"] == float(records[kept - 1]["valid_last_acc_gates_off"])
    on = validate(save, mr_bin, ckpt="checkpoint_stage1_best.pt")
    assert on["accuracy"] == float(records[kept - 1]["valid_last_acc_gates_on"])
