"""A replay of the full-depth exit logits takes the same exits as real batched early exit."""
import dataclasses

import pytest
import torch

from leebert_plugin.benchmark.evaluation import score_traces
from leebert_plugin.errors import UsageError
from leebert_plugin.exits import evaluate
from leebert_plugin.exits.evaluate import (
    batches, load, load_traces, oracle_exits, plain_seconds, replay, run, save_traces, score, trace,
)
from leebert_plugin.exits.calibrate import alpha_grid, per_exit_thresholds
from leebert_plugin.exits.policies import build_policy

POLICIES = [("entropy", 0.3, 1), ("normalized_entropy", 0.6, 1), ("max_prob", 0.8, 1), ("patience", None, 1),
            ("patience", None, 2), ("pcee", 0.8, 2)]


@pytest.fixture(scope="module")
def loaded(trained, mr_bin):
    model, task = load(trained / "checkpoint_best.pt", mr_bin, device="cpu")
    return model, task, batches(task, "valid", 16)


def calibrated(model, task, data):
    """The per-exit rule calibrated on ``data`` for the last exit's accuracy."""
    t = trace(model, task, data, device="cpu")
    return build_policy("per_exit_entropy", 2, thresholds=per_exit_thresholds(t, alpha_grid(t)[9]))


@pytest.mark.parametrize("name, threshold, patience", POLICIES + [("per_exit_entropy", None, 1)])
def test_replay_takes_the_exits_of_real_early_exit(name, threshold, patience, loaded):
    model, task, data = loaded
    policy = calibrated(model, task, data) if name == "per_exit_entropy" else build_policy(name, 2, threshold, patience)
    real = []
    with torch.no_grad():
        for sample in data:
            _, extra = model(sample["net_input"]["src_tokens"], classification_head_name=task.cfg.classification_head_name,
                             exit_policy=policy)
            real.append(extra["exits"].exit_layer)
    t = trace(model, task, data, device="cpu")
    exit_at = replay(policy, t)
    assert torch.equal(torch.tensor(t.exit_layers)[exit_at], torch.cat(real))
    if name == "per_exit_entropy":
        assert len(set(exit_at.tolist())) > 1, "the calibrated rule should mix exits for this check to bite"
    replayed = score(t, exit_at)  # FLOPs from the trace's own units: no model needed
    measured = run(model, task, data, policy, device="cpu")
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


def test_a_saved_trace_replays_and_scores_as_the_pass_that_made_it(loaded, tmp_path):
    model, task, data = loaded
    made = {"dev": trace(model, task, data), "test": trace(model, task, data[:2])}
    path = tmp_path / "traces.npz"
    save_traces(path, made)
    back = load_traces(path)
    assert set(back) == {"dev", "test"} and not list(tmp_path.glob("*.part*"))
    for split, t in made.items():
        b = back[split]
        for name in ("logits", "targets", "lengths", "ids", "layer_flops", "exit_flops"):
            assert torch.equal(getattr(b, name), getattr(t, name)), (split, name)
        assert (b.exit_layers, b.num_layers, b.positive, b.gated) == (t.exit_layers, t.num_layers, t.positive, t.gated)
    policy = build_policy("normalized_entropy", 2, 0.9, 1)
    exit_at = replay(policy, back["dev"])
    assert len(set(exit_at.tolist())) > 1, "the check bites only when the exits mix"
    assert score(back["dev"], exit_at) == score(made["dev"], replay(policy, made["dev"]))
    assert "flops_speedup" in score(back["dev"], exit_at)
    # a whole run's figures and outcomes come out the same from the saved traces
    (first, first_outcomes), (again, again_outcomes) = score_traces(made), score_traces(back)
    assert again == first and len(first["points"]) > 20
    assert (again_outcomes.correct == first_outcomes.correct).all() and (again_outcomes.ids == first_outcomes.ids).all()
    assert evaluate.trace_format(path) == evaluate.TRACE_FORMAT
    # traces without FLOPs units, or of a gated model, are refused with the reason
    bare = {s: dataclasses.replace(t, layer_flops=None) for s, t in made.items()}
    with pytest.raises(ValueError, match="no FLOPs units"):
        score_traces(bare)
    assert "flops_speedup" not in score(bare["dev"], exit_at)
    with pytest.raises(ValueError, match="skip gates"):
        score_traces({s: dataclasses.replace(t, gated=True) for s, t in made.items()})


def test_every_batch_goes_to_the_device_and_the_figures_do_not_depend_on_who_chose_it(loaded, monkeypatch):
    """device="cpu" moves every batch (counted); it gives what the model's own device gives."""
    model, task, data = loaded
    policy = build_policy("normalized_entropy", 2, 0.98, 1)
    default, default_trace = run(model, task, data, policy), trace(model, task, data)
    moved = []

    def counting(sample, device):
        moved.append(device)
        return to_device(sample, device)

    to_device = evaluate.to_device
    monkeypatch.setattr(evaluate, "to_device", counting)
    explicit = run(model, task, data, policy, device="cpu")
    assert moved == [torch.device("cpu")] * len(data)
    assert {k: v for k, v in explicit.items() if k != "seconds"} == {k: v for k, v in default.items() if k != "seconds"}
    moved.clear()
    assert plain_seconds(model, task, data, device="cpu") > 0 and len(moved) == len(data)
    moved.clear()
    assert torch.equal(trace(model, task, data, device="cpu").logits, default_trace.logits)
    assert len(moved) == len(data)


def test_loading_onto_a_missing_gpu_is_refused_before_reading_the_checkpoint(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match="finds no CUDA device"):
        load(tmp_path / "not-there.pt", device="cuda")
