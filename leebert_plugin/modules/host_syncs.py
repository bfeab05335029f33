"""Counting the calls that make the host wait for the device (host syncs).

On a GPU, reading a tensor's value in Python (``bool(t)``, ``int(t)``, ``t.item()``, ``t.tolist()``,
``t.cpu()``) blocks until every queued kernel has run, and so does an operation whose output
size depends on the values (``nonzero``, ``masked_select``, indexing with a boolean mask). Each
one stalls the pipeline, which can eat what an early exit saves. :class:`HostSyncCounter` counts
such calls in a block of code, on any device: a CPU run shows how many a GPU run would make.

It is a ``TorchFunctionMode``, so it sees the calls made from Python (ours and fairseq's), not
those made inside torch's own Python functions (``F.multi_head_attention_forward``, which makes
none): a mode is switched off while it handles a call.
"""
import collections
from typing import Dict, Optional

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

# calls that read a value on the host, or whose output size depends on the values
VALUE_READS = {
    Tensor.item: "item",
    Tensor.__bool__: "bool",
    Tensor.__int__: "int",
    Tensor.__float__: "float",
    Tensor.__index__: "index",
    Tensor.tolist: "tolist",
    Tensor.cpu: "cpu",
    Tensor.numpy: "numpy",
    Tensor.nonzero: "nonzero",
    torch.nonzero: "nonzero",
    Tensor.masked_select: "masked_select",
    torch.masked_select: "masked_select",
}
INDEXING = {Tensor.__getitem__: "getitem[bool mask]", Tensor.__setitem__: "setitem[bool mask]"}


def _is_mask(index) -> bool:
    """Whether an index (one entry, or a tuple of entries) holds a boolean tensor."""
    entries = index if isinstance(index, tuple) else (index,)
    return any(isinstance(e, Tensor) and e.dtype == torch.bool for e in entries)


class HostSyncCounter(TorchFunctionMode):
    """``with HostSyncCounter() as syncs: ...``; then ``syncs.total`` and ``syncs.calls`` (by kind).

    Indexing counts only with a boolean-tensor index: an integer tensor or Python ints and slices
    need no value on the host.
    """

    def __init__(self):
        super().__init__()
        self.calls: Dict[str, int] = collections.Counter()

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def __torch_function__(self, func, types, args=(), kwargs: Optional[dict] = None):
        kind = VALUE_READS.get(func)
        if kind is None and func in INDEXING and len(args) > 1 and _is_mask(args[1]):
            kind = INDEXING[func]
        if kind is not None:
            self.calls[kind] += 1
        return func(*args, **(kwargs or {}))
