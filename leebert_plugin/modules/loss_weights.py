"""Learned loss-term weights (LeeBERT): one positive weight per named term, initially uniform.

The module belongs to LeeBERT's bi-level training (``optim/bilevel.py``), beside the model: DDP
and fairseq's optimizers never see it. The term names travel with its state dict
(``_extra_state``), so a checkpoint made for other terms is refused in one line.

Parametrisations (``methods.md`` §6.3; the paper's is not public):

* ``group_softmax`` (default): terms are grouped by their prefix (``ce``, ``kd``, ...); within a
  group, w = softmax(a) * scale_g, so a group's weights sum to its scale (1, or ``kd_weight`` for
  distillation) and start equal. The CE-to-KD balance stays where the config puts it.
* ``global_softmax``: one softmax over every term, times the number of groups; the balance
  between groups is learned too.

How far learned weights are from their uniform start, per group: :func:`spread`.
"""
import math
from typing import Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from leebert_plugin.errors import UsageError

PARAMETRIZATIONS = ("group_softmax", "global_softmax")


def term_group(name: str) -> str:
    return name.split("_", 1)[0]


def spread(weights: Mapping[str, float]) -> Dict[str, Dict[str, float]]:
    """How far each group's weights are from uniform, by group name (``ce``, ``kd``, ...):

        kl_uniform    = KL(p || uniform) = sum_k p_k ln(n p_k) = ln n - H(p),   p = the group's weights / their sum
        max_min_ratio = max_k w_k / min_k w_k

    Both are 0 and 1 at the uniform start whatever the group's scale (``kd_weight``); KL reaches
    ln n when one of n terms holds the whole group, the ratio is unbounded. Two numbers, because KL
    weighs the group as a whole and the ratio its extremes (one planted term weighted down shows in
    the ratio long before it shows in the KL of a group of 132)."""
    groups: Dict[str, List[float]] = {}
    for name, w in weights.items():
        groups.setdefault(term_group(name), []).append(float(w))
    out = {}
    for group, ws in groups.items():
        total = sum(ws)
        p = [w / total for w in ws]
        kl = sum(pk * math.log(len(p) * pk) for pk in p if pk > 0)
        out[group] = {"kl_uniform": max(0.0, kl), "max_min_ratio": max(ws) / min(ws) if min(ws) > 0 else math.inf}
    return out


class LossWeights(nn.Module):
    def __init__(self, names: Sequence[str], parametrization: str = "group_softmax",
                 group_scales: Optional[Dict[str, float]] = None):
        super().__init__()
        if parametrization not in PARAMETRIZATIONS:
            raise UsageError(f"unknown weight parametrization {parametrization!r}",
                             f"use one of {', '.join(PARAMETRIZATIONS)}")
        self.names: List[str] = list(names)
        self.parametrization = parametrization
        self.group_scales = dict(group_scales or {})
        self.logits = nn.Parameter(torch.zeros(len(self.names)))
        self._index()

    def _index(self) -> None:
        self.position = {n: i for i, n in enumerate(self.names)}
        groups: Dict[str, List[int]] = {}
        for i, n in enumerate(self.names):
            groups.setdefault(term_group(n), []).append(i)
        self.groups = groups

    @classmethod
    def from_state(cls, state: Mapping) -> "LossWeights":
        """The module a saved state dict (``task_state['bilevel']['weights']``) describes, its names
        included: the weights of a checkpoint without the criterion that trained them."""
        extra = state["_extra_state"]
        module = cls(extra["names"], extra["parametrization"], extra["group_scales"])
        module.load_state_dict(state)
        return module

    def weights(self) -> Tensor:
        """All weights, in ``names`` order (differentiable in ``logits``)."""
        if self.parametrization == "global_softmax":
            return torch.softmax(self.logits, 0) * len(self.groups)
        out = torch.empty_like(self.logits)
        for group, idx in self.groups.items():
            index = torch.tensor(idx, device=self.logits.device)
            scale = self.group_scales.get(group, 1.0)
            out = out.index_copy(0, index, torch.softmax(self.logits[index], 0) * scale)
        return out

    def forward(self, names: Sequence[str]) -> Dict[str, Tensor]:
        w = self.weights()
        missing = [n for n in names if n not in self.position]
        if missing:
            raise UsageError(
                f"the model's learned loss weights have no term {missing[0]!r} (they were made for "
                f"{self.names[0]}, ... {self.names[-1]})",
                "train with the criterion settings the checkpoint was trained with",
            )
        return {n: w[self.position[n]] for n in names}

    def get_extra_state(self):
        return {"names": self.names, "parametrization": self.parametrization,
                "group_scales": self.group_scales}

    def set_extra_state(self, state) -> None:
        if list(state["names"]) != self.names:
            raise UsageError(
                f"the checkpoint's learned loss weights are for {len(state['names'])} other terms "
                f"({state['names'][:3]}...) than this criterion's {len(self.names)} ({self.names[:3]}...)",
                "use the criterion settings (distillation variant, exits) the checkpoint was trained with",
            )
        self.parametrization = state["parametrization"]
        self.group_scales = dict(state["group_scales"])
