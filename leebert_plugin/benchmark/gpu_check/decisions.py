"""Exit decisions on one device against another: which disagreements a tolerance allows."""
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from leebert_plugin.errors import UsageError

DECISION_TOL = 1e-4  # |criterion - threshold| under which a decision may tip between devices


# ---- exit decisions: one device against another ---------------------------------------------------
@dataclass
class Agreement:
    """Per-sample decisions of two runs: how many samples, how many differ, and how many of those
    are excused (their criterion within the tolerance of the threshold)."""

    samples: int
    differ: int
    excused: int

    @property
    def ok(self) -> bool:
        return self.differ == self.excused

    def describe(self) -> str:
        return f"{self.differ} of {self.samples} differ, {self.excused} of them within the tolerance"


def decisions_agree(a_layers: Sequence[int], b_layers: Sequence[int], margins: Sequence[float],
                    tol: float = DECISION_TOL) -> Agreement:
    """Compare two runs' per-sample exit layers. A sample may differ only if its ``margin`` (the
    distance of its criterion to the threshold at the exits it was checked at) is below ``tol``:
    there the last bits of the arithmetic decide, which differ between devices and batch sizes."""
    a, b, m = (torch.as_tensor(x) for x in (a_layers, b_layers, margins))
    if not a.shape == b.shape == m.shape or a.dim() != 1:
        raise ValueError(f"decisions_agree needs three vectors of one length, got {list(a.shape)}, "
                         f"{list(b.shape)}, {list(m.shape)}")
    differ = a != b
    return Agreement(int(a.numel()), int(differ.sum()), int((differ & (m < tol)).sum()))


CRITERIA = {  # policy -> the value its threshold is compared with, from one exit's logits (N x C)
    "normalized_entropy": lambda logits: _entropy(logits) / math.log(logits.size(-1)),
    "entropy": lambda logits: _entropy(logits),
    "max_prob": lambda logits: torch.softmax(logits.float(), -1).amax(-1),
}


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    from leebert_plugin.exits.policies import entropy

    return entropy(logits)


def criterion_values(policy: str, logits: torch.Tensor) -> torch.Tensor:
    """``E x N``: the policy's criterion at every exit (``logits``: ``E x N x C``)."""
    if policy not in CRITERIA:
        raise UsageError(f"the GPU check compares threshold policies only, not {policy!r}",
                         f"use one of {', '.join(sorted(CRITERIA))}")
    return torch.stack([CRITERIA[policy](exit_logits) for exit_logits in logits])


def margins(values: torch.Tensor, threshold: float, checked: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per sample, the smallest |criterion - threshold| over the exits that decide (all but the
    last, where every sample leaves); ``checked`` (per sample, an exit index) limits that to the
    exits up to it: the later exits were never looked at. ``values``: ``E x N``."""
    distance = (values[:-1] - threshold).abs()
    if checked is not None:
        exits = torch.arange(distance.size(0)).unsqueeze(1)
        distance = distance.masked_fill(exits > checked.unsqueeze(0), math.inf)
    return distance.amin(0) if distance.numel() else torch.full((values.size(1),), math.inf)


def mean_layers_allowance(near: int, samples: int, layer_range: int, digits: int = 3) -> float:
    """How far two runs' mean executed layers may differ when ``near`` of ``samples`` may tip
    (each by at most ``layer_range`` layers) and each mean was printed to ``digits`` decimals."""
    return near * layer_range / samples + 10.0 ** -digits
