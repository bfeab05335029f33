"""A replay of the full-depth exit logits takes the same exits as real batched early exit."""
import pytest
import torch

from leebert_plugin.exits.evaluate import batches, load, oracle_exits, replay, run, score, trace
from leebert_plugin.exits.policies import build_policy

POLICIES = [("entropy", 0.3, 1), ("normalized_entropy", 0.6, 1), ("max_prob", 0.8, 1), ("patience", None, 1),
            ("patience", None, 2), ("pcee", 0.8, 2)]


@pytest.fixture(scope="module")
def loaded(trained, mr_bin):
    model, task = load(trained / "checkpoint_best.pt", mr_bin)
    return model, task, batches(task, "valid", 16)


@pytest.mark.parametrize("name, threshold, patience", POLICIES)
def test_replay_takes_the_exits_of_real_early_exit(name, threshold, patience, loaded):
    model, task, data = loaded
    policy = build_policy(name, 2, threshold, patience)
    real = []
    with torch.no_grad():
        for sample in data:
            _, extra = model(sample["net_input"]["src_tokens"], classification_head_name=task.cfg.classification_head_name,
                             exit_policy=policy)
            real.append(extra["exits"].exit_layer)
    t = trace(model, task, data)
    exit_at = replay(policy, t)
    assert torch.equal(torch.tensor(t.exit_layers)[exit_at], torch.cat(real))
    replayed = score(t, exit_at, model, task.cfg.classification_head_name)
    measured = run(model, task, data, policy)
    for key in ("accuracy", "f1", "mcc", "layer_speedup", "flops_speedup"):
        assert replayed[key] == pytest.approx(measured[key], abs=1e-9), key


def test_some_policy_mixes_exits_and_the_oracle_bounds_them(loaded):
    model, task, data = loaded
    t = trace(model, task, data)
    mixes = [len(set(replay(build_policy(n, 2, th, p), t).tolist())) > 1 for n, th, p in POLICIES]
    assert any(mixes), "the trained demo model should give mixed exits for the check above to bite"
    oracle = score(t, oracle_exits(t))
    full = score(t, torch.full((t.logits.size(1),), len(t.exit_layers) - 1))
    assert oracle["accuracy"] >= full["accuracy"] and oracle["layer_speedup"] >= 1.0
    for n, th, p in POLICIES:  # at the oracle's accuracy or better, nothing is faster than it
        row = score(t, replay(build_policy(n, 2, th, p), t))
        assert row["accuracy"] < oracle["accuracy"] or row["layer_speedup"] <= oracle["layer_speedup"]
