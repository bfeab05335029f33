"""Risk-controlled exit thresholds: the binomial arithmetic against exact values, the fixed-sequence
test, and the guarantee itself on synthetic exit traces whose true risk per threshold is known."""
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from leebert_plugin.errors import UsageError
from leebert_plugin.exits import risk_control as rc
from leebert_plugin.exits.evaluate import ExitTrace
from leebert_plugin.exits.policies import entropy


pytestmark = pytest.mark.usefixtures("one_thread")


def exact_cdf(k: int, n: int, p: Fraction) -> Fraction:
    """P(Binomial(n, p) <= k) in exact rational arithmetic."""
    return sum(Fraction(math.comb(n, i)) * p ** i * (1 - p) ** (n - i) for i in range(k + 1))


@pytest.mark.parametrize("n, k, p", [(10, 3, Fraction(1, 5)), (1, 0, Fraction(1, 3)), (50, 0, Fraction(1, 100)),
                                     (50, 49, Fraction(9, 10)), (300, 7, Fraction(1, 100)), (2000, 5, Fraction(1, 20)),
                                     (2000, 1000, Fraction(1, 2)), (1281, 12, Fraction(1, 50))])
def test_binomial_cdf_equals_the_exact_sum(n, k, p):
    exact = exact_cdf(k, n, p)
    assert rc.binomial_cdf(k, n, float(p)) == pytest.approx(float(exact), rel=1e-9, abs=1e-300)
    assert rc.binomial_cdf_table(n, float(p))[k] == pytest.approx(float(exact), rel=1e-9, abs=1e-300)


def test_a_far_tail_keeps_its_relative_precision():
    # P(Bin(2000, 1/20) <= 5) is about 1e-35: a sum of plain floats starting from 1 would lose it
    exact = exact_cdf(5, 2000, Fraction(1, 20))
    assert float(exact) < 1e-30
    assert rc.binomial_cdf(5, 2000, 0.05) == pytest.approx(float(exact), rel=1e-9)


def test_cdf_edges():
    assert rc.binomial_cdf(-1, 10, 0.3) == 0.0
    assert rc.binomial_cdf(10, 10, 0.3) == 1.0
    assert rc.binomial_cdf(0, 10, 0.0) == 1.0
    assert rc.binomial_cdf(9, 10, 1.0) == 0.0
    assert rc.binomial_cdf_table(4, 0.5).tolist() == pytest.approx([1 / 16, 5 / 16, 11 / 16, 15 / 16, 1.0])


@pytest.mark.parametrize("k, n, confidence", [(0, 10, 0.95), (1, 10, 0.95), (3, 20, 0.9), (12, 1281, 0.95),
                                              (40, 400, 0.99), (9, 10, 0.95)])
def test_clopper_pearson_bound_solves_the_exact_tail_equation(k, n, confidence):
    u = rc.upper_bound(k, n, confidence)
    delta = 1 - confidence
    # the exact tail at the bound is delta; a hair below it the tail is above delta, a hair above below
    assert float(exact_cdf(k, n, Fraction(u))) == pytest.approx(delta, rel=1e-9)
    assert exact_cdf(k, n, Fraction(u) - Fraction(1, 10 ** 6)) > delta > exact_cdf(k, n, Fraction(u) + Fraction(1, 10 ** 6))


def test_clopper_pearson_closed_forms_and_order():
    assert rc.upper_bound(0, 100, 0.95) == pytest.approx(1 - 0.05 ** (1 / 100), rel=1e-12)
    assert rc.upper_bound(0, 1, 0.95) == pytest.approx(0.95, rel=1e-12)  # 1 - p = 0.05
    assert rc.upper_bound(1, 1, 0.95) == 1.0
    # k = n - 1: P(X <= n - 1) = 1 - p^n = delta  ->  p = (1 - delta)^(1 / n)
    assert rc.upper_bound(9, 10, 0.95) == pytest.approx(0.95 ** 0.1, rel=1e-12)
    bounds = [rc.upper_bound(k, 200, 0.95) for k in range(0, 30)]
    assert all(a < b for a, b in zip(bounds, bounds[1:]))
    assert all(b > k / 200 for k, b in enumerate(bounds))
    assert rc.upper_bound(5, 200, 0.99) > rc.upper_bound(5, 200, 0.95) > rc.upper_bound(5, 200, 0.8)


def test_the_p_value_passes_exactly_when_the_bound_is_within_d():
    n, level, confidence = 500, 0.03, 0.95
    pv = rc.p_values(np.arange(40), n, level)
    for k in range(40):
        assert (pv[k] <= 1 - confidence) == (rc.upper_bound(k, n, confidence) <= level), k


