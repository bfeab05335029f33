"""Choosing an operating point on dev and reading it on test.

An operating point "at S x" is a real point of the run's grid (a threshold or a patience one can
deploy), not an interpolation between two: the most accurate point on dev among those whose dev
speed-up is at least ``S`` (ties: the faster). Its test accuracy, test speed-up and test outcomes
are then reported as they are. Test figures never take part in the choice.

``At`` names what is asked: ``At("full")`` is the model without an exit policy (the first point of
every run); ``At("layers", 2.0)`` the choice at 2x layer speed-up; ``At("flops", 2.0)`` at 2x FLOPs.
The choice is among the published rules' points (global threshold, patience) unless
``rule="per_exit"`` asks for the per-exit calibrated rule's (``per_exit_entropy``) instead.
"""
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

from leebert_plugin.exits.pareto import best_at

AXES = {"layers": "dev_speedup", "flops": "dev_flops_speedup"}
RULES = ("published", "per_exit")
PER_EXIT_POLICY = "per_exit_entropy"


@dataclass(frozen=True)
class At:
    axis: str  # "full", "layers" or "flops"
    speedup: float = 1.0
    rule: str = "published"

    def __post_init__(self):
        if self.axis != "full" and self.axis not in AXES:
            raise ValueError(f"unknown speed-up axis {self.axis!r}: use 'full', {', '.join(AXES)}")
        if self.rule not in RULES:
            raise ValueError(f"unknown exit rule {self.rule!r}: use {', '.join(RULES)}")

    def __str__(self) -> str:
        if self.axis == "full":
            return "full depth"
        return (f"{self.speedup:g}x" + (" FLOPs" if self.axis == "flops" else "")
                + (" per-exit" if self.rule == "per_exit" else ""))


FULL = At("full")


def choose(points: Sequence[Dict], at: At, tolerance: float = 1e-9) -> Optional[int]:
    """Index in ``points`` of the point chosen on dev for ``at``; None when no dev point is that fast.

    ``points[0]`` must be the run at full depth (``At("full")`` returns it). Otherwise the
    candidates are the points of ``at.rule`` with ``dev speed-up >= at.speedup`` on ``at``'s axis, and the one
    with the highest ``dev_metric`` wins; among equals, the faster one on dev.
    """
    if at.axis == "full":
        return 0 if points else None
    per_exit = at.rule == "per_exit"
    ruled = [i for i, p in enumerate(points) if (p["policy"] == PER_EXIT_POLICY) == per_exit]
    best = best_at([points[i] for i in ruled], at.speedup, AXES[at.axis], "dev_metric", tolerance)
    return None if best is None else ruled[best]
