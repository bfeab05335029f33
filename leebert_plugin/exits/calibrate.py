"""Per-exit thresholds calibrated on dev: the ``per_exit_entropy`` rule, beyond the papers' one threshold.

One global threshold asks every exit for the same confidence. A shallow exit's confident answers
are wrong more often than a deep exit's, so the same threshold lets too many wrong answers go
early, or keeps too many right ones for the deep layers. Here the confidence asked of each exit
follows from one accuracy level ``alpha`` instead:

    tau_k = max { tau : acc_k(tau) >= alpha },   acc_k(tau) = share of S_k(tau) right at exit k,
    S_k(tau) = { dev samples still running at exit k with H(p_k) / ln C < tau },

exit by exit, in order (the samples exit ``k`` lets go do not reach exit ``k + 1``). When no cut
reaches ``alpha``, ``tau_k = 0``: nobody leaves there. Sweeping ``alpha`` traces a front, and the
point for a target speed-up is chosen on dev, as a global threshold is
(:mod:`leebert_plugin.benchmark.choice`). The levels are the last exit's dev accuracy ``A`` plus
the offsets of :data:`ALPHA_OFFSETS` (:func:`alpha_grid`): what a level means depends on how good
the model is (0.8 lets every sample go at the first exit of a 75% model, and almost none of a 95%
one). Calibration and choice both read dev only; test is never seen.

A fixed grid leaves gaps (global thresholds 0.95 -> 1.98x and 0.96 -> 2.20x in one run), so the
point chosen "at 2x" can run much faster than asked, and exits too unsure for the grid (20
classes) reach no fast point at all. So both rules also get points calibrated for a speed-up:
:func:`threshold_for_speedup`, the global threshold at which dev runs at a given speed-up, and
:func:`alpha_for_speedup`, the per-exit level that does. The benchmark asks both for the same
speed-ups, so that neither rule has a point made for a compared speed-up that the other lacks.
"""
import math
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch

from leebert_plugin.exits.evaluate import ExitTrace, layer_speedup, replay
from leebert_plugin.exits.policies import build_policy, entropy

ALPHA_OFFSETS = (-0.2, -0.15, -0.1, -0.08, -0.06, -0.04, -0.03, -0.02, -0.01, 0.0,
                 0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.25)


def alpha_grid(t: ExitTrace) -> List[float]:
    """The accuracy levels to calibrate for: the last exit's accuracy on ``t`` plus each offset, in
    [0, 1], without repeats, increasing."""
    last = float((t.logits[-1].argmax(-1) == t.targets).double().mean())
    return sorted({round(min(1.0, max(0.0, last + d)), 6) for d in ALPHA_OFFSETS})


def per_exit_thresholds(t: ExitTrace, alpha: float) -> List[float]:
    """``tau_1 .. tau_{E-1}`` (normalised entropy, in [0, 1]) for accuracy level ``alpha`` on the
    trace ``t`` (every exit's logits over dev, at full depth; no skip gates)."""
    return thresholds_from_scores(*exit_scores(t), alpha)


def exit_scores(t: ExitTrace) -> Tuple[torch.Tensor, torch.Tensor]:
    """What the per-exit calibration reads of ``t``: every exit's ``H(p) / ln C`` and whether its
    answer is right (both E x N); computed once, they serve every level."""
    if t.gated:
        raise ValueError("per-exit calibration reads every exit's logits: not for skip-gated models")
    exits, n, classes = t.logits.shape
    h = entropy(t.logits.reshape(-1, classes)).view(exits, n) / math.log(classes)
    return h, t.logits.argmax(-1) == t.targets.unsqueeze(0)


def thresholds_from_scores(h: torch.Tensor, right: torch.Tensor, alpha: float) -> List[float]:
    """:func:`per_exit_thresholds` from :func:`exit_scores`' ``h`` and ``right`` (E x N)."""
    exits, n = h.shape
    running = torch.ones(n, dtype=torch.bool)
    taus: List[float] = []
    for k in range(exits - 1):
        hk, rk = h[k][running], right[k][running]
        order = torch.argsort(hk)
        hs, rs = hk[order], rk[order].double()
        acc = rs.cumsum(0) / torch.arange(1, len(hs) + 1, dtype=torch.float64)
        cut_ok = torch.cat([hs[1:] > hs[:-1], torch.ones(1, dtype=torch.bool)])  # no cut inside a tie
        ok = torch.nonzero((acc >= alpha - 1e-12) & cut_ok).view(-1)
        if len(ok) == 0:
            tau = 0.0
        else:
            j = int(ok[-1])  # the samples hs[0..j] leave
            tau = 1.0 if j == len(hs) - 1 else float(hs[j] + hs[j + 1]) / 2
        taus.append(tau)
        running &= ~(h[k] < tau)
    return taus


