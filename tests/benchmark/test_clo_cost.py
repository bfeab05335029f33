"""The cost benchmark of a CLO update (leebert_plugin.benchmark.clo_cost) on a tiny random model."""
import torch

from leebert_plugin.benchmark.clo_cost import build_step, fixed_batch, interleaved_updates, meta_split
from leebert_plugin.criterions.leebert import LeeBertConfig
from leebert_plugin.criterions.multi_exit import MultiExitConfig

CPU = torch.device("cpu")


def test_meta_split_finds_the_updates_that_carry_a_meta_step():
    times = [float(i) for i in range(12)]  # 2 rounds of 6 updates, a meta step every 3: numbers 0, 3, 6, 9
    meta, rest = meta_split(times, per_round=6, interval=3)
    assert meta == [0.0, 3.0, 6.0, 9.0] and rest == [1.0, 2.0, 4.0, 5.0, 7.0, 8.0, 10.0, 11.0]


def test_every_variant_trains_and_meta_split_names_the_updates_with_a_meta_step(monkeypatch):
    size = dict(layers=2, dim=16, ffn=32, heads=2, device=CPU)
    steps = {"plain": build_step(criterion_cfg=MultiExitConfig(_name="multi_exit"), optimizer="adam", **size),
             "clo": build_step(criterion_cfg=LeeBertConfig(_name="leebert"), optimizer="clo", interval=2, **size)}
    before = {k: [p.detach().clone() for p in s.model.parameters()] for k, s in steps.items()}
    clo_task, numbers, seen = steps["clo"].task, [], []  # update numbers with a meta step; every timed update's

    def bilevel_for(criterion, model):  # record when the task's bi-level object runs its meta step
        bilevel = type(clo_task).bilevel_for(clo_task, criterion, model)
        if bilevel is not None and not hasattr(bilevel, "_recorded"):
            meta_step = bilevel.meta_step
            bilevel._recorded = True
            bilevel.meta_step = lambda *a, **kw: (numbers.append(a[4]), meta_step(*a, **kw))[1]  # a[4]: update_num
        return bilevel

    monkeypatch.setattr(clo_task, "bilevel_for", bilevel_for)
    sample = fixed_batch(steps["clo"].model.encoder.dictionary, 4, 8, CPU)
    times = interleaved_updates(steps, sample, rounds=2, per_round=4, device=CPU)
    assert {k: len(v) for k, v in times.items()} == {"plain": 8, "clo": 8} and min(map(min, times.values())) > 0
    for k, s in steps.items():  # every variant really trained
        assert any(not torch.equal(a, b) for a, b in zip(before[k], s.model.parameters()))
    # warm-up: updates 8, 9 (a meta step at 8); rounds: 0-3, 4-7, a meta step at every even number
    assert numbers == [8, 0, 2, 4, 6]
    meta, rest = meta_split(list(range(8)), per_round=4, interval=2)  # the timed updates' positions
    assert meta == numbers[1:] and rest == [1, 3, 5, 7]


def test_the_report_prices_each_variant_against_multi_exit():
    from leebert_plugin.benchmark.clo_cost import compare

    text = compare(layers=2, dim=32, ffn=64, heads=2, batch=4, length=8, updates=4, rounds=2, interval=2,
                   mode="clo", device=torch.device("cpu"))
    lines = text.splitlines()
    assert lines[0].startswith("model: 2 layers, dim 32") and "4 updates per variant" in lines[0]
    rows = {line[:44].strip(): line.split() for line in lines[2:5]}
    assert list(rows) == ["multi_exit + adam", "leebert (fixed weights) + adam", "leebert + clo (clo, every 2)"]
    assert rows["multi_exit + adam"][-1] == "1.00"  # the base of the ratios
    assert lines[5].startswith("clo updates with a meta step:") and "without: " in lines[5]
