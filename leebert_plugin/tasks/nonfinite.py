"""Stop training with one clear line when the loss or a gradient is NaN/Inf (fp32 runs).

fairseq raises ``FloatingPointError("gradients are Nan/Inf")`` with a traceback, writes
``crash.pt`` and dumps every tensor through its NanDetector. A :class:`UsageError` raised from the
task's ``train_step`` (before the optimizer step) passes through all of that: the parameters, the
optimizer and every checkpoint stay as they were. fp16/AMP runs are left to fairseq: their loss
scaler skips an overflowing step by design.
"""
from typing import List

import torch
from fairseq.optim.amp_optimizer import AMPOptimizer

from leebert_plugin.errors import UsageError

FIX = ("lower optimization.lr or lengthen lr_scheduler.warmup_updates, check the data for broken "
       "examples, keep fp16 off; then restart from the last checkpoint (it was not overwritten)")


def scales_loss(optimizer) -> bool:
    """fairseq's fp16 and AMP optimizers, which handle an overflow themselves."""
    return getattr(optimizer, "scaler", None) is not None or isinstance(optimizer, AMPOptimizer)


def _all_finite(grads: List[torch.Tensor]) -> bool:
    return not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))


def check_finite(loss: torch.Tensor, model: torch.nn.Module, optimizer, update_num: int) -> None:
    """After forward and backward: refuse a non-finite loss or gradient, naming the update and lr."""
    if scales_loss(optimizer):
        return
    what = None
    if not bool(torch.isfinite(loss.detach()).all()):
        what = f"the training loss is {float(loss.detach().sum())}"
    elif not _all_finite([p.grad for p in model.parameters() if p.grad is not None]):
        what = "a gradient is NaN/Inf"
    if what is not None:
        raise UsageError(f"{what} at update {update_num + 1} (lr {optimizer.get_lr():g})", FIX)
