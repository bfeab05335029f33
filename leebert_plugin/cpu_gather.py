"""fairseq's ``all_gather_list`` on CPU-only machines.

Validation logging that cannot be summed (regression's predictions, which Spearman ranks) is
gathered with fairseq's ``distributed_utils.all_gather_list``. That function stages the pickled
data in a ``torch.cuda.ByteTensor``, so a multi-process CPU run (gloo) stops with "Torch not
compiled with CUDA enabled". Without CUDA, the same gather goes through
``torch.distributed.all_gather_object``; with CUDA, fairseq's own function runs unchanged.
"""
import functools
from typing import Any, Callable, List

import torch
from fairseq import utils
from fairseq.distributed import utils as distributed_utils


def on_cpu(gather: Callable) -> Callable:
    """``gather`` (fairseq's ``all_gather_list``) with a CPU path: one object per rank, in rank
    order, as fairseq returns them. ``max_size`` still bounds each rank's pickled data."""

    @functools.wraps(gather)
    def all_gather_list(data: Any, group=None, max_size: int = 16384) -> List[Any]:
        if torch.cuda.is_available():
            return gather(data, group=group, max_size=max_size)
        group = group if group is not None else distributed_utils.get_global_group()
        out: List[Any] = [None] * distributed_utils.get_world_size(group=group)
        torch.distributed.all_gather_object(out, utils.move_to_cpu(data), group=group)
        return out

    all_gather_list.leebert_cpu = True
    return all_gather_list


def install() -> None:
    """Route fairseq's ``all_gather_list`` through :func:`on_cpu` (once per process)."""
    if not getattr(distributed_utils.all_gather_list, "leebert_cpu", False):
        distributed_utils.all_gather_list = on_cpu(distributed_utils.all_gather_list)
