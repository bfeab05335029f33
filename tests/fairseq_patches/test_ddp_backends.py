"""Every method under fairseq's default DDP backend (pytorch_ddp, here on CPU with gloo), 2 real
fairseq-hydra-train processes against 1 process with update_freq=2 on the same batches.

What holds for each of multi_exit (PABEE), LeeBERT (clo, darts2), DeeBERT and SmartBERT (both
stages) and the hidden_mse extension (a user criterion under clo):

- both ranks stay bit-identical at every update: the model, and LeeBERT's learned weights, which
  the task owns beside the DDP-wrapped model;
- the run equals 1 process x update_freq 2 within rounding. Before a meta step, the two runs
  differ only in the order in which the two micro-batches' gradients are summed (asserted: 1e-4,
  a fifth of one Adam step at the configs' lr of 5e-4; a lost micro-batch or a stale rank changes
  whole steps). The meta step's estimate differs by design
  (2 ranks average both batches' hypergradients, 1 process uses the update's first micro-batch),
  so the comparison stops at the first meta step that moves the weights (there is none in warm-up,
  at lr 0: update 0; the next is update 6 here);
- two-stage methods switch to stage 2 at the same update on both ranks and after it train the
  intermediate exits only.
Dropout is off, so both runs draw nothing at random after initialisation.
"""
import pytest
import torch

from helpers import (QUIET, assert_one_clear_error, assert_ranks_identical, hydra_command, launch_two_processes,
                     probed, run, train_two_processes)

# 400 training snippets: 2 ranks x batch 25 = 8 updates per epoch
COMMON = ["dataset.batch_size=25", "lr_scheduler.warmup_updates=2", "model.dropout=0.0",
          "model.attention_dropout=0.0", "common.log_interval=1"]
ONE_STAGE = [*QUIET, "optimization.max_update=8"]
TWO_STAGES = ["task.stage1_epochs=1", "task.soft_gate_epochs=1", "optimization.max_epoch=2",
              "optimization.max_update=16", "checkpoint.no_epoch_checkpoints=true"]