def test_fixed_sequence_stops_at_the_first_failure():
    assert rc.fixed_sequence(np.array([0.01, 0.2, 0.01]), 0.05) == 1
    assert rc.fixed_sequence(np.array([0.01, 0.02, 0.04]), 0.05) == 3
    assert rc.fixed_sequence(np.array([0.06, 0.01]), 0.05) == 0
    assert rc.fixed_sequence(np.array([[0.01, 0.01], [0.01, 0.5]]), 0.05).tolist() == [2, 1]


def test_examples_needed():
    # no loss seen: 1 - delta^(1/n) <= D first at n = ceil(ln delta / ln(1 - D)) = 299 for D = 1%, delta = 5%
    need = rc.examples_needed(0.0, 0.01, 0.95)
    assert need == math.ceil(math.log(0.05) / math.log(0.99)) == 299
    assert rc.upper_bound(0, need, 0.95) <= 0.01 < rc.upper_bound(0, need - 1, 0.95)
    need = rc.examples_needed(0.005, 0.01, 0.95)
    assert rc.upper_bound(round(0.005 * need), need, 0.95) <= 0.01
    assert rc.upper_bound(round(0.005 * (need - 1)), need - 1, 0.95) > 0.01
    assert rc.examples_needed(0.02, 0.01, 0.95) is None


def test_each_policy_is_swept_from_its_most_conservative_setting():
    assert rc.ordered("normalized_entropy", [0.5, 0.1, 0.9]) == [0.1, 0.5, 0.9]
    assert rc.ordered("entropy", [0.5, 0.1]) == [0.1, 0.5]
    assert rc.ordered("pcee", [0.5, 0.1]) == [0.1, 0.5]
    assert rc.ordered("max_prob", [0.5, 0.9, 0.7]) == [0.9, 0.7, 0.5]  # a lower bar lets more leave
    assert rc.ordered("patience", [1, 3, 2]) == [3, 2, 1]
    assert rc.default_values("patience", 2, 6) == [5, 4, 3, 2, 1]
    assert [rc.knob(p) for p in ("entropy", "max_prob", "patience", "per_exit_entropy")] == [
        "threshold", "threshold", "patience", "level"]
    grid = rc.default_values("max_prob", 4, 6)
    assert grid[0] > grid[-1] and 0.25 <= grid[-1] and grid[0] < 1


@pytest.mark.parametrize("policy, words", [("none", "cannot be calibrated"), ("regression_patience", "cannot be calibrated"),
                                           ("bogus", "unknown exit policy")])
def test_policies_without_a_setting_to_calibrate_are_refused(policy, words):
    with pytest.raises(UsageError, match=words):
        rc.knob(policy)


@pytest.mark.parametrize("level, confidence", [(0.0, 0.95), (1.0, 0.95), (0.01, 1.0), (0.01, 0.0), (float("nan"), 0.9),
                                               (True, 0.9), ("0.01", 0.95)])
def test_bad_levels_are_refused(level, confidence):
    with pytest.raises(UsageError, match="strictly between"):
        rc.check_level(level, confidence)


# ---- synthetic exit traces: two exits, full depth always predicts class 0 -------------------------
# Exit 0 has logits (m, 0) or (0, m): a margin m from MARGINS, its prediction 0 ("agrees") or 1
# ("disagrees"), its entropy a function of m alone. A sample leaves at exit 0 when its normalised
# entropy is below tau; so with tau between the entropies of margins j and j + 1 (the margins are
# sorted from sure to unsure), exactly the margins 0 .. j leave, and the true disagreement risk is
# R_j = sum_{i <= j} P(margin i) P(disagree | margin i), known exactly.
MARGINS = torch.tensor([9.0, 7.0, 5.5, 4.5, 3.5, 2.8, 2.2, 1.6, 1.0, 0.5])
P_MARGIN = np.full(10, 0.1)
P_DISAGREE = np.array([0.0, 0.0, 0.01, 0.02, 0.03, 0.05, 0.05, 0.06, 0.18, 0.4])
# 0, 0, .001, .003, .006, .011, .016, .022, .04, .08: a setting just above each D tested (1%, 2%), which
# a point estimate on dev takes about half the time
TRUE_RISK = np.cumsum(P_MARGIN * P_DISAGREE)
H = (entropy(torch.stack([MARGINS, torch.zeros(10)], 1)) / math.log(2)).tolist()  # increasing
TAUS = [(a + b) / 2 for a, b in zip(H, H[1:])] + [1.0]  # tau_j: margins 0 .. j leave


