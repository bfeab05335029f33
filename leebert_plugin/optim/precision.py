"""fairseq's optimizer under its precision wrappers: which model tensors it updates, and a fresh
one over fewer of them (two-stage training), whichever wrapper fairseq chose.

fairseq wraps the configured optimizer by precision (``trainer._build_optimizer``):

* ``--fp16`` / ``--bf16``: :class:`FP16Optimizer` keeps fp32 master copies and steps those: one
  flat tensor under ``--fp16`` (unless ``common.fp16_no_flatten_grads``), one copy per parameter
  under ``--bf16``; after the step it copies the masters back into the model;
* ``--memory-efficient-fp16`` / ``--memory-efficient-bf16``: :class:`MemoryEfficientFP16Optimizer`
  steps the model's own tensors, the optimizer upcasting on the fly;
* ``--amp``: :class:`AMPOptimizer`, the model's fp32 tensors and torch's grad scaler;
* fp32: the optimizer itself.

Why the plugin needs to know: the masters are built once, over the parameters that required a
gradient then. Two-stage training freezes the backbone and reloads the best stage-1 weights into
the model at the switch, after that; stepping the old masters would write their stale values back
over the reload (and, with the flat copy, misplace the exits' gradients, since fairseq's gradient
copy skips frozen tensors but the flat layout does not). :func:`restrict_to` gives the wrapper
fresh state over the trainable tensors instead.

The exit heads' tag (``exit_adam``'s ``exit_lr_scale``) lives on the model's parameters;
fairseq's per-parameter masters carry ``param_group`` and ``optim_overrides`` from the model's
tensor but not our tag, so :mod:`leebert_plugin.fairseq_patches.fp32_masters` makes them carry it
too. The flat master is one tensor
for all parameters and cannot carry it: ``exit_adam`` refuses a scale there.
"""
import logging
from typing import List, Sequence

import torch
from fairseq import optim
from fairseq.optim.amp_optimizer import AMPOptimizer
from fairseq.optim.fp16_optimizer import FP16Optimizer, MemoryEfficientFP16Optimizer

from leebert_plugin.errors import UsageError

logger = logging.getLogger(__name__)


def optimized_params(optimizer) -> List[torch.Tensor]:
    """The model's tensors that fairseq's ``optimizer`` (wrapped or not) updates."""
    if isinstance(optimizer, FP16Optimizer):
        return list(optimizer.fp16_params)
    return [p for group in optimizer.param_groups for p in group["params"]]


def restrict_to(optimizer, params: Sequence[torch.nn.Parameter]) -> None:
    """Replace the state of fairseq's ``optimizer``, in place (fairseq's trainer and lr scheduler
    hold it), by that of a fresh optimizer of the same configuration over ``params`` only: new
    masters copied from the model's current values, no moments. The scheduled lr is kept."""
    lr = optimizer.get_lr()
    params = list(params)
    if isinstance(optimizer, FP16Optimizer):
        flat = optimizer.has_flat_params
        masters = FP16Optimizer.build_fp32_params(optimizer.cfg, params, flatten=flat)
        optimizer.fp16_params = params
        optimizer.fp32_params = masters
        optimizer.fp32_optimizer = optim.build_optimizer(optimizer.cfg, [masters] if flat else masters)
    elif isinstance(optimizer, MemoryEfficientFP16Optimizer):
        optimizer.wrapped_optimizer = optim.build_optimizer(optimizer.cfg, params)
    elif isinstance(optimizer, AMPOptimizer):
        optimizer.fp32_optimizer = optim.build_optimizer(optimizer.cfg, params)
    else:
        optimizer.optimizer = optim.build_optimizer(optimizer.cfg, params).optimizer
    optimizer.set_lr(lr)


def check_precision(common, cuda_available: bool) -> None:
    """Refuse, in one line, the precision settings fairseq would crash on or silently ignore."""
    if common is None:  # a task config built alone in Python
        return
    if common.get("tpu", False):
        # fairseq's argparse options turn --bf16 (and --memory-efficient-bf16) into a TPU run
        raise UsageError("common.tpu=true: leebert-plugin does not run on TPUs (fairseq's argparse command line "
                         "sets it for --bf16 and --memory-efficient-bf16, then needs torch_xla)",
                         "for bf16 on a GPU or the CPU run fairseq-hydra-train with common.bf16=true; "
                         "on fairseq-train use --amp or --fp16")
    if common.get("fp16", False) and common.get("bf16", False):
        raise UsageError("common.fp16=true with common.bf16=true: fairseq casts the weights to fp16 and, seeing bf16, "
                         "builds no loss scaler", "choose one: common.fp16=true or common.bf16=true")
    if common.get("amp", False) and (common.get("fp16", False) or common.get("bf16", False)):
        raise UsageError("common.amp=true with common.fp16/bf16: AMP keeps fp32 weights and casts per operation, "
                         "fp16/bf16 cast the weights", "choose one: common.amp=true, or common.fp16/bf16=true")
    for half in ("fp16", "bf16"):
        if common.get(f"memory_efficient_{half}", False) and not common.get(half, False):
            # fairseq's argparse CLI implies it; under hydra the flag alone trains in fp32
            raise UsageError(f"common.memory_efficient_{half}=true without common.{half}=true trains in fp32",
                             f"set common.{half}=true as well")
    flat = common.get("fp16", False) and not common.get("memory_efficient_fp16", False) \
        and not common.get("fp16_no_flatten_grads", False)
    if flat and (common.get("cpu", False) or not cuda_available):
        raise UsageError("--fp16 without a GPU: fairseq keeps its fp32 master copy as one flat tensor on the current "
                         "CUDA device", "on the CPU use common.bf16=true, or add common.fp16_no_flatten_grads=true")
