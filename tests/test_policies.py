import math

import pytest
import torch

from leebert_plugin.errors import UsageError
from leebert_plugin.exits.policies import POLICY_REGISTRY, build_policy, entropy, parse_thresholds


def confident(cls: int, num_classes: int = 2, margin: float = 6.0) -> torch.Tensor:
    row = torch.zeros(num_classes)
    row[cls] = margin
    return row


def test_entropy_matches_definition():
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    h = entropy(logits)
    assert h[0].item() == pytest.approx(math.log(2), abs=1e-6)
    assert h[1].item() < 1e-6


def test_threshold_policies_exit_only_confident_rows():
    logits = torch.stack([confident(0), torch.zeros(2), confident(1, margin=1.0)])
    h = entropy(logits)
    cases = {
        "entropy": (0.3, h < 0.3),
        "normalized_entropy": (0.3, h / math.log(2) < 0.3),
        "max_prob": (0.9, torch.softmax(logits, -1).amax(-1) >= 0.9),
    }
    for name, (threshold, expected) in cases.items():
        policy = build_policy(name, 2, threshold)
        done, _ = policy.step(logits, policy.init_state(3, logits.device))
        assert done.tolist() == expected.tolist(), name
        assert done.tolist() == [True, False, False], name


def test_patience_counts_agreeing_exits_per_sample():
    policy = build_policy("patience", 2, patience=2)
    state = policy.init_state(2, torch.device("cpu"))
    # sample 0 predicts 0,0,0 -> exits at the third exit; sample 1 flips 0,1,1,1 -> exits at the fourth
    sequence = [
        torch.stack([confident(0), confident(0)]),
        torch.stack([confident(0), confident(1)]),
        torch.stack([confident(0), confident(1)]),
        torch.stack([confident(0), confident(1)]),
    ]
    exits = []
    for logits in sequence:
        done, state = policy.step(logits, state)
        exits.append(done.tolist())
    assert exits == [[False, False], [False, False], [True, False], [True, True]]


def test_pcee_needs_consecutive_confident_exits():
    policy = build_policy("pcee", 2, threshold=0.5, patience=2)
    state = policy.init_state(1, torch.device("cpu"))
    unsure, sure = torch.zeros(1, 2), confident(1).unsqueeze(0)
    decisions = []
    for logits in (sure, unsure, sure, sure):
        done, state = policy.step(logits, state)
        decisions.append(bool(done))
    assert decisions == [False, False, False, True]


def test_none_never_exits():
    policy = build_policy("none", 2)
    done, _ = policy.step(torch.stack([confident(0, margin=50.0)] * 4), {})
    assert not done.any()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(name="entropi", num_classes=2, threshold=0.1), "unknown exit policy 'entropi'"),
        (dict(name="entropy", num_classes=2, threshold=0.9), "out of range"),
        (dict(name="normalized_entropy", num_classes=3, threshold=-0.1), "out of range"),
        (dict(name="max_prob", num_classes=3, threshold=1.5), "out of range"),
        (dict(name="entropy", num_classes=2, threshold=None), "needs a threshold"),
        (dict(name="patience", num_classes=2, patience=0), "patience=0 is below 1"),
        (dict(name="entropy", num_classes=1, threshold=0.1), "'entropy' does not apply to a regression task"),
        (dict(name="patience", num_classes=1), "use one of none, regression_patience for regression"),
        (dict(name="regression_patience", num_classes=3, threshold=0.1), "does not apply to a classification"),
        (dict(name="regression_patience", num_classes=1, threshold=-0.1), "out of range"),
        (dict(name="regression_patience", num_classes=1, threshold=float("nan")), "out of range"),
        (dict(name="per_exit_entropy", num_classes=2), "needs one threshold per exit but the last"),
        (dict(name="per_exit_entropy", num_classes=2, thresholds=(0.2, 1.5)), "1.5 is out of range"),
        (dict(name="per_exit_entropy", num_classes=2, thresholds=(0.2, float("nan"))), "out of range"),
        (dict(name="entropy", num_classes=2, threshold=0.2, thresholds=(0.2,)), "takes one threshold, not one per"),
    ],
)
def test_bad_policy_settings_name_problem_and_fix(kwargs, words):
    with pytest.raises(UsageError) as err:
        build_policy(**kwargs)
    assert words in str(err.value)
    assert "Fix:" in str(err.value)


