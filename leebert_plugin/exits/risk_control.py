"""Exit thresholds with a statistical guarantee: "at most D points lost, with confidence 1 - delta".

The point-estimate rule (``sweep_thresholds.py --max-drop D`` without ``--confidence``) takes the
fastest threshold whose dev accuracy is within D of full depth. Its dev figure is one noisy
draw: on new data the drop at that threshold exceeds D about half the time when the dev drop sat
just under D. Here the threshold is chosen so that, with probability at least ``1 - delta`` over
the calibration set (the dev examples, drawn from the distribution the model will serve),

    R(lambda_chosen) <= D,      R(lambda) = E[ loss_i(lambda) ]  on new data,

the Learn-then-Test recipe (Angelopoulos, Bates, Candes, Jordan, Lei 2021), applied to early exit
as in CALM (Schuster et al. 2022). The steps:

1. **Per-example loss** ``loss_i(lambda)`` in {0, 1} (:data:`RISKS`):

   - ``"disagreement"``: the early-exit prediction differs from the full-depth prediction. It needs
     no labels, so a service can calibrate on its own unlabelled traffic, and it bounds the
     accuracy drop: ``acc_full - acc_exit = P(full right, exit wrong) - P(full wrong, exit right)
     <= P(full right, exit wrong) <= P(exit != full)``. This is the default without labels.
   - ``"accuracy_drop"``: the full-depth prediction is right and the early one is wrong (an answer
     lost). Its mean ``P(full right, exit wrong)`` is the accuracy drop plus the answers the early
     exit gains, so a bound on it bounds the drop, tighter than disagreement (a disagreement where
     full depth was wrong anyway costs nothing). It needs labels; the default when they are given.

   Both are Bernoulli, so the count over ``n`` i.i.d. examples is exactly ``Binomial(n, R)``, and
   the exact binomial bound below needs no approximation (a signed drop in {-1, 0, 1} would need a
   looser bound for bounded variables, e.g. Hoeffding's).

2. **A valid p-value per threshold** for the null ``H_j: R(lambda_j) > D``: with ``k_j`` losses in
   ``n`` examples, ``p_j = P(Binomial(n, D) <= k_j)`` (:func:`binomial_cdf`). Rejecting when
   ``p_j <= delta`` is the same as the Clopper-Pearson upper bound being at most D
   (:func:`upper_bound`: the ``p`` with ``P(Binomial(n, p) <= k) = delta``).

3. **Fixed-sequence testing** (:func:`fixed_sequence`): the thresholds are ordered before the data
   is seen, from the most conservative (nearly full depth) to the most aggressive, by the policy's
   own direction (:func:`ordered`), never by dev figures. ``H_1`` is tested at ``delta``; if
   rejected, ``H_2`` at ``delta``, and so on; the first failure stops. The probability of rejecting
   any true null is at most ``delta`` (the first true null in the sequence must be rejected for
   any to be), so every threshold passed has ``R <= D`` simultaneously with probability at least
   ``1 - delta``, and the fastest of them (speed-up on dev) may be taken. No Bonferroni factor:
   a finer grid costs nothing, except that a risk that is not monotone along it may stop early.

The per-exit rule (:mod:`leebert_plugin.exits.calibrate`) fits its thresholds on data, for each
accuracy level ``alpha``. Fitting and testing on the same examples would void step 2, so
:func:`per_exit_candidates` fits on one part of the calibration set and the test runs on the other
(:func:`split_fit_test`); its levels are tested from the highest (most conservative) down.

Where no threshold passes, :func:`examples_needed` says how many examples the first threshold of
the sequence needs, at its observed rate, for its bound to reach D.
"""
import math
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from leebert_plugin.errors import UsageError
from leebert_plugin.exits.calibrate import ALPHA_OFFSETS, exit_scores, thresholds_for_levels
from leebert_plugin.exits.evaluate import ExitTrace, flops_speedup, layer_speedup, predictions, replay
from leebert_plugin.exits.policies import POLICY_REGISTRY, build_policy

