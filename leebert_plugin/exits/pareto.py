"""Pareto fronts of (speed-up, metric) points, and the metric at a target speed-up.

Thresholds are chosen on dev only: the front and the interpolation weights come from dev
points; the same weights applied to the matching test points give the test figure.
"""
import math
from typing import Dict, List, Sequence


def front(points: Sequence[Dict], x: str = "dev_speedup", y: str = "dev_metric") -> List[Dict]:
    """The points no other point beats on both axes, by increasing speed-up (so decreasing metric)."""
    best: List[Dict] = []
    for p in sorted(points, key=lambda p: (-p[x], -p[y])):  # fastest first
        if not best or p[y] > best[-1][y]:
            best.append(p)
    return best[::-1]


def at_speedup(points: Sequence[Dict], target: float, x: str = "dev_speedup",
               carry: Sequence[str] = ("test_metric", "test_speedup", "dev_metric")) -> Dict[str, float]:
    """Interpolate linearly between the two dev-front points around ``target``; the ``carry`` keys
    (test figures) get the same weights. Below the front's slowest point, that point itself (it is
    faster than asked and at least as good). NaN when the front does not reach ``target``."""
    pts = front(points, x=x)
    if not pts or target > pts[-1][x] + 1e-12:
        return {k: math.nan for k in carry}
    if target <= pts[0][x]:
        return {k: pts[0][k] for k in carry}
    for a, b in zip(pts, pts[1:] + pts[-1:]):
        if a[x] - 1e-12 <= target <= b[x] + 1e-12:
            w = 0.0 if b[x] == a[x] else (target - a[x]) / (b[x] - a[x])
            return {k: (1 - w) * a[k] + w * b[k] for k in carry}
    return {k: math.nan for k in carry}