def thresholds_for_levels(h: torch.Tensor, right: torch.Tensor, alphas) -> np.ndarray:
    """:func:`thresholds_from_scores` for every level of ``alphas`` at once (levels x E-1, the
    same values): each exit's scores are sorted once, and each level's running samples are a mask
    over that order, so ``acc_k(tau)`` is a masked cumulative sum. What a simulation that refits the
    rule thousands of times needs (:mod:`leebert_plugin.benchmark.risk_validity`)."""
    hh, rr = h.numpy(), right.numpy()
    alphas = np.asarray(alphas, dtype=np.float64)
    exits, n = hh.shape
    L = len(alphas)
    running = np.ones((L, n), dtype=bool)
    taus = np.zeros((L, exits - 1))
    positions = np.arange(n)
    for k in range(exits - 1):
        order = np.argsort(hh[k], kind="stable")
        hs, rs = hh[k][order], rr[k][order]
        run = running[:, order]
        count = np.cumsum(run, 1)
        acc = np.cumsum(run & rs, 1) / np.maximum(count, 1)
        # the next running position after each position (n: none)
        at = np.where(run, positions, n)
        nxt = np.concatenate([np.minimum.accumulate(at[:, ::-1], 1)[:, ::-1][:, 1:], np.full((L, 1), n)], 1)
        h_next = np.where(nxt < n, hs[np.minimum(nxt, n - 1)], np.inf)
        ok = run & (acc >= alphas[:, None] - 1e-12) & ((nxt == n) | (h_next > hs[None, :]))
        any_ok = ok.any(1)
        j = n - 1 - ok[:, ::-1].argmax(1)  # the last ok position
        jn = nxt[np.arange(L), j]
        mid = (hs[j] + hs[np.minimum(jn, n - 1)]).astype(np.float64) / 2  # summed in the scores' precision
        tau = np.where(~any_ok, 0.0, np.where(jn == n, 1.0, mid))
        taus[:, k] = tau
        running &= ~(hh[k][None, :] < tau.astype(hh.dtype)[:, None])
    return taus


Speed = Callable[[torch.Tensor], float]  # a speed-up of the samples leaving at ``exit_at``


def _first_fast_enough(n: int, candidate: Callable[[int], float],
                       fast_enough: Callable[[float], bool]) -> Optional[float]:
    """The first of the ``n`` values ``candidate(0) .. candidate(n - 1)`` (ordered from slow to
    fast) that is ``fast_enough``, by bisection; None when even the last is not. Where the
    speed-up is not monotone along them, the answer is still fast enough, maybe not the first."""
    if n < 1 or not fast_enough(candidate(n - 1)):
        return None
    lo, hi = 0, n - 1  # candidate(hi) is fast enough; none before lo is
    while lo < hi:
        mid = (lo + hi) // 2
        if fast_enough(candidate(mid)):
            hi = mid
        else:
            lo = mid + 1
    return candidate(lo)


def threshold_for_speedup(t: ExitTrace, target: float, speedup: Optional[Speed] = None) -> Optional[float]:
    """The smallest global normalised-entropy threshold whose replay on ``t`` runs at least
    ``target`` x fast (``speedup(exit_at)``, by default the layer speed-up); None if none does.

    A sample leaves at the first exit ``k < E - 1`` with ``H(p_k) / ln C < tau``, so every sample
    leaves no later as ``tau`` grows, and the layer and FLOPs speed-ups are monotone in ``tau``.
    They change only where ``tau`` passes one of the values ``u_1 < .. < u_m`` of ``H / ln C`` at
    those exits: the candidates are the midpoints ``(u_i + u_{i+1}) / 2`` (and 1 past ``u_m``).
    The smallest that reaches ``target`` keeps the most samples for the deeper, surer exits.
    """
    if t.gated:
        raise ValueError("a global threshold is calibrated by replay: not for skip-gated models")
    exits, _, classes = t.logits.shape
    if exits < 2:
        return None
    speedup = speedup or (lambda exit_at: layer_speedup(t, exit_at))
    u = torch.unique(entropy(t.logits[:-1].reshape(-1, classes)) / math.log(classes))  # sorted
    u = u[u < 1.0]
    candidates = [float(a + b) / 2 for a, b in zip(u[:-1], u[1:])] + [1.0]
    return _first_fast_enough(len(candidates), candidates.__getitem__, lambda tau: speedup(replay(
        build_policy("normalized_entropy", classes, tau, 1), t)) >= target - 1e-9)


def alpha_for_speedup(t: ExitTrace, target: float, speedup: Optional[Speed] = None,
                      steps: int = 30) -> Optional[float]:
    """The highest accuracy level ``alpha`` whose per-exit thresholds make ``t`` run at least
    ``target`` x fast, to ``2^-steps``; None if none does (alpha 0 lets every sample go at the
    first exit, the fastest the rule can be).

    The per-exit rule's counterpart of :func:`threshold_for_speedup`, so that at the speed-ups
    the benchmark compares neither rule gets a point made for it that the other lacks. A higher
    level asks more of every exit, so the speed-up falls as ``alpha`` grows (not strictly: the
    samples one exit keeps change what the next one sees); the bisection keeps its answer fast
    enough either way."""
    if t.logits.size(0) < 2:
        return None
    speedup = speedup or (lambda exit_at: layer_speedup(t, exit_at))
    classes = t.logits.size(-1)
    return _first_fast_enough(2 ** steps + 1, lambda i: 1.0 - i / 2 ** steps, lambda alpha: speedup(replay(
        build_policy("per_exit_entropy", classes, thresholds=per_exit_thresholds(t, alpha)), t)) >= target - 1e-9)
