"""The wall-clock benchmark's logic (leebert_plugin.speed_bench) on a tiny random model."""
import pytest
import torch

from leebert_plugin.exits.policies import AssignedExit
from leebert_plugin.clo_bench import build_step, fixed_batch, interleaved_updates, meta_split
from leebert_plugin.speed_bench import HEAD, SpeedRow, assigned_plan, measure, random_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    return random_model(layers=3, dim=16, ffn=32, heads=2)


def test_assigned_plan_draws_one_exit_per_sample_from_the_given_probabilities(model):
    plan = assigned_plan(model, samples=12, min_len=3, max_len=6, exit_probs=[0.0, 1.0, 0.0], device=CPU)
    work = plan(4)
    assert len(work) == 3 and all(t.size(0) == 4 for t, _ in work)
    assert all(isinstance(p, AssignedExit) and p.exit_index.tolist() == [1] * 4 for _, p in work)
    assert len(plan(50)) == 1  # fewer samples than a batch: still one batch
    with pytest.raises(ValueError, match="2 exit probabilities for 3 exits"):
        assigned_plan(model, 4, 3, 6, [0.5, 0.5], CPU)


def test_measure_reports_the_layer_speed_up_the_policy_imposed(model):
    # every sample leaves at the 2nd of 3 exits (layer 2): 3 / 2 = 1.5x layers
    work = assigned_plan(model, samples=4, min_len=3, max_len=6, exit_probs=[0.0, 1.0, 0.0], device=CPU)(2)
    row = measure(model, HEAD, work, repeats=3, device=CPU)
    assert row.batch_size == 2 and row.layer_x == pytest.approx(1.5)
    low, mid, high = row.wall_per_layer
    assert low <= mid <= high and row.wall_x == pytest.approx(mid * 1.5)
    assert min(row.plain_ms, row.early_ms, row.all_exits_ms, row.layer_ms, row.exit_ms) > 0
    cells = row.line().split()
    assert len(cells) == 11 and SpeedRow.HEADER.split()[0] == "batch"
    assert cells[0] == "2" and float(cells[4]) == pytest.approx(1.5, abs=0.005)


def test_meta_split_finds_the_updates_that_carry_a_meta_step():
    times = [float(i) for i in range(12)]  # 2 rounds of 6 updates, a meta step every 3: numbers 0, 3, 6, 9
    meta, rest = meta_split(times, per_round=6, interval=3)
    assert meta == [0.0, 3.0, 6.0, 9.0] and rest == [1.0, 2.0, 4.0, 5.0, 7.0, 8.0, 10.0, 11.0]


def test_interleaved_updates_train_every_variant_and_clo_learns_its_weights():
    from leebert_plugin.criterions.leebert import LeeBertConfig
    from leebert_plugin.criterions.multi_exit import MultiExitConfig

    size = dict(layers=2, dim=16, ffn=32, heads=2, device=CPU)
    steps = {"plain": build_step(criterion_cfg=MultiExitConfig(_name="multi_exit"), optimizer="adam", **size),
             "clo": build_step(criterion_cfg=LeeBertConfig(_name="leebert"), optimizer="clo", interval=2, **size)}
    before = {k: [p.detach().clone() for p in s.model.parameters()] for k, s in steps.items()}
    times = interleaved_updates(steps, fixed_batch(4, 8, CPU), rounds=2, per_round=2, device=CPU)
    assert {k: len(v) for k, v in times.items()} == {"plain": 4, "clo": 4} and min(map(min, times.values())) > 0
    for k, s in steps.items():  # every variant really trained
        assert any(not torch.equal(a, b) for a, b in zip(before[k], s.model.parameters()))
    meta = steps["clo"].task.bilevel.optimizer  # the weights' AdamW: one step per meta step
    assert [int(st["step"]) for st in meta.state.values()] and all(int(st["step"]) >= 2 for st in meta.state.values())
