"""Intervals for paired comparisons: over seeds (Student's t) and over test examples (bootstrap).

Two sources of noise separate two methods' figures, and the benchmark reports both:

- **seeds** (training noise): method A and method B are trained with the same seeds, so the data
  order is shared and the difference ``d_s = m_A(s) - m_B(s)`` of each seed ``s`` is a paired
  sample. Over ``n`` seeds, the 95% interval is ``mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n)``
  (:func:`seed_interval`). A winner is declared only where this interval excludes 0.
- **test examples** (test-set noise): within one seed, both models answered the same test
  examples. Resampling the examples with replacement and recomputing the accuracy difference on
  each resample gives the percentile interval of :func:`paired_bootstrap`. With 1,281 test
  sentences one accuracy carries a standard error of about 1 point; pairing removes the part both
  models share (the examples both get right or both get wrong).

The t quantiles are tabulated (Student's t, two-sided 95%) rather than taken from scipy, which the
plugin does not depend on for anything else.
"""
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

# two-sided 95% quantiles t_{0.975, df} of Student's t distribution, df = 1..30
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
        2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
        2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
T975_LARGE = ((40, 2.021), (60, 2.000), (120, 1.980), (math.inf, 1.960))


def t975(df: int) -> float:
    """``t_{0.975, df}``: tabulated to 30 degrees of freedom, then linear in ``1/df`` between 40, 60,
    120 and the normal 1.960 (exact to the third decimal)."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 1 degree of freedom (2 values), got df={df}")
    if df <= len(T975):
        return T975[df - 1]
    lo_df, lo_t = len(T975), T975[-1]
    for hi_df, hi_t in T975_LARGE:
        if df <= hi_df:
            w = (1 / lo_df - 1 / df) / (1 / lo_df - 1 / hi_df)
            return lo_t + w * (hi_t - lo_t)
        lo_df, lo_t = hi_df, hi_t
    return 1.960


@dataclass(frozen=True)
class Interval:
    """A mean and its 95% interval ``[low, high]`` over ``n`` values (NaN bounds when ``n < 2``)."""

    mean: float
    low: float
    high: float
    n: int

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def verdict(self) -> str:
        """``A`` (first better), ``B`` (second better) or ``tie`` (the interval holds 0 or is unknown)."""
        if not self.excludes_zero():
            return "tie"
        return "A" if self.mean > 0 else "B"

    def __str__(self) -> str:
        if math.isnan(self.mean):
            return "not reached"
        if math.isnan(self.low):
            return f"{self.mean:+.2f} (n={self.n})"
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"

    def as_value(self) -> str:
        """The same, for a quantity rather than a difference (no sign)."""
        if math.isnan(self.mean):
            return "not reached"
        if math.isnan(self.low):
            return f"{self.mean:.2f} (n={self.n})"
        return f"{self.mean:.2f} ± {(self.high - self.low) / 2:.2f}"


NOT_REACHED = Interval(math.nan, math.nan, math.nan, 0)


def seed_interval(values: Sequence[Optional[float]]) -> Interval:
    """Mean and 95% t interval of ``values`` (one per seed; ``None``/NaN, a seed that did not reach
    the operating point, makes the whole interval unknown: dropping it would favour the method)."""
    vals = [math.nan if v is None else float(v) for v in values]
    if not vals or any(math.isnan(v) for v in vals):
        return NOT_REACHED
    n = len(vals)
    mean = sum(vals) / n
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def paired_bootstrap(correct_a: Sequence[bool], correct_b: Sequence[bool], reps: int = 2000, seed: int = 0,
                     chunk: int = 250) -> Interval:
    """Accuracy of A minus accuracy of B (x100) on the same examples, with the 95% percentile
    interval of ``reps`` resamples of the examples (with replacement, the same resample for both).

    ``d_i = correct_a[i] - correct_b[i]`` takes values -1, 0 and 1; each resample's difference is
    the mean of ``d`` over the resampled indices. Resamples are drawn ``chunk`` at a time so that
    7,500 test examples x 2,000 resamples never sit in memory at once. ``seed`` fixes the draws.
    """
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"a paired bootstrap needs two equal, non-empty 1-D outcome vectors, got {a.shape} and {b.shape}")
    d = a.astype(np.float64) - b.astype(np.float64)
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, reps, chunk):
        idx = rng.integers(0, d.size, size=(min(chunk, reps - start), d.size))
        means.append(d[idx].mean(1))
    boot = 100.0 * np.concatenate(means)
    low, high = np.quantile(boot, [0.025, 0.975])
    return Interval(100.0 * float(d.mean()), float(low), float(high), int(d.size))
