"""Pareto fronts of (speed-up, metric) points, and the best point at a target speed-up.

Thresholds are chosen on dev only: the front and the choice come from dev points; the test
figures of the point chosen are then read as they are.
"""
from typing import Dict, List, Optional, Sequence


def front(points: Sequence[Dict], x: str = "dev_speedup", y: str = "dev_metric") -> List[Dict]:
    """The points no other point beats on both axes, by increasing speed-up (so decreasing metric)."""
    best: List[Dict] = []
    for p in sorted(points, key=lambda p: (-p[x], -p[y])):  # fastest first
        if not best or p[y] > best[-1][y]:
            best.append(p)
    return best[::-1]


def best_at(points: Sequence[Dict], target: float, x: str, y: str, tolerance: float = 1e-9) -> Optional[int]:
    """Index of the point with the highest ``y`` among those whose ``x`` (a speed-up) is at least
    ``target`` (ties: the faster); None when no point is that fast. A real point, never an
    interpolation between two: a threshold one can deploy. Both the sweep's choice and the
    benchmark's use it, each on its dev figures."""
    candidates = [i for i, p in enumerate(points) if p[x] >= target - tolerance]
    return max(candidates, key=lambda i: (points[i][y], points[i][x])) if candidates else None