RISKS = ("disagreement", "accuracy_drop")
PER_EXIT = "per_exit_entropy"
# the default grid of a global threshold, as "aggressiveness" in (0, 1]: normalised entropy itself,
# scaled to nats for ``entropy`` and to 1 - a (1 - 1/C) for ``max_prob``. Fine everywhere: the fixed
# sequence pays nothing for more thresholds
DEFAULT_GRID = tuple(round(0.005 * i, 3) for i in range(1, 201))
# the per-exit rule's levels: the fit target's rate at the last exit plus these offsets (those of
# calibrate.ALPHA_OFFSETS and finer steps just under it, where a small D is decided)
LEVEL_OFFSETS = tuple(sorted(set(ALPHA_OFFSETS) | {-0.002, -0.005, -0.015, -0.025}))


# ---------------------------------------------------------------------------------------------
# the binomial arithmetic (our own: the plugin does not depend on scipy)

def _log_pmf(n: int, p: float) -> np.ndarray:
    """``log P(Binomial(n, p) = k)`` for ``k = 0 .. n``: ``log C(n, k) + k log p + (n - k) log(1 - p)``,
    with ``log C(n, k) = lgamma(n + 1) - lgamma(k + 1) - lgamma(n - k + 1)`` in float64."""
    k = torch.arange(n + 1, dtype=torch.float64)
    log_choose = torch.lgamma(torch.tensor(n + 1.0, dtype=torch.float64)) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
    if p <= 0.0:
        out = torch.full((n + 1,), -math.inf, dtype=torch.float64)
        out[0] = 0.0
        return out.numpy()
    if p >= 1.0:
        out = torch.full((n + 1,), -math.inf, dtype=torch.float64)
        out[n] = 0.0
        return out.numpy()
    return (log_choose + k * math.log(p) + (n - k) * math.log1p(-p)).numpy()


@lru_cache(maxsize=256)
def binomial_cdf_table(n: int, p: float) -> np.ndarray:
    """``P(Binomial(n, p) <= k)`` for ``k = 0 .. n``, summed in log space (``logaddexp``), so that
    tails far below 1e-300 of the largest term stay exact in relative terms; capped at 1. Cached
    (read-only): a simulation asks for the same ``(n, p)`` thousands of times."""
    if n < 0:
        raise ValueError(f"n={n} is negative")
    table = np.minimum(np.exp(np.logaddexp.accumulate(_log_pmf(n, p))), 1.0)
    table.flags.writeable = False
    return table


