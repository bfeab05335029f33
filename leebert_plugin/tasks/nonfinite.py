"""Stop training with one clear line when the loss or a gradient is NaN/Inf (fp32 runs).

fairseq raises ``FloatingPointError("gradients are Nan/Inf")`` with a traceback, writes
``crash.pt`` and dumps every tensor through its NanDetector. A :class:`UsageError` raised from the
task's ``train_step`` (before the optimizer step) passes through all of that: the parameters, the
optimizer and every checkpoint stay as they were. fp16/AMP runs are left to fairseq: their loss
scaler skips an overflowing step by design.
"""
from typing import List

import torch
from fairseq.distributed import utils as distributed_utils
from fairseq.optim.amp_optimizer import AMPOptimizer

from leebert_plugin.errors import UsageError

FIX = ("lower optimization.lr or lengthen lr_scheduler.warmup_updates, check the data for broken "
       "examples, keep fp16 off; then restart from the last checkpoint (it was not overwritten)")


def scales_loss(optimizer) -> bool:
    """fairseq's fp16 and AMP optimizers, which handle an overflow themselves."""
    return getattr(optimizer, "scaler", None) is not None or isinstance(optimizer, AMPOptimizer)


def _all_finite(grads: List[torch.Tensor]) -> bool:
    return not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))


def _local_problem(loss: torch.Tensor, model: torch.nn.Module) -> int:
    """0: fine; 1: the loss is NaN/Inf; 2: a gradient is (this rank's, before any sum)."""
    if not bool(torch.isfinite(loss.detach()).all()):
        return 1
    if not _all_finite([p.grad for p in model.parameters() if p.grad is not None]):
        return 2
    return 0


def check_finite(loss: torch.Tensor, model: torch.nn.Module, optimizer, update_num: int) -> None:
    """After forward and backward: refuse a non-finite loss or gradient, naming the update, the
    rank(s) and the lr.

    With several workers every rank learns every rank's verdict through one all-reduce of a
    vector with a slot per rank, so all of them stop at the same update with the same line; one
    rank stopping alone would leave the others waiting at the next collective. Under
    ``legacy_ddp`` the gradients are still this rank's here (fairseq sums them after the task's
    step); under ``pytorch_ddp`` the last micro-batch's backward has summed them already.
    """
    if scales_loss(optimizer):
        return
    codes = torch.tensor([_local_problem(loss, model)], dtype=torch.long)
    world = distributed_utils.get_data_parallel_world_size()
    if world > 1:
        slots = torch.zeros(world, dtype=torch.long, device=loss.device)
        slots[distributed_utils.get_data_parallel_rank()] = int(codes[0])
        codes = distributed_utils.all_reduce(slots, distributed_utils.get_data_parallel_group()).cpu()
    codes = codes.tolist()
    bad = [rank for rank, code in enumerate(codes) if code == 1] or [rank for rank, code in enumerate(codes) if code]
    if not bad:
        return
    loss_text = f"{float(loss.detach().sum())}" if world == 1 else "NaN/Inf"
    what = f"the training loss is {loss_text}" if codes[bad[0]] == 1 else "a gradient is NaN/Inf"
    where = f" on rank {', '.join(map(str, bad))} of {world}" if world > 1 else ""
    raise UsageError(f"{what} at update {update_num + 1}{where} (lr {optimizer.get_lr():g})", FIX)