def synthetic_trace(n: int, rng: np.random.Generator) -> ExitTrace:
    level = rng.choice(10, size=n, p=P_MARGIN)
    disagree = torch.from_numpy(rng.random(n) < P_DISAGREE[level])
    m = MARGINS[torch.from_numpy(level)]
    exit0 = torch.where(disagree.unsqueeze(1), torch.stack([torch.zeros(n), m], 1), torch.stack([m, torch.zeros(n)], 1))
    last = torch.tensor([5.0, 0.0]).expand(n, 2)
    return ExitTrace(torch.stack([exit0, last]), torch.zeros(n, dtype=torch.long), torch.full((n,), 10), [3, 6], 6, 1, False)


def test_the_synthetic_risks_are_what_the_construction_says():
    t = synthetic_trace(200_000, np.random.default_rng(0))
    cands = rc.candidates("normalized_entropy", TAUS, 2)
    loss, speed, _ = rc.trace_outcomes(t, cands, "disagreement")
    assert loss.double().mean(1).numpy() == pytest.approx(TRUE_RISK, abs=0.002)
    assert speed == sorted(speed)  # each tau lets more leave than the one before


@pytest.mark.parametrize("level, confidence, n", [(0.02, 0.9, 400), (0.01, 0.95, 1000)])
def test_the_rule_holds_its_level_over_many_draws(level, confidence, n):
    """The chosen threshold's true risk exceeds D in at most delta of the draws (up to the noise
    of 600 draws), while the point-estimate rule, on the same draws, exceeds it far more often."""
    rng = np.random.default_rng(1)
    draws, delta = 600, 1 - confidence
    guaranteed, point, chosen = 0, 0, []
    for _ in range(draws):
        t = synthetic_trace(n, rng)
        cert = rc.certify_trace(t, "normalized_entropy", level, confidence, "disagreement", values=TAUS)
        j = TAUS.index(cert.threshold) if cert.chosen is not None else -1
        chosen.append(j)
        guaranteed += j >= 0 and TRUE_RISK[j] > level
        ok = [i for i, r in enumerate(cert.rows) if r.risk <= level]  # today's rule: the fastest within D on dev
        point += bool(ok) and TRUE_RISK[max(ok)] > level
    noise = 3 * math.sqrt(delta * (1 - delta) / draws)
    assert guaranteed / draws <= delta + noise
    assert point / draws > 2 * delta  # the check can see a rule that does not hold its level
    assert np.mean(chosen) > 2  # and the rule is not trivially cautious: it passes several thresholds


def test_nothing_passes_on_too_few_examples_and_says_how_many_are_needed():
    t = synthetic_trace(50, np.random.default_rng(2))
    cert = rc.certify_trace(t, "normalized_entropy", 0.01, 0.95, "disagreement", values=TAUS)
    assert cert.chosen is None and cert.settings() == {"exit_policy": "none"} and cert.speedup == 1.0
    assert "no normalized_entropy setting passes" in cert.message and "299 calibration examples" in cert.message


def test_the_first_failure_stops_the_sequence_even_if_a_later_setting_would_pass():
    t = synthetic_trace(2000, np.random.default_rng(3))
    cands = rc.candidates("normalized_entropy", TAUS, 2)
    loss, speed, _ = rc.trace_outcomes(t, cands, "disagreement")
    loss[1] = True  # the second setting now loses every answer; the later ones are untouched
    cert = rc.choose(cands, loss, speed, 0.05, 0.9, "disagreement")
    assert [r.passed for r in cert.rows][:3] == [True, False, False]
    assert cert.chosen is cert.rows[0]


def test_accuracy_drop_counts_only_answers_full_depth_had_right():
    pred = torch.tensor([0, 1, 1, 0])
    full = torch.tensor([0, 0, 1, 1])
    target = torch.tensor([0, 0, 0, 0])
    assert rc.losses(pred, full, target, "disagreement").tolist() == [False, True, False, True]
    # sample 1: full right, exit wrong (lost); sample 3: full wrong, exit right (gained, no loss)
    assert rc.losses(pred, full, target, "accuracy_drop").tolist() == [False, True, False, False]
    with pytest.raises(UsageError, match="needs the labels"):
        rc.losses(pred, full, None, "accuracy_drop")


def test_the_per_exit_rule_is_fitted_on_one_part_and_tested_on_the_other():
    t = synthetic_trace(600, np.random.default_rng(4))
    fit, test = rc.split_fit_test(600, 0.5, seed=0)
    assert len(set(fit.tolist()) & set(test.tolist())) == 0 and len(fit) + len(test) == 600
    cert = rc.certify_trace(t, "per_exit_entropy", 0.05, 0.9, "disagreement")
    assert cert.n == 300 and cert.fit_examples == 300
    levels = [r.candidate.value for r in cert.rows]
    assert levels == sorted(levels, reverse=True) and levels[0] == 1.0
    assert cert.chosen is not None and cert.settings()["exit_policy"] == "per_exit_entropy"
    assert len(cert.settings()["thresholds"]) == 1  # one per exit but the last