def binomial_cdf(k: int, n: int, p: float) -> float:
    """``P(Binomial(n, p) <= k) = sum_{i <= k} C(n, i) p^i (1 - p)^(n - i)``."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return float(np.minimum(np.exp(np.logaddexp.reduce(_log_pmf(n, p)[: k + 1])), 1.0))


def upper_bound(k: int, n: int, confidence: float) -> float:
    """The Clopper-Pearson upper confidence bound of a binomial rate from ``k`` events in ``n``
    trials: the ``p`` solving ``P(Binomial(n, p) <= k) = 1 - confidence`` (1 when ``k = n``), found
    by bisection (the left side falls strictly as ``p`` grows), to 1e-15. With probability at
    least ``confidence``, the true rate is at most this bound. ``k = 0`` has the closed form
    ``1 - (1 - confidence)^(1 / n)``."""
    if n < 1:
        raise ValueError("a binomial bound needs at least one example")
    if k >= n:
        return 1.0
    delta = 1.0 - confidence
    lo, hi = k / n, 1.0  # cdf(lo) >= delta (about 1/2 or more at the mean), cdf(1) = 0
    while hi - lo > 1e-15:
        mid = (lo + hi) / 2
        if binomial_cdf(k, n, mid) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def p_values(counts: np.ndarray, n: int, level: float) -> np.ndarray:
    """The p-value of ``H: R > level`` for each loss count of ``counts`` (any shape) over ``n``
    examples: ``P(Binomial(n, level) <= count)``, read from one cdf table."""
    return binomial_cdf_table(n, level)[np.asarray(counts, dtype=np.int64)]


def fixed_sequence(pvalues: np.ndarray, delta: float) -> np.ndarray:
    """How many hypotheses of the sequence are rejected, along the last axis: the length of the
    leading run of ``p <= delta`` (the test stops at the first ``p > delta``)."""
    fails = np.asarray(pvalues) > delta
    return np.where(fails.any(-1), fails.argmax(-1), fails.shape[-1])


def examples_needed(rate: float, level: float, confidence: float, start: int = 1) -> Optional[int]:
    """About how many examples a threshold with loss rate ``rate`` needs for its upper bound to
    reach ``level`` (the count ``round(rate n)``); None when ``rate >= level``: no number does."""
    if rate >= level:
        return None
    ok = lambda n: upper_bound(int(round(rate * n)), n, confidence) <= level  # noqa: E731
    hi = max(1, start)
    while not ok(hi):
        hi *= 2
    lo = hi // 2
    while lo + 1 < hi:  # ok(hi); the bound falls with n, up to the rounding of the count
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


# ---------------------------------------------------------------------------------------------
# the candidates: what is swept per policy, in the order the sequence tests them

@dataclass(frozen=True)
class Candidate:
    """One setting of an exit policy: ``value`` is what the sweep varies (the threshold; the
    patience for ``patience``; the accuracy level for ``per_exit_entropy``)."""

    policy: str
    value: float
    threshold: Optional[float] = None
    patience: int = 1
    thresholds: Tuple[float, ...] = ()

    def settings(self) -> Dict:
        """Keyword arguments of ``EarlyExitClassifier.predict`` that deploy this setting."""
        out = {"exit_policy": self.policy, "patience": self.patience}
        if self.threshold is not None:
            out["threshold"] = self.threshold
        if self.thresholds:
            out["thresholds"] = tuple(self.thresholds)
        return out

    def build(self, num_classes: int):
        return build_policy(self.policy, num_classes, self.threshold, self.patience, self.thresholds)


def knob(policy: str) -> str:
    """What a sweep of ``policy`` varies: ``"threshold"``, ``"patience"`` or ``"level"``; a policy
    with nothing to vary, or for regression, is a :class:`UsageError`."""
    if policy not in POLICY_REGISTRY:
        build_policy(policy, 2)  # the registry's own one-line refusal
    cls = POLICY_REGISTRY[policy]
    if "classification" not in cls.targets or policy == "none":
        raise UsageError(f"exit policy {policy!r} cannot be calibrated for a guaranteed accuracy drop",
                         "use a classification policy with a threshold: " + ", ".join(calibratable()))
    if cls.uses_thresholds:
        return "level"
    if cls(2).threshold_range() is None:
        return "patience" if cls.uses_patience else "none"
    return "threshold"


def calibratable() -> List[str]:
    return sorted(n for n, c in POLICY_REGISTRY.items() if n != "none" and "classification" in c.targets)


def ordered(policy: str, values: Sequence[float]) -> List[float]:
    """``values`` from the most conservative to the most aggressive: by increasing threshold when a
    higher one lets more samples leave (``exits_more_as_threshold_grows``), else decreasing; by
    decreasing patience or level. The order follows from the policy, never from data."""
    kind = knob(policy)
    rising = kind == "threshold" and POLICY_REGISTRY[policy].exits_more_as_threshold_grows
    return sorted(set(float(v) for v in values), reverse=not rising)


def default_values(policy: str, num_classes: int, num_exits: int) -> List[float]:
    """The default sweep of ``policy``, most conservative first (:data:`DEFAULT_GRID` on the
    policy's scale; patience ``E - 1 .. 1``)."""
    kind = knob(policy)
    if kind == "patience":
        return ordered(policy, range(1, max(num_exits, 2)))
    if kind == "level":
        raise ValueError("the per-exit rule's levels come from its fit data: per_exit_candidates")
    if policy == "entropy":
        grid = [a * math.log(num_classes) for a in DEFAULT_GRID]
    elif policy == "max_prob":
        grid = [1.0 - a * (1.0 - 1.0 / num_classes) for a in DEFAULT_GRID]
    else:
        grid = list(DEFAULT_GRID)
    return ordered(policy, grid)


def candidates(policy: str, values: Sequence[float], num_classes: int, patience: int = 1) -> List[Candidate]:
    """The candidates of a global-threshold or patience policy, in sequence order, each checked by
    :func:`~leebert_plugin.exits.policies.build_policy` (one line for a value out of range)."""
    kind = knob(policy)
    if kind == "level":
        raise ValueError("the per-exit rule's candidates come from per_exit_candidates")
    out = []
    for v in ordered(policy, values):
        if kind == "patience":
            if v != int(v):
                raise UsageError(f"patience {v:g} is not a whole number", "sweep whole patiences, e.g. 5 4 3 2 1")
            c = Candidate(policy, v, patience=int(v))
        else:
            c = Candidate(policy, v, threshold=v, patience=patience)
        c.build(num_classes)
        out.append(c)
    return out


def full_predictions(t: ExitTrace) -> torch.Tensor:
    """The full-depth prediction (the last exit's argmax) of every sample of ``t``."""
    return t.logits[-1].argmax(-1)


def fit_targets(t: ExitTrace, risk: str) -> ExitTrace:
    """``t`` with the targets the per-exit rule is fitted to: the labels for ``accuracy_drop``, the
    full-depth predictions for ``disagreement`` (its level is then an agreement level)."""
    if risk == "accuracy_drop":
        return t
    return ExitTrace(t.logits, full_predictions(t), t.lengths, t.exit_layers, t.num_layers, t.positive, t.gated,
                     t.ids, t.layer_flops, t.exit_flops)


def levels(t: ExitTrace) -> List[float]:
    """The per-exit levels fitted on ``t`` (whose targets are :func:`fit_targets`'): the last
    exit's rate on them plus :data:`LEVEL_OFFSETS`, in [0, 1], highest (most conservative) first."""
    return levels_from_rate(float((t.logits[-1].argmax(-1) == t.targets).double().mean()))


def levels_from_rate(last: float) -> List[float]:
    """:func:`levels` from the last exit's rate ``last``."""
    return sorted({round(min(1.0, max(0.0, last + d)), 6) for d in LEVEL_OFFSETS}, reverse=True)


def per_exit_candidates(fit: ExitTrace, risk: str, values: Sequence[float] = ()) -> List[Candidate]:
    """The per-exit rule's candidates fitted on ``fit`` (never on the examples they are tested on):
    one per level, highest first (``values`` when given, else :func:`levels`)."""
    target = fit_targets(fit, risk)
    chosen = sorted(set(float(v) for v in values), reverse=True) if values else levels(target)
    bad = [v for v in chosen if not 0.0 <= v <= 1.0]
    if bad:
        raise UsageError(f"per-exit level {bad[0]:g} is out of range", "use accuracy levels in [0, 1]")
    taus = thresholds_for_levels(*exit_scores(target), chosen)
    return [Candidate(PER_EXIT, a, thresholds=tuple(float(x) for x in row)) for a, row in zip(chosen, taus)]


def split_fit_test(n: int, fit_fraction: float = 0.5, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of ``n`` examples into a fit part and a test part (indices)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    cut = int(round(n * fit_fraction))
    return order[:cut], order[cut:]


def subset(t: ExitTrace, index: torch.Tensor) -> ExitTrace:
    """The samples ``index`` of ``t``."""
    pick = lambda x: None if x is None else x[index]  # noqa: E731
    return ExitTrace(t.logits[:, index], t.targets[index], t.lengths[index], t.exit_layers, t.num_layers, t.positive,
                     t.gated, pick(t.ids), pick(t.layer_flops), pick(t.exit_flops))


# ---------------------------------------------------------------------------------------------
# the losses and the choice

def losses(pred: torch.Tensor, full: torch.Tensor, targets: Optional[torch.Tensor], risk: str) -> torch.Tensor:
    """Per-example loss in {0, 1} of the predictions ``pred`` (any leading shape, samples last):
    ``pred != full`` for ``disagreement``; ``full right and pred wrong`` for ``accuracy_drop``."""
    if risk == "disagreement":
        return pred != full
    if risk == "accuracy_drop":
        if targets is None:
            raise UsageError("risk 'accuracy_drop' needs the labels", "pass the labels, or use risk='disagreement'")
        return (full == targets) & (pred != targets)
    raise UsageError(f"unknown risk {risk!r}", f"use one of {', '.join(RISKS)}")


@dataclass
class Row:
    """One candidate tested: its losses, p-value, bound and speed-ups on the calibration examples."""

    candidate: Candidate
    losses: int
    n: int
    confidence: float
    p_value: float
    passed: bool
    layer_speedup: float
    flops_speedup: Optional[float] = None

    @property
    def risk(self) -> float:
        return self.losses / self.n

    @cached_property
    def bound(self) -> float:
        """The Clopper-Pearson upper bound of the risk (computed when read: the decision uses the
        p-value, which is at most ``1 - confidence`` exactly when this is at most D)."""
        return upper_bound(self.losses, self.n, self.confidence)


@dataclass
class Certified:
    """The outcome of a calibration: ``chosen`` is None when no candidate passed (``message`` says so,
    and how many examples would be needed), and :meth:`settings` then deploys full depth."""

    policy: str
    risk: str
    level: float  # D, as a fraction (0.01: one accuracy point)
    confidence: float
    n: int  # calibration examples the test ran on
    rows: List[Row]  # in sequence order
    chosen: Optional[Row]
    message: str
    fit_examples: int = 0  # examples the per-exit thresholds were fitted on (not tested on)
    extra: Dict = field(default_factory=dict)

    @property
    def threshold(self) -> Optional[float]:
        return None if self.chosen is None else self.chosen.candidate.value

    @property
    def bound(self) -> Optional[float]:
        return None if self.chosen is None else self.chosen.bound

    @property
    def speedup(self) -> float:
        return 1.0 if self.chosen is None else self.chosen.layer_speedup

    def settings(self) -> Dict:
        """``predict``'s keyword arguments for the chosen setting; full depth when none passed."""
        return {"exit_policy": "none"} if self.chosen is None else self.chosen.candidate.settings()


def check_level(level: float, confidence: float, name: str = "max_drop", top: float = 1.0,
                hint: str = "a fraction of the examples: 0.01 allows one accuracy point") -> None:
    """D strictly between 0 and ``top`` (1 for a fraction, 100 for points), confidence strictly
    between 0 and 1; else a :class:`UsageError` naming ``name`` and ``hint``."""
    for label, v, high, fix in ((name, level, top, hint), ("confidence", confidence, 1.0, "a probability such as 0.95 or 0.9")):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or not 0.0 < float(v) < high:
            raise UsageError(f"{label}={v!r} is not strictly between 0 and {high:g}", f"pass {fix}")


def choose(candidates_: Sequence[Candidate], loss: torch.Tensor, layer_speedups: Sequence[float],
           level: float, confidence: float, risk: str, flops_speedups: Optional[Sequence[float]] = None,
           fit_examples: int = 0) -> Certified:
    """The fixed-sequence test of ``candidates_`` (in sequence order) whose per-example losses are
    the rows of ``loss`` (candidates x examples), then the fastest candidate passed (ties: the
    earlier, more conservative one)."""
    check_level(level, confidence)
    if len(candidates_) == 0:
        raise UsageError("no threshold to test", "pass at least one threshold")
    n = int(loss.size(1))
    if n < 1:
        raise UsageError("no calibration examples", "pass dev examples to calibrate on")
    counts = loss.sum(1).numpy()
    pv = p_values(counts, n, level)
    passed = int(fixed_sequence(pv, 1.0 - confidence))
    rows = [Row(c, int(k), n, confidence, float(p), i < passed, float(s),
                None if flops_speedups is None else float(flops_speedups[i]))
            for i, (c, k, p, s) in enumerate(zip(candidates_, counts, pv, layer_speedups))]
    ok = rows[:passed]
    chosen = max(ok, key=lambda r: (r.layer_speedup, -rows.index(r))) if ok else None
    policy = candidates_[0].policy
    if chosen is None:
        first = rows[0]
        need = examples_needed(first.risk, level, confidence, start=n)
        more = (f"at its rate {100 * first.risk:.2f}% about {need} calibration examples would be needed"
                if need is not None else "its rate is already above D: no number of examples certifies it; "
                                         "start the grid nearer full depth or allow a larger drop")
        message = (f"no {policy} setting passes: the most conservative ({first.candidate.value:g}) has bound "
                   f"{100 * first.bound:.2f}% > D = {100 * level:g}% on {n} examples; {more}")
    else:
        message = (f"{policy} at {knob(policy)} {chosen.candidate.value:g}: {risk} at most {100 * level:g}% with "
                   f"{100 * confidence:g}% confidence (upper bound {100 * chosen.bound:.2f}%, observed "
                   f"{100 * chosen.risk:.2f}% on {n} examples), {chosen.layer_speedup:.2f}x layer speed-up"
                   + (f", {chosen.flops_speedup:.2f}x FLOPs" if chosen.flops_speedup is not None else ""))
    return Certified(policy, risk, level, confidence, n, rows, chosen, message, fit_examples)


def trace_outcomes(t: ExitTrace, cands: Sequence[Candidate], risk: str) -> Tuple[torch.Tensor, List[float], Optional[List[float]]]:
    """Per candidate, replayed on ``t``: the losses (candidates x examples), layer and FLOPs speed-ups."""
    C = t.logits.size(-1)
    full = full_predictions(t)
    rows, speed, flops = [], [], []
    has_flops = t.layer_flops is not None and t.exit_flops is not None
    for c in cands:
        exit_at = replay(c.build(C), t)
        rows.append(losses(predictions(t, exit_at), full, t.targets, risk))
        speed.append(layer_speedup(t, exit_at))
        if has_flops:
            flops.append(flops_speedup(t, exit_at))
    return torch.stack(rows), speed, (flops if has_flops else None)


def certify_trace(t: ExitTrace, policy: str, level: float, confidence: float, risk: str = "disagreement",
                  values: Sequence[float] = (), patience: int = 1, fit_fraction: float = 0.5,
                  seed: int = 0) -> Certified:
    """Calibrate ``policy`` on the trace ``t`` (every exit's logits over the calibration examples; no
    skip gates): the candidates ``values`` (default: :func:`default_values`, or the per-exit rule's
    :func:`levels`) tested in sequence for ``risk <= level`` at ``confidence``. The per-exit rule is
    fitted on a ``fit_fraction`` of the examples and tested on the rest (:func:`split_fit_test`)."""
    check_level(level, confidence)
    if risk not in RISKS:
        raise UsageError(f"unknown risk {risk!r}", f"use one of {', '.join(RISKS)}")
    if t.gated:
        raise UsageError("a skip-gated model's exits cannot be replayed from one trace",
                         "calibrate it from real passes (scripts/sweep_thresholds.py runs one per threshold)")
    C, E = t.logits.size(-1), t.logits.size(0)
    if knob(policy) == "level":
        fit_idx, test_idx = split_fit_test(t.logits.size(1), fit_fraction, seed)
        if len(fit_idx) == 0 or len(test_idx) == 0:
            raise UsageError(f"{t.logits.size(1)} examples cannot be split into a fit and a test part",
                             "pass more calibration examples")
        cands = per_exit_candidates(subset(t, fit_idx), risk, values)
        test = subset(t, test_idx)
        loss, speed, flops = trace_outcomes(test, cands, risk)
        return choose(cands, loss, speed, level, confidence, risk, flops, fit_examples=len(fit_idx))
    cands = candidates(policy, values or default_values(policy, C, E), C, patience)
    loss, speed, flops = trace_outcomes(t, cands, risk)
    return choose(cands, loss, speed, level, confidence, risk, flops)
