"""fairseq's ``all_gather_list`` on CPU-only machines.

Validation logging that cannot be summed (regression's predictions, which Spearman ranks) is
gathered with fairseq's ``distributed_utils.all_gather_list``. That function stages the pickled
data in a ``torch.cuda.ByteTensor``, so a multi-process CPU run (gloo) stops with "Torch not
compiled with CUDA enabled". With a CPU backend the same gather goes through
``torch.distributed.all_gather_object``; with NCCL, fairseq's own function runs unchanged.
"""
import functools
import pickle
from typing import Any, Callable, List

import torch
from fairseq import utils
from fairseq.distributed import utils as distributed_utils

from leebert_plugin.fairseq_patches.wrapping import wrap_once


def on_cpu(gather: Callable) -> Callable:
    """``gather`` (fairseq's ``all_gather_list``) with a path for CPU backends (gloo): one object
    per rank, in rank order, as fairseq returns them, under the same ``max_size`` limit."""

    @functools.wraps(gather)
    def all_gather_list(data: Any, group=None, max_size: int = 16384) -> List[Any]:
        group = group if group is not None else distributed_utils.get_global_group()
        if torch.distributed.get_backend(group) == "nccl":
            return gather(data, group=group, max_size=max_size)
        data = utils.move_to_cpu(data)
        size = len(pickle.dumps(data)) + 4  # fairseq's 4-byte length header
        if size > max_size:  # the limit fairseq's CUDA buffer has, so CPU runs find it too
            raise ValueError(f"encoded data size ({size}) exceeds max_size ({max_size})")
        out: List[Any] = [None] * distributed_utils.get_world_size(group=group)
        torch.distributed.all_gather_object(out, data, group=group)
        return out

    return all_gather_list


def install() -> None:
    """Route fairseq's ``all_gather_list`` through :func:`on_cpu` (once per process)."""
    wrap_once(distributed_utils, "all_gather_list", on_cpu)