def test_entropy_range_follows_number_of_classes():
    build_policy("entropy", 3, threshold=1.05)  # ln 3 = 1.0986: allowed for 3 classes
    with pytest.raises(UsageError):
        build_policy("entropy", 2, threshold=1.05)  # ln 2 = 0.693


def test_registry_lists_the_documented_policies():
    assert {"none", "entropy", "normalized_entropy", "max_prob", "patience", "pcee",
            "regression_patience"} <= set(POLICY_REGISTRY)


def test_regression_patience_exits_after_enough_small_moves():
    """PABEE's regression rule: |y_i - y_{i-1}| < threshold for `patience` exits in a row."""
    policy = build_policy("regression_patience", 1, threshold=0.1, patience=2)
    state = policy.init_state(3, torch.device("cpu"))
    # rows: steady from the start / one big jump in between / always moving
    exits = [torch.tensor([[1.0], [1.0], [0.0]]), torch.tensor([[1.05], [2.0], [0.5]]),
             torch.tensor([[1.0], [2.05], [1.0]]), torch.tensor([[1.02], [2.0], [1.5]])]
    decisions = []
    for logits in exits:
        done, state = policy.step(logits, state)
        decisions.append(done.tolist())
    assert decisions == [[False, False, False], [False, False, False], [True, False, False], [True, True, False]]


def test_per_exit_entropy_asks_each_exit_for_its_own_threshold():
    policy = build_policy("per_exit_entropy", 2, thresholds=(0.2, 0.9))
    policy.check_model(3, gated=False)
    logits = torch.stack([confident(0, margin=1.0), confident(1)])  # the same logits at both exits
    assert (entropy(logits) / math.log(2)).tolist() == pytest.approx([0.84, 0.025], abs=0.01)
    state = policy.init_state(2, logits.device)
    first, state = policy.step(logits, state)
    second, state = policy.step(logits, state)
    assert first.tolist() == [False, True] and second.tolist() == [True, True]
    # the state is batch-first: the loop may keep only some rows
    kept = {k: v.index_select(0, torch.tensor([0])) for k, v in policy.init_state(2, logits.device).items()}
    assert policy.step(logits[:1], kept)[0].tolist() == [False]


@pytest.mark.parametrize("exits, gated, words", [(4, False, "2 exit thresholds for a model with 4 exits"),
                                                  (3, True, "skip gates skip some")])
def test_per_exit_entropy_refuses_a_model_it_cannot_decide_for(exits, gated, words):
    with pytest.raises(UsageError, match=words):
        build_policy("per_exit_entropy", 2, thresholds=(0.2, 0.9)).check_model(exits, gated)


def test_thresholds_parse_from_the_option():
    assert parse_thresholds("0.1, 0.25,1") == (0.1, 0.25, 1.0) and parse_thresholds("") == ()
    with pytest.raises(UsageError, match="not comma-separated numbers"):
        parse_thresholds("0.1;0.2")


def test_per_exit_threshold_one_lets_every_sample_go_even_a_uniform_one():
    """The calibration's tau = 1 means 'everyone leaves here'; a uniform prediction has H/ln C = 1."""
    policy = build_policy("per_exit_entropy", 2, thresholds=(1.0, 0.0))
    logits = torch.stack([torch.zeros(2), confident(1)])  # uniform, then confident
    leaves, _ = policy.step(logits, policy.init_state(2, logits.device))
    assert leaves.tolist() == [True, True]
