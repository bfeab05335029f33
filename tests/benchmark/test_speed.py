"""The wall-clock benchmark's logic (leebert_plugin.benchmark.speed) on tiny random models and the trained fixture."""
import pytest
import torch

from helpers import tiny_model
from leebert_plugin.benchmark import speed as speed_bench
from leebert_plugin.errors import UsageError
from leebert_plugin.exits.policies import AssignedExit
from leebert_plugin.data.synthetic import random_token_batch
from leebert_plugin.benchmark.speed import HEAD, SpeedRow, assigned_plan, bound_schedule, layers_only, measure, random_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    return random_model(layers=3, dim=16, ffn=32, heads=2)


def test_assigned_plan_draws_one_exit_per_sample_from_the_given_weights(model):
    plan = assigned_plan(model, samples=12, min_len=3, max_len=6, exit_probs=[0.0, 2.0, 0.0], device=CPU)
    work = plan(4)
    assert len(work) == 3 and all(t.size(0) == 4 for t, _ in work)
    assert all(isinstance(p, AssignedExit) and p.exit_index.tolist() == [1] * 4 for _, p in work)
    assert len(plan(50)) == 1  # fewer samples than a batch: still one batch
    again = assigned_plan(model, 12, 3, 6, [], CPU)(4)  # uniform, and the same seed draws the same exits
    assert [p.exit_index.tolist() for _, p in again] == [p.exit_index.tolist() for _, p in assigned_plan(model, 12, 3, 6, [], CPU)(4)]
    assert {e for _, p in again for e in p.exit_index.tolist()} <= {0, 1, 2}


@pytest.mark.parametrize("probs, words", [([0.5, 0.5], "2 exit probabilities for a model with 3 exits"),
                                          ([0.0, 0.0, 0.0], "are not weights"), ([1.0, -1.0, 1.0], "are not weights")])
def test_assigned_plan_refuses_what_is_not_one_weight_per_exit(model, probs, words):
    with pytest.raises(UsageError, match=words):
        assigned_plan(model, 4, 3, 6, probs, CPU)


def test_exits_count_among_the_model_exits_not_its_layers():
    four = tiny_model(num_classes=2, exit_layers="2,4")  # 4 layers, exits after layers 2 and 4
    work = assigned_plan(four, samples=4, min_len=3, max_len=6, exit_probs=[1.0, 0.0], device=CPU)(2)
    assert measure(four, HEAD, work, repeats=1, device=CPU).layer_x == pytest.approx(2.0)  # 4 layers / 2 run


def test_measure_reports_the_layer_speed_up_the_policy_imposed(model):
    # every sample leaves at the 2nd of 3 exits (layer 2): 3 / 2 = 1.5x layers
    work = assigned_plan(model, samples=4, min_len=3, max_len=6, exit_probs=[0.0, 1.0, 0.0], device=CPU)(2)
    row = measure(model, HEAD, work, repeats=3, device=CPU)
    assert row.batch_size == 2 and row.layer_x == pytest.approx(1.5)
    assert min(row.plain_ms, row.early_ms, row.all_exits_ms, row.layer_ms, row.exit_ms) > 0
    cells = row.line().split()
    assert len(cells) == 13 and cells[0] == "2" and float(cells[4]) == pytest.approx(1.5, abs=0.005)
    assert len(row.line()) == len(SpeedRow.HEADER)  # the columns line up under the header


