"""Real 2-process fairseq-hydra-train on CPU (gloo, tcp init), as the README launches it: LeeBERT/clo
and SmartBERT under legacy_ddp (test_ddp_backends.py runs every method under pytorch_ddp), resume
and the STS-B gather under pytorch_ddp, fairseq's default.

A test-only user dir (tests/rank_probe) has every rank record its state before each update, since
fairseq writes checkpoints on rank 0 only.
"""
import torch

from helpers import (QUIET, assert_one_clear_error, assert_ranks_identical, digest, hydra_command, json_records,
                     launch_two_processes, probed, run, train_two_processes, validate)


def test_clo_two_processes_keep_the_loss_weights_identical_and_match_one_process(mr_bin, tmp_path):
    """LeeBERT/clo, 2 ranks x batch 8 against 1 process x batch 8 x update_freq 2 (the same batches).

    Meta steps at updates 0 (lr 0 in warm-up: no move) and 4. Before update 4 the two runs differ
    only in the order in which fairseq sums the two micro-batches' gradients, so the parameters
    agree to rounding (atol 1e-4, a fifth of one Adam step at lr 5e-4: a lost micro-batch changes
    whole steps). The meta step's estimate differs by design: 2 processes average the
    hypergradients of both ranks' batches, 1 process uses the update's first micro-batch. Adam's
    first step moves each weight by about w_lr times the sign of its hypergradient (0.047 here),
    so the runs agree unless a sign differs, which would cost a whole step: atol 5e-3 (measured 4e-4).
    """
    common = [f"task.data={mr_bin}", *QUIET, "dataset.batch_size=8", "optimization.max_update=6",
              "lr_scheduler.warmup_updates=2", "optimizer.w_lr=0.05", "optimizer.w_update_interval=4"]
    train_two_processes("mr_leebert", tmp_path / "two", *common, backend="legacy_ddp")
    two = assert_ranks_identical(tmp_path / "two", 6)
    proc = run(hydra_command("mr_leebert", tmp_path / "one", *common, "optimization.update_freq=[2]"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = probed(tmp_path / "one", 0)
    start = one[0]["loss_weights.logits"]
    for update in range(5):
        assert torch.equal(two[update]["loss_weights.logits"], start)
        for key, value in one[update].items():
            torch.testing.assert_close(two[update][key], value, rtol=0, atol=1e-4, msg=f"{update} {key}")
    after = two[5]["loss_weights.logits"]
    assert float((after - start).abs().min()) > 0.01  # the meta step moved every weight, identically on both ranks
    torch.testing.assert_close(after, one[5]["loss_weights.logits"], rtol=0, atol=5e-3)


def test_smartbert_two_processes_with_skip_gates_frozen_stage_2_and_a_subset_of_exits(mr_bin, tmp_path):
    """Gates that skip layers, exits at layers 2 and 4 only, and stage 2's frozen backbone: parameters
    without a gradient in a step do not break DDP, and both ranks stay identical through both stages."""
    save = tmp_path / "smartbert"
    log = train_two_processes("mr_smartbert", save, f"task.data={mr_bin}", "model.exit_layers='2,4'",
                        "dataset.batch_size=64", "lr_scheduler.warmup_updates=2", "task.stage1_epochs=1",
                        "task.soft_gate_epochs=0", "optimization.max_epoch=2", "common.log_interval=1",
                        "model.dropout=0.0", "model.attention_dropout=0.0", backend="legacy_ddp")
    states = assert_ranks_identical(save, 8)  # 400 examples / (2 x 64) = 4 updates per epoch
    assert int(states[7]["training_stage"]) == 2
    last = torch.load(save / "checkpoint_last.pt", map_location="cpu")["model"]
    assert int(last["training_stage"]) == 2
    skipped = [float(r["valid_mean_skipped"]) for r in json_records(log, "valid")]
    assert len(skipped) == 2 and max(skipped) > 0, skipped  # the gates did skip layers


def test_two_processes_resume_and_without_per_rank_loading_are_told_how(mr_bin, tmp_path):
    """A 2-process run resumes from its checkpoint (every rank reads it: the configs set
    load_checkpoint_on_all_dp_ranks); with fairseq's rank-0 broadcast instead, one clear line."""
    save = tmp_path / "resume"
    common = [f"task.data={mr_bin}", "dataset.batch_size=8", "dataset.disable_validation=true",
              "lr_scheduler.warmup_updates=1", "common.log_interval=1"]
    train_two_processes("mr_multi_exit", save, *common, "optimization.max_update=2")
    log = train_two_processes("mr_multi_exit", save, *common, "optimization.max_update=4")
    assert f"Loaded checkpoint {save}/checkpoint_last.pt (epoch 1 @ 2 updates)" in log
    assert [int(r["num_updates"]) for r in json_records(log, "train_inner")] == [3, 4]
    before = digest(save)
    refused = launch_two_processes("mr_multi_exit", save, *common, "optimization.max_update=6",
                                   "checkpoint.load_checkpoint_on_all_dp_ranks=false", logs=tmp_path / "refused")
    for p in refused:
        assert_one_clear_error(p, "2-process run", "load_checkpoint_on_all_dp_ranks=true")
    assert digest(save) == before


def test_two_processes_gather_regression_predictions_for_spearman(regression_bin, tmp_path):
    """STS-B-style validation on 2 CPU ranks: each rank scores half the dev set; Spearman needs every
    prediction, which fairseq gathers instead of summing (the criterion says its logs cannot be summed) (through fairseq's all_gather_list, which
    needs CUDA unless the plugin's CPU path takes over), and Pearson the moments of the whole split.
    The figures equal a 1-process fairseq-validate of the same checkpoint."""
    save = tmp_path / "stsb"
    log = train_two_processes("sts_b_multi_exit", save, f"task.data={regression_bin}", "model._name=exit_roberta_tiny",
                              "task.max_positions=256", "checkpoint.restore_file=checkpoint_last.pt",
                              "common.cpu=true", "dataset.batch_size=16", "optimization.max_update=4",
                              "lr_scheduler.warmup_updates=1", "common.log_interval=1", "dataset.num_workers=0",
                              probe=False)
    record = json_records(log, "valid")[-1]
    measured = validate(save, regression_bin, ckpt="checkpoint_last.pt")
    for key in ("spearman", "pearson", "spearman_L2", "spearman_L4"):
        assert abs(float(record[f"valid_{key}"]) - measured[key]) < 0.015, key
