"""The fixed D1/D2 split of the training set for bi-level training, and batch subsetting.

Membership is a hash of (example id, seed): it needs no stored list, survives restarts, and is the
same on every worker. Each batch is split by it, so D1 and D2 examples arrive together.
"""
from typing import Optional

import torch
from torch import Tensor

_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64 finaliser: a well-spread 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def in_d2(ids: Tensor, seed: int, ratio: float) -> Tensor:
    """Bool mask: which example ids belong to D2 (a share ``ratio`` of all ids)."""
    cut = int(ratio * (1 << 64))
    salt = _mix(seed)
    return torch.tensor([_mix(int(i) ^ salt) < cut for i in ids.tolist()], dtype=torch.bool, device=ids.device)


def subset_sample(sample: dict, keep: Tensor) -> Optional[dict]:
    """The sentences of a sentence-prediction batch where ``keep`` is true (None if there are none)."""
    if not bool(keep.any()):
        return None
    bsz = keep.numel()
    idx = keep.nonzero().squeeze(1)

    def select(x):
        if isinstance(x, dict):
            return {k: select(v) for k, v in x.items()}
        if torch.is_tensor(x) and x.dim() > 0 and x.size(0) == bsz:
            return x.index_select(0, idx)
        return x

    out = select(sample)
    net = out["net_input"]
    if "src_lengths" in net:
        width = int(net["src_lengths"].max())
        net["src_tokens"] = net["src_tokens"][:, :width]  # right padding: trailing columns only pad
        out["ntokens"] = int(net["src_lengths"].sum())
    out["nsentences"] = idx.numel()
    return out