def test_measure_takes_each_ratio_within_its_repeat(model, monkeypatch):
    """Times fixed by hand: plain / early per repeat is 3.0, 1.5 and 2.0 (the medians of the
    columns, 6 / 3, would say 2.0 too, but its range must come from the repeats), and the exits
    cost 10% of a plain forward in every repeat."""
    calls = []

    def fake(variants, items, repeats, device=None):
        calls.append(repeats)
        return {"plain": [6.0, 6.0, 6.0], "early": [2.0, 4.0, 3.0], "all": [6.6, 6.6, 6.6], "bound": [1.5, 3.0, 3.0]}

    monkeypatch.setattr(speed_bench, "interleaved_seconds", fake)
    work = assigned_plan(model, samples=2, min_len=3, max_len=6, exit_probs=[0.0, 1.0, 0.0], device=CPU)(2)
    row = measure(model, HEAD, work, repeats=3, device=CPU)
    assert calls == [1, 3]  # one warm-up repeat, then the measured ones
    assert row.wall_per_layer == pytest.approx((1.5 / 1.5, 2.0 / 1.5, 3.0 / 1.5))
    assert row.wall_x == pytest.approx(2.0) and row.heads_pct == pytest.approx(10.0)
    assert (row.plain_ms, row.early_ms, row.all_exits_ms) == pytest.approx((6000.0, 3000.0, 6600.0))
    # the bound: plain / bound per repeat 4, 2, 2 -> median 2 / 1.5; early / bound 1.33, 1.33, 1 -> +33.3%
    assert row.bound_per_layer == pytest.approx(2.0 / 1.5) and row.loop_pct == pytest.approx(100 / 3)


@pytest.mark.parametrize("side", ["right", "left"])
def test_the_bound_does_the_early_exit_pass_s_work_and_nothing_else(side):
    """layers_only runs each sample through exactly its layers and its one exit: its logits are the
    early-exit pass's, on a batch with padding (fairseq's right padding, or left) and exits at some
    layers only."""
    four = tiny_model(num_classes=3, exit_layers="2,3,4", seed=4)
    tokens = random_token_batch(four.encoder.dictionary, 6, 3, 12, seed=5)
    if side == "left":  # the same sentences, their padding moved in front
        pad = four.encoder.dictionary.pad()
        tokens = torch.stack([torch.cat((row[row.eq(pad)], row[row.ne(pad)])) for row in tokens])
    policy = AssignedExit(torch.tensor([0, 2, 1, 0, 2, 1]))  # exits at layers 2, 4, 3, 2, 4, 3
    with torch.no_grad():
        logits, extra = four(tokens, classification_head_name=HEAD, exit_policy=policy)
        stages = bound_schedule(four, tokens, extra["exits"].exit_layer)
        bound = layers_only(four, HEAD, tokens, stages)
    assert len(stages) == 4 and [st.keep is None for st in stages] == [True, True, False, False]
    assert [None if st.leave is None else st.slots.tolist() for st in stages] == [None, [0, 3], [2, 5], [1, 4]]
    assert torch.allclose(bound, logits, atol=1e-5)


def test_measure_prices_the_bound_without_gates_only(model):
    work = assigned_plan(model, samples=4, min_len=3, max_len=6, exit_probs=[], device=CPU)(2)
    row = measure(model, HEAD, work, repeats=2, device=CPU)
    assert row.bound_per_layer > 0 and row.loop_pct is not None and row.line().split()[-2:] != ["-", "-"]
    gated = tiny_model(num_classes=2, skip_gates=True)
    work = assigned_plan(gated, samples=2, min_len=3, max_len=6, exit_probs=[], device=CPU)(2)
    assert measure(gated, HEAD, work, repeats=1, device=CPU).bound_per_layer is None


def test_a_trained_checkpoint_is_timed_on_its_splits_first_sentences_under_its_own_policy(trained, mr_bin):
    model, head, plan, about = speed_bench.checkpoint_setup(str(trained / "checkpoint_best.pt"), str(mr_bin), "valid",
                                                            10, "normalized_entropy", 0.5, 1, CPU)
    work = plan(4)
    assert [t.size(0) for t, _ in work] == [4, 4, 4]  # whole batches covering the first 10 sentences
    assert all(p.name == "normalized_entropy" and p.threshold == 0.5 for _, p in work)
    assert "covering its first 10 sentences" in about and f"valid of {mr_bin}" in about
    row = measure(model, head, work, 1, CPU)
    assert row.batch_size == 4 and 1.0 <= row.layer_x <= model.num_layers