METHODS = {  # config, overrides, updates to run, first update whose state the meta step may change
    "multi_exit": ("mr_multi_exit", ONE_STAGE, 8, None),
    "leebert_clo": ("mr_leebert", [*ONE_STAGE, "optimizer.w_update_interval=6", "optimizer.w_lr=0.05"], 8, 7),
    "hidden_mse": ("mr_hidden_mse", [*ONE_STAGE, "optimizer.w_update_interval=6", "optimizer.w_lr=0.05"], 8, 7),
    "leebert_darts2": ("mr_leebert", [*ONE_STAGE, "optimizer.mode=darts2", "optimizer.w_update_interval=6",
                                      "optimizer.w_lr=0.05"], 8, 7),
    "leebert_darts1": ("mr_leebert", [*ONE_STAGE, "optimizer.mode=darts1", "optimizer.w_update_interval=6",
                                      "optimizer.w_lr=0.05"], 8, 7),
    "deebert": ("mr_deebert", TWO_STAGES, 16, None),
    "smartbert": ("mr_smartbert", TWO_STAGES, 16, None),
}


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"leebert_darts1"}))
def test_pytorch_ddp_two_ranks_stay_identical_and_match_one_process(method, mr_bin, tmp_path):
    config, overrides, updates, meta_moves = METHODS[method]
    common = [f"task.data={mr_bin}", *COMMON, *overrides]
    train_two_processes(config, tmp_path / "two", *common, backend="pytorch_ddp")
    two = assert_ranks_identical(tmp_path / "two", updates)
    proc = run(hydra_command(config, tmp_path / "one", *common, "optimization.update_freq=[2]"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = probed(tmp_path / "one", 0)
    assert sorted(one) == sorted(two)
    compared = range(updates if meta_moves is None else meta_moves)
    for update in compared:
        for key, value in one[update].items():
            torch.testing.assert_close(two[update][key], value, rtol=0, atol=1e-4, msg=f"update {update}: {key}")
    moved = [key for key, value in two[updates - 1].items() if not torch.equal(value, two[0][key])]
    assert moved  # the run trained
    if meta_moves is not None:  # the bi-level methods: the task's learned weights exist, and the meta step moved them
        assert not torch.equal(two[updates - 1]["loss_weights.logits"], two[0]["loss_weights.logits"])
    if config in ("mr_deebert", "mr_smartbert"):  # the switch: stage 2 from update 8, intermediate exits only
        assert [int(two[u]["training_stage"]) for u in (7, 8)] == [1, 2]
        trained = {key.split(".")[0] for key in moved if not torch.equal(two[updates - 1][key], two[8][key])}
        assert trained == {"exit_heads"}


@pytest.mark.parametrize("method", ["multi_exit", "deebert", "leebert_darts1", "leebert_darts2", "hidden_mse"])
def test_no_c10d_runs_other_methods_with_identical_ranks(method, mr_bin, tmp_path):
    """fairseq's legacy DDP, here by its other name (no_c10d): PABEE's multi-exit training,
    DeeBERT's two stages, darts1 (which runs here only), darts2 and the hidden_mse extension (a user
    criterion under clo). LeeBERT/clo and SmartBERT have their own legacy_ddp tests in
    test_distributed_train.py. Both ranks identical at every update, the run trained, and for the
    bi-level methods the meta step moved the task's loss weights (identically on both ranks)."""
    config, overrides, updates, meta_moves = METHODS[method]
    train_two_processes(config, tmp_path, f"task.data={mr_bin}", *COMMON, *overrides, backend="no_c10d")
    two = assert_ranks_identical(tmp_path, updates)
    assert any(not torch.equal(value, two[0][key]) for key, value in two[updates - 1].items())
    if meta_moves is not None:
        assert not torch.equal(two[updates - 1]["loss_weights.logits"], two[0]["loss_weights.logits"])


@pytest.mark.parametrize("backend", ["pytorch_ddp", "legacy_ddp"])
def test_a_nan_on_one_rank_stops_both_at_the_same_update_with_one_line(backend, mr_bin, tmp_path):
    """Rank 1's loss turns NaN at update 3 (0-based 2): both ranks end with the same one line, and
    neither waits for the other at a collective (the launcher's timeout would fail the test)."""
    done = launch_two_processes("mr_leebert", tmp_path, f"task.data={mr_bin}", *COMMON, *ONE_STAGE,
                                backend=backend, env={"1:LEEBERT_PROBE_NAN": "1:2"})
    for p in done:
        assert_one_clear_error(p, "the training loss is NaN/Inf at update 3 on rank 1 of 2", "lower optimization.lr")
    assert sorted(probed(tmp_path, 0)) == sorted(probed(tmp_path, 1)) == [0, 1, 2]


@pytest.mark.parametrize("backend", ["fully_sharded", "slowmo"])
def test_a_backend_the_plugin_cannot_run_is_refused_in_one_line(backend, mr_bin, tmp_path):
    save = tmp_path / "save"
    proc = run(hydra_command("mr_multi_exit", save, f"task.data={mr_bin}", *ONE_STAGE,
                             f"distributed_training.ddp_backend={backend}", probe=False))
    assert_one_clear_error(proc, f"ddp_backend={backend} is not supported", "ddp_backend=pytorch_ddp")
    assert not save.exists() or not list(save.glob("*.pt"))


def _wrap_on_cpu(rank: int, port: int) -> None:
    import os
    from argparse import Namespace

    import torch.distributed as dist
    from fairseq.models import DistributedFairseqModel

    from helpers import tiny_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=1)
    args = Namespace(tpu=False, ddp_backend="pytorch_ddp", device_id=0, broadcast_buffers=False, bucket_cap_mb=25,
                     find_unused_parameters=True, gradient_as_bucket_view=False, ddp_comm_hook="none",
                     heartbeat_timeout=-1)
    wrapped = DistributedFairseqModel(args, tiny_model(), process_group=dist.group.WORLD, device=torch.device("cpu"))
    assert wrapped.module.device_ids is None and wrapped.exit_layers == [1, 2, 3, 4]
    dist.destroy_process_group()


def test_fairseqs_pytorch_ddp_wrapper_accepts_a_cpu_module():
    """fairseq passes device_ids=[device_id] for every module; torch refuses that on the CPU."""
    import torch.multiprocessing as mp

    from helpers import free_port

    mp.spawn(_wrap_on_cpu, args=(free_port(),), nprocs=1, join=True)


def test_find_unused_parameters_false_is_refused_with_several_workers_under_pytorch_ddp():
    from leebert_plugin.fairseq_patches.ddp import check_backend
    from leebert_plugin.errors import UsageError

    check_backend("pytorch_ddp", False, 1)  # one process: no DDP
    check_backend("legacy_ddp", False, 2)  # legacy DDP all-reduces every gradient, used or not
    with pytest.raises(UsageError, match="find_unused_parameters=true"):
        check_backend("c10d", False, 2)


def test_bmuf_and_optimizer_state_sharding_are_refused_in_one_line():
    from leebert_plugin.fairseq_patches.ddp import check_backend
    from leebert_plugin.errors import UsageError

    check_backend("pytorch_ddp", True, 2, use_bmuf=False, zero_sharding="none")
    with pytest.raises(UsageError, match="use_bmuf=true is not supported.*Fix: drop use_bmuf"):
        check_backend("pytorch_ddp", True, 2, use_bmuf=True)
    with pytest.raises(UsageError, match="zero_sharding=os is not supported.*zero_sharding=none"):
        check_backend("legacy_ddp", True, 2, zero_sharding="os")
