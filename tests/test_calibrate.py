"""Calibration on dev (leebert_plugin.exits.calibrate): the per-exit rule's thresholds and the global
threshold and the per-exit level for a speed-up, on synthetic traces."""
import math

import pytest
import torch

from leebert_plugin.exits.calibrate import (
    ALPHA_OFFSETS, alpha_for_speedup, alpha_grid, per_exit_thresholds, threshold_for_speedup,
)
from leebert_plugin.exits.evaluate import ExitTrace, layer_speedup, replay
from leebert_plugin.exits.policies import build_policy, entropy


def synthetic_trace(n=400, exits=4, classes=3, seed=0, gated=False):
    """Exits that get better with depth, with confidence loosely tied to being right."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(classes, (n,), generator=g)
    logits = []
    for k in range(exits):
        signal = torch.nn.functional.one_hot(targets, classes).float() * (0.5 + k)
        logits.append(signal + 1.5 * torch.randn(n, classes, generator=g))
    return ExitTrace(torch.stack(logits), targets, torch.full((n,), 8), [1, 2, 3, 4][:exits], exits, 1, gated)


def leaving(t, taus):
    exit_at = replay(build_policy("per_exit_entropy", t.logits.size(-1), thresholds=taus), t)
    right = t.logits.argmax(-1) == t.targets
    return exit_at, right


@pytest.mark.parametrize("alpha", [0.5, 0.7, 0.9, 1.0])
def test_every_exit_but_the_last_lets_go_only_what_it_gets_right_alpha_of_the_time(alpha):
    t = synthetic_trace()
    taus = per_exit_thresholds(t, alpha)
    assert len(taus) == 3 and all(0.0 <= tau <= 1.0 for tau in taus)
    exit_at, right = leaving(t, taus)
    h = entropy(t.logits.reshape(-1, 3)).view(4, -1) / math.log(3)
    for k in range(3):
        gone = exit_at == k
        if gone.any():
            assert right[k][gone].double().mean() >= alpha - 1e-12
        # the threshold is the largest that holds: letting the next running sample go too breaks it
        running = exit_at >= k
        later = running & ~gone
        if later.any():
            nxt = h[k][later].min()
            wider = running & (h[k] <= nxt)
            assert right[k][wider].double().mean() < alpha


def test_a_higher_level_lets_fewer_go_early_and_levels_follow_the_last_exit():
    t = synthetic_trace(seed=1)
    mean_exit = [float(leaving(t, per_exit_thresholds(t, a))[0].float().mean()) for a in (0.5, 0.8, 0.95, 1.0)]
    assert mean_exit == sorted(mean_exit) and mean_exit[0] < mean_exit[-1]
    last = float((t.logits[-1].argmax(-1) == t.targets).double().mean())
    grid = alpha_grid(t)
    assert grid == sorted(set(grid)) and all(0.0 <= a <= 1.0 for a in grid)
    assert round(last, 6) in grid and len(grid) <= len(ALPHA_OFFSETS)


def test_calibration_refuses_a_gated_trace():
    with pytest.raises(ValueError, match="skip-gated"):
        per_exit_thresholds(synthetic_trace(gated=True), 0.9)


def global_speedup(t, tau):
    return layer_speedup(t, replay(build_policy("normalized_entropy", t.logits.size(-1), tau, 1), t))


def per_exit_speedup(t, alpha):
    return layer_speedup(t, leaving(t, per_exit_thresholds(t, alpha))[0])


@pytest.mark.parametrize("target", [1.1, 1.5, 2.0, 3.0])
def test_the_global_threshold_for_a_speedup_is_the_smallest_that_reaches_it(target):
    t = synthetic_trace(seed=2)
    tau = threshold_for_speedup(t, target)
    assert tau is not None and 0.0 < tau <= 1.0
    assert global_speedup(t, tau) >= target
    # the next lower cut (the entropy value just under tau no longer leaves) is too slow
    h = entropy(t.logits[:-1].reshape(-1, 3)) / math.log(3)
    below = h[h < tau].max()
    assert global_speedup(t, float(below)) < target
    # another measure of the speed-up (FLOPs, say) is honoured the same way: here 0.8 x the layers'
    slower = threshold_for_speedup(t, target, lambda exit_at: 0.8 * layer_speedup(t, exit_at))
    assert slower > tau and 0.8 * global_speedup(t, slower) >= target > 0.8 * global_speedup(t, float(h[h < slower].max()))


@pytest.mark.parametrize("target", [1.1, 1.5, 2.0, 3.0])
def test_the_per_exit_level_for_a_speedup_is_the_highest_that_reaches_it(target):
    t = synthetic_trace(seed=2)
    alpha = alpha_for_speedup(t, target)
    assert alpha is not None and 0.0 <= alpha <= 1.0
    assert per_exit_speedup(t, alpha) >= target
    assert alpha == 1.0 or per_exit_speedup(t, alpha + 2 ** -20) < target  # a level higher is too slow
    assert alpha_for_speedup(t, target, lambda exit_at: 0.8 * layer_speedup(t, exit_at)) < alpha


def test_an_unreachable_speedup_has_no_point_and_gated_or_single_exit_traces_get_none():
    t = synthetic_trace(seed=2)
    for calibrate in (threshold_for_speedup, alpha_for_speedup):
        assert calibrate(t, 4.01) is None  # exits at layers 1-4: at most 4x
        assert calibrate(t, 4.0) is not None  # everyone at the first exit
        assert calibrate(synthetic_trace(exits=1), 1.5) is None  # one exit: nothing to leave early by
        with pytest.raises(ValueError, match="skip-gated"):
            calibrate(synthetic_trace(gated=True), 2.0)
