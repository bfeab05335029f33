"""The benchmark's statistics in seconds: interval arithmetic, pairing by seed and by example, the
choice on dev with the report on test, and the verdicts."""
import json
import math
import re
import statistics
from dataclasses import replace

import numpy as np
import torch
import pytest

from leebert_plugin.benchmark.ablations import ABLATIONS, Variant, variants
from leebert_plugin.benchmark.choice import FULL, At, choose
from leebert_plugin.benchmark.evaluation import GATED_SINCE, VERSION, Outcomes
from leebert_plugin.benchmark.matrix import (
    Matrix, across_columns, earlier_variants, read_records, run_matrix, summary_runs,
)
from leebert_plugin.benchmark.recipe import Budget
from leebert_plugin.benchmark.plots import plot_ablations
from leebert_plugin.benchmark.report import (
    TARGETS, Run, across_tables, compare, evaluation_line, mean_point, realised_speedup, summary,
    target_lines,
)
from leebert_plugin.benchmark.stats import NOT_REACHED, Interval, paired_bootstrap, seed_interval, t975
from leebert_plugin.errors import UsageError


def pt(dev, dev_speed, test, test_speed, policy="normalized_entropy", flops=None):
    return {"policy": policy, "threshold": 0.5, "patience": 1, "dev_metric": dev, "dev_speedup": dev_speed,
            "dev_flops_speedup": dev_speed if flops is None else flops, "test_metric": test,
            "test_speedup": test_speed, "test_flops_speedup": test_speed}


def test_t_quantiles_match_student_t():
    assert t975(1) == 12.706 and t975(4) == 2.776 and t975(30) == 2.042
    assert 2.000 < t975(50) < 2.021 and t975(10 ** 6) == pytest.approx(1.960, abs=1e-3)
    with pytest.raises(ValueError):
        t975(0)


def test_seed_interval_is_the_t_interval_and_refuses_to_drop_a_seed():
    vals = [1.0, 2.0, 3.0, 4.0, 5.0]
    iv = seed_interval(vals)
    half = 2.776 * statistics.stdev(vals) / math.sqrt(5)
    assert iv.mean == 3.0 and iv.low == pytest.approx(3.0 - half) and iv.high == pytest.approx(3.0 + half)
    assert iv.excludes_zero() and iv.verdict() == "A"
    assert seed_interval([-1.0, 1.0, 0.5]).verdict() == "tie"
    assert seed_interval([-3.0, -2.0, -2.5]).verdict() == "B"
    assert seed_interval([1.0, None, 2.0]) is NOT_REACHED  # a seed that never reached the point
    one = seed_interval([1.5])
    assert one.mean == 1.5 and math.isnan(one.low) and one.verdict() == "tie"


def test_paired_bootstrap_pairs_examples():
    rng = np.random.default_rng(0)
    base = rng.random(2000) < 0.7
    # B is A with 100 of A's right answers turned wrong: +5 points, and every resample agrees
    b = base.copy()
    b[np.flatnonzero(base)[:100]] = False
    iv = paired_bootstrap(base, b, reps=500, seed=1)
    assert iv.mean == pytest.approx(5.0) and 0 < iv.low < 5.0 < iv.high and iv.n == 2000
    # identical outcomes: no difference at all, whatever the resample
    same = paired_bootstrap(base, base, reps=200)
    assert same.mean == same.low == same.high == 0.0
    # pairing: two independent 70% models differ by noise; the interval is wide and holds 0,
    # while the same +5 shift added to A alone shows up as a clear difference
    other = rng.random(2000) < 0.7
    assert paired_bootstrap(base, other, reps=500).high - paired_bootstrap(base, other, reps=500).low > iv.high - iv.low
    # a fixed seed gives a fixed interval
    assert paired_bootstrap(base, b, reps=500, seed=1) == iv
    with pytest.raises(ValueError, match="equal"):
        paired_bootstrap(base, base[:10])


def test_choice_is_made_on_dev_only():
    points = [pt(80.0, 1.0, 79.0, 1.0, policy="none"), pt(79.0, 2.1, 70.0, 2.0), pt(78.0, 2.5, 78.5, 2.4),
              pt(79.0, 2.3, 60.0, 2.2), pt(81.0, 1.8, 90.0, 1.8)]
    assert choose(points, FULL) == 0
    # at 2x: dev 79.0 twice (2.1x, 2.3x): the faster; test figures (60.0 there) play no part
    assert choose(points, At("layers", 2.0)) == 3
    assert choose(points, At("layers", 1.5)) == 4
    assert choose(points, At("layers", 3.0)) is None  # not reached on dev
    # the FLOPs axis is its own
    flops = [dict(p, dev_flops_speedup=1.0) for p in points]
    flops[2]["dev_flops_speedup"] = 2.0
    assert choose(flops, At("flops", 2.0)) == 2
    with pytest.raises(ValueError):
        At("wall", 2.0)


def test_each_rule_chooses_among_its_own_points():
    points = [pt(80.0, 1.0, 79.0, 1.0, policy="none"), pt(76.0, 2.1, 75.0, 2.0),
              pt(78.0, 2.2, 77.0, 2.1, policy="per_exit_entropy"), pt(79.0, 1.6, 78.0, 1.6, policy="patience")]
    assert choose(points, At("layers", 2.0)) == 1  # the better per-exit point is not the published rule's
    assert choose(points, At("layers", 2.0, "per_exit")) == 2
    assert choose(points, At("layers", 1.5, "per_exit")) == 2 and choose(points, At("layers", 1.5)) == 3
    assert str(At("layers", 2.0, "per_exit")) == "2x per-exit"
    with pytest.raises(ValueError, match="unknown exit rule"):
        At("layers", 2.0, "oracle")


def make_run(method, seed, points, correct):
    correct = np.asarray(correct, dtype=bool)
    n = correct.shape[1]
    return Run(method, seed, {"points": points, "test_oracle": {"layer_speedup": 3.0}, "train_seconds": 60.0,
                              "layers": 6},
               Outcomes(np.arange(n), correct, np.ones_like(correct, dtype=np.int16)))


def two_methods(gains, n=400, base_acc=0.75):
    """LeeBERT and PABEE runs over len(gains) seeds: at 2x on dev, LeeBERT's test answers are PABEE's
    with ``gains[s]`` x n/100 more right (fewer when negative), so its test accuracy differs by
    exactly ``gains[s]``."""
    rng = np.random.default_rng(7)
    lee, pab = {}, {}
    for s, gain in enumerate(gains, start=1):
        full = rng.random(n) < base_acc
        fast_p = full.copy()
        fast_p[np.flatnonzero(full)[:40]] = False  # PABEE loses 10 points at 2x
        fast_l = fast_p.copy()
        k = int(round(abs(gain) * n / 100))
        if gain >= 0:
            fast_l[np.flatnonzero(~fast_p)[:k]] = True
        else:
            fast_l[np.flatnonzero(fast_p)[:k]] = False
        acc = lambda c: 100.0 * c.mean()  # noqa: E731
        pts_p = [pt(80, 1.0, acc(full), 1.0, "none"), pt(70, 2.0, acc(fast_p), 2.0)]
        pts_l = [pt(80, 1.0, acc(full), 1.0, "none"), pt(75, 2.0, acc(fast_l), 2.0)]
        pab[s] = make_run("pabee", s, pts_p, [full, fast_p])
        lee[s] = make_run("leebert", s, pts_l, [full, fast_l])
    return lee, pab


def test_realised_speedup_averages_layers_not_ratios():
    """One seed whose gates skip nearly every layer (600x) must not stand for the method: the seeds'
    mean layers (3, 3, 0.01) give 6 / 2.0033 = 3.0x, where a mean of speed-ups would say 201x."""
    runs = [make_run("smartbert", s, [pt(80, 1.0, 70.0, 1.0, "none"), pt(75, 2.0, 70.0, speed)], [[True], [True]])
            for s, speed in enumerate((2.0, 2.0, 600.0), start=1)]
    cell = realised_speedup(runs, At("layers", 2.0))
    assert cell.startswith(f"{6 / ((3 + 3 + 0.01) / 3):.2f}x (2.00 ± ") and cell.endswith(" layers)")
    runs.append(make_run("smartbert", 4, [pt(80, 1.0, 70.0, 1.0, "none")], [[True]]))  # never reached 2x on dev
    assert realised_speedup(runs, At("layers", 2.0)) == "not reached"


def test_across_shows_the_runs_asked_for_in_every_folder(tmp_path):
    lee, pab = two_methods([2.0, 2.5])
    T2 = ABLATIONS["temperature"][0]
    for folder, names in (("small", ("leebert", "pabee", T2.name)), ("large", ("leebert",))):
        for name in names:
            for seed, run in (lee if name != "pabee" else pab).items():
                save = tmp_path / folder / name / f"seed{seed}"
                save.mkdir(parents=True)
                (save / "result.json").write_text(json.dumps(run.result))
                run.outcomes.save(save / "outcomes.npz")
    outs = [tmp_path / "small", tmp_path / "large"]
    columns = across_columns(outs, ["full_ft", "pabee", "leebert"])
    assert list(columns) == [str(o) for o in outs]
    assert [list(c) for c in columns.values()] == [["full_ft", "pabee", "leebert"]] * 2  # no variant; asked order
    assert columns[str(outs[1])]["pabee"] == [] and [r.seed for r in columns[str(outs[0])]["pabee"]] == [1, 2]
    # rows follow the order asked, even when the first folder lacks a method
    rows = [line.split(" | ")[0] for line in across_tables(across_columns(outs[::-1], ["pabee", "leebert"], [T2.name]))
            if "| full depth |" in line and " - " not in line.split(" | ")[0]]
    assert rows == ["| pabee", "| leebert", f"| {T2.name}"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=f"no finished runs of leebert in {tmp_path / 'empty'}"):
        across_columns([outs[0], tmp_path / "empty"], ["leebert"])
    with pytest.raises(UsageError, match="no folder holds finished runs of leebert-T4"):
        across_columns(outs, ["leebert"], [ABLATIONS["temperature"][1].name])


def test_the_ablation_figure_draws_each_group_s_variants_beside_their_method_as_seed_means(tmp_path):
    """A panel per ablation group with a variant whose method is there, in the ablations' order;
    each point is the seeds' mean accuracy at the test speed-up of their mean layers, as the tables."""
    runs = [make_run("leebert", s, [pt(80, 1.0, 70.0, 1.0, "none"), pt(75, 2.0, acc, speed)], [[True], [True]])
            for s, acc, speed in ((1, 72.0, 2.0), (2, 74.0, 4.0))]
    x, acc = mean_point(runs, At("layers", 2.0))
    assert x == pytest.approx(6 / ((3 + 1.5) / 2)) and acc.mean == pytest.approx(73.0) and acc.n == 2
    assert mean_point(runs + [make_run("leebert", 3, [pt(80, 1.0, 70.0, 1.0, "none")], [[True]])],
                      At("layers", 2.0)) is None  # a seed that never reached 2x on dev
    lee, pab = two_methods([2.0, 2.5])
    lle, cls, pabee_cls, closed = (ABLATIONS["distill"][0], *ABLATIONS["exit_pooling"], ABLATIONS["smartbert_gates"][0])
    shown = {"leebert": list(lee.values()), "pabee": list(pab.values()), pabee_cls.name: list(pab.values()),
             lle.name: list(lee.values()), cls.name: list(lee.values()), closed.name: list(lee.values())}
    path = tmp_path / "ablations.png"
    # asked in another order; smartbert-closed has no smartbert runs to stand beside: no panel
    assert plot_ablations(shown, [pabee_cls, closed, cls, lle], path) == ["distill", "exit_pooling"]
    assert path.stat().st_size > 1000
    assert plot_ablations(shown, [], tmp_path / "none.png") == [] and not (tmp_path / "none.png").exists()


def test_comparison_pairs_by_seed_and_by_example():
    lee, pab = two_methods([2.0, 2.5, 3.0, 2.0, 2.5])
    c = compare(lee, pab, At("layers", 2.0), At("layers", 2.0), reps=300)
    assert c.seeds == [1, 2, 3, 4, 5] and c.over_seeds.mean == pytest.approx(2.4)
    assert c.over_seeds.excludes_zero() and c.verdict() == "leebert better"
    assert [iv.mean for iv in c.per_seed] == pytest.approx([2.0, 2.5, 3.0, 2.0, 2.5])
    assert all(iv.low > 0 for iv in c.per_seed)  # A is right wherever B is, and then some
    no_boot = compare(lee, pab, At("layers", 2.0), At("layers", 2.0), reps=0)  # --across: seeds only
    assert no_boot.per_seed == [] and no_boot.over_seeds == c.over_seeds
    # full depth: the same answers, a tie
    same = compare(lee, pab, FULL, FULL, reps=100)
    assert same.over_seeds.mean == 0.0 and same.verdict() == "tie"
    # only the seeds both have are paired
    del pab[5]
    assert compare(lee, pab, At("layers", 2.0), At("layers", 2.0), reps=50).seeds == [1, 2, 3, 4]
    # a seed that does not reach 3x makes the comparison "not reached", not a smaller sample
    far = compare(lee, pab, At("layers", 3.0), At("layers", 3.0), reps=50)
    assert far.over_seeds is NOT_REACHED and far.verdict() == "not reached"
    # runs tested on other examples are refused
    lee[1].outcomes.ids = lee[1].outcomes.ids + 1
    with pytest.raises(ValueError, match="different examples"):
        compare(lee, pab, At("layers", 2.0), At("layers", 2.0), reps=50)


def test_matrices_side_by_side_pair_within_each_column(tmp_path):
    small_lee, small_pab = two_methods([2.0, 2.5, 3.0, 2.0, 2.5])  # LeeBERT ahead at one size ...
    big_lee, big_pab = two_methods([0.5, 1.5, 0.0])  # ... a tie at the other
    columns = {"1k": {"leebert": list(small_lee.values()), "pabee": list(small_pab.values())},
               "3k": {"leebert": list(big_lee.values()), "pabee": list(big_pab.values())}}
    del columns["3k"]["pabee"][2:]  # 2 PABEE seeds at 3k: the column pairs 2 seeds
    lines = across_tables(columns)
    row = next(line for line in lines if line.startswith("| leebert - pabee | 2x |"))
    small, big = row.rstrip(" |").split(" | ")[2:4]
    assert small.startswith("+2.40 [") and small.endswith("(5 seeds; leebert better)")
    assert big.startswith("+1.00 [") and big.endswith("(2 seeds; no verdict under 3 seeds)")  # seed 3 has no PABEE run
    full = next(line for line in lines if line.startswith("| pabee | full depth |"))
    assert full.count("(5 seeds)") == 1 and full.count("(2 seeds)") == 1
    assert next(line for line in lines if line.startswith("| leebert - deebert | 2x |")).endswith("| - | - |")
    assert f"1k: Evaluation {VERSION}" in lines[-2] and lines[-1].startswith("3k: ")
    # no seed in common: nothing paired (not "not reached"); one seed: its value, no verdict
    columns["3k"]["pabee"] = [Run("pabee", 7, r.result, r.outcomes) for r in columns["3k"]["pabee"]]
    row = next(line for line in across_tables(columns) if line.startswith("| leebert - pabee | 2x |"))
    assert row.endswith("| no seed in common |")
    columns["3k"]["pabee"][0].seed = 1
    row = next(line for line in across_tables(columns) if line.startswith("| leebert - pabee | 2x |"))
    assert row.endswith(" (n=1) |") and "tie" not in row.split(" | ")[-1]
    # read back from records folders: the runs a matrix over them would reuse, by name and seed
    for name, runs in columns["1k"].items():
        for r, seed in zip(runs, (1, 10, 2)):
            save = tmp_path / "1k" / name / f"seed{seed}"
            save.mkdir(parents=True)
            (save / "result.json").write_text(json.dumps(r.result))
            r.outcomes.save(save / "outcomes.npz")
    (tmp_path / "1k" / "pabee" / "seed9").mkdir()  # unfinished: no record
    (tmp_path / "1k" / "pabee" / "seedlings").mkdir()  # not a seed folder
    back = read_records(tmp_path / "1k")
    assert {n: [r.seed for r in rs] for n, rs in back.items()} == {"leebert": [1, 2, 10], "pabee": [1, 2, 10]}
    assert back["pabee"][2].result["points"] == columns["1k"]["pabee"][1].result["points"]  # seed 10's record


def test_a_mean_shown_rounded_onto_a_target_s_floor_is_spelled_out():
    """+0.50 [+0.15, +0.85] -> MISSED reads as a contradiction: the line gives the unrounded mean."""
    lee, pab = two_methods([0.5, 0.5, 0.5, 0.5, 0.4875], n=8000)
    (line,) = target_lines({"leebert": lee, "pabee": pab}, [(TARGETS[1], "leebert")], reps=0)
    assert ": +0.50 [" in line and line.endswith("-> MISSED (mean 0.4975, under 0.5)"), line
    lee, pab = two_methods([0.4875] * 4 + [0.4625], n=8000)  # shown as +0.48: no note
    assert target_lines({"leebert": lee, "pabee": pab}, [(TARGETS[1], "leebert")], reps=0)[0].endswith("-> MISSED")


def test_noisy_differences_are_ties_and_targets_follow_their_rule():
    lee, pab = two_methods([3.0, -2.0, 2.5, -1.0, 0.5])
    text = summary({"leebert": list(lee.values()), "pabee": list(pab.values())}, "setting: unit", reps=100)
    row = next(line for line in text.splitlines() if line.startswith("| leebert - pabee | 2x |"))
    assert "| tie |" in row and "+0.60" in row
    assert "LeeBERT at least 0.5 points above PABEE at 2x, interval excluding 0: +0.60" in text
    assert text.rstrip().endswith("MISSED")
    beat, within = TARGETS[1], TARGETS[0]
    assert beat.met(Interval(0.8, 0.1, 1.5, 5)) and not beat.met(Interval(0.4, 0.1, 0.7, 5))
    assert not beat.met(Interval(0.8, -0.1, 1.7, 5))
    assert within.met(Interval(-0.1, -0.3, 0.1, 5)) and not within.met(Interval(0.0, -0.31, 0.31, 5))
    assert not within.met(NOT_REACHED) and not within.met(Interval(0.5, math.nan, math.nan, 1))
    # two seeds that agree: a zero-width interval that excludes 0, yet no winner and no target verdict
    lee, pab = two_methods([1.0, 1.0])
    text = summary({"leebert": list(lee.values()), "pabee": list(pab.values())}, "setting: two seeds", reps=50)
    row = next(line for line in text.splitlines() if line.startswith("| leebert - pabee | 2x |"))
    assert "+1.00 [+1.00, +1.00]" in row and "| no verdict under 3 seeds |" in row
    beat_line = next(line for line in text.splitlines() if "above PABEE at 2x" in line)
    assert beat_line.endswith("over 2 seeds -> no verdict under 3 seeds")
    assert beat.met(seed_interval([1.0, 1.0]))  # the rule alone would call it met


def test_outcomes_round_trip(tmp_path):
    o = Outcomes(np.arange(5), np.array([[True, False, True, True, False]]), np.array([[1, 2, 3, 4, 4]], dtype=np.int16))
    o.save(tmp_path / "outcomes.npz")
    back = Outcomes.load(tmp_path / "outcomes.npz")
    assert (back.correct == o.correct).all() and back.correct.dtype == bool and (back.layers == o.layers).all()
    assert not list(tmp_path.glob("*.part*"))


def test_every_run_trains_with_the_data_s_number_of_classes(tmp_path):
    m = Matrix(tmp_path, tmp_path / "out", ["pabee", "smartbert"], [1], Budget(2), 100, "exit_bert_tiny", 4, None,
               torch.device("cpu"), num_classes=20)
    for method in m.methods:
        assert [a for a in m.command(method, 1) if a.startswith("task.num_classes=")] == ["task.num_classes=20"]


def _one_finished_pabee_run(tmp_path, monkeypatch, never_evaluated: str, **record):
    """A pabee matrix of seed 1 whose run is finished: ``result.json`` (a record at full depth,
    updated with ``record``) and all-correct outcomes; training it again fails the test, and so does
    evaluating it (the reason: ``never_evaluated``). Returns the matrix, its save dir, the record,
    the outcomes and the matrix module (to patch further)."""
    import leebert_plugin.benchmark.matrix as matrix

    m = Matrix(tmp_path, tmp_path / "out", ["pabee"], [1], Budget(2), 100, "exit_bert_tiny", 4, None,
               torch.device("cpu"))
    save = m.save_dir("pabee", 1)
    save.mkdir(parents=True)
    record = dict({"method": "pabee", "seed": 1, "train_seconds": 9.0, "overrides": [],
                   "budget": m.budget_record("pabee"), "points": [pt(80, 1.0, 79, 1.0, "none")]}, **record)
    outcomes = Outcomes(np.arange(3), np.ones((1, 3), dtype=bool), np.ones((1, 3), dtype=np.int16))
    (save / "result.json").write_text(json.dumps(record))
    outcomes.save(save / "outcomes.npz")
    monkeypatch.setattr(matrix, "train", lambda *a: pytest.fail("a finished run was trained again"))
    monkeypatch.setattr(matrix, "evaluate", lambda *a, **k: pytest.fail(never_evaluated))
    return m, save, record, outcomes, matrix


def test_a_committed_record_of_an_older_evaluation_is_kept_without_its_checkpoint(tmp_path, monkeypatch):
    m, save, old, _, matrix = _one_finished_pabee_run(tmp_path, monkeypatch, "a run without its checkpoint was "
                                                      "re-evaluated", evaluation=1,
                                                      test_oracle={"layer_speedup": 2.0})
    said = []
    runs = run_matrix(m, log=said.append)
    assert runs["pabee"][0].result == old and "kept as evaluation 1 scored it" in said[0] and len(said) == 1
    # a run trained on another device is kept, and the matrix says so
    (save / "result.json").write_text(json.dumps(dict(old, device="cuda")))
    said.clear()
    runs = run_matrix(m, log=said.append)
    assert runs["pabee"][0].result["device"] == "cuda"
    assert "trained on cuda, kept in this --device cpu matrix" in said[1]
    # with its checkpoint, an older evaluation is redone; the device it trained on is carried over
    # (and left out for a record older than the field, rather than guessed)
    (save / "checkpoint_last.pt").write_bytes(b"a checkpoint")
    fresh = ({"evaluation": 99, "points": old["points"], "test_oracle": old["test_oracle"]},
             Outcomes(np.arange(3), np.ones((1, 3), dtype=bool), np.ones((1, 3), dtype=np.int16)))
    monkeypatch.setattr(matrix, "evaluate", lambda *a, **k: fresh)
    monkeypatch.setattr(matrix, "write_weights", lambda *a: False)  # the stand-in checkpoint holds no weights
    monkeypatch.setattr(matrix, "VERSION", 99)
    for before, after in (({"device": "cuda"}, "cuda"), ({}, None)):
        (save / "result.json").write_text(json.dumps(dict(old, **before)))
        redone = run_matrix(m, log=lambda line: None)["pabee"][0].result
        assert redone["evaluation"] == 99 and redone["train_seconds"] == 9.0 and redone.get("device") == after
        assert redone["budget"] == old["budget"]
        assert json.loads((save / "result.json").read_text()).get("device") == after
    # a change to the replayed grid leaves a gated run's real passes alone, not a replayed run's
    for gated, redo in ((True, False), (False, True)):
        (save / "result.json").write_text(json.dumps(dict(old, gated=gated, evaluation=GATED_SINCE)))
        said.clear()
        run_matrix(m, log=said.append)
        assert any("evaluating again" in line for line in said) == redo
    # with its traces, a run is scored again from them, not from its checkpoint, which may be gone
    (save / "checkpoint_last.pt").unlink()
    (save / "traces.npz").write_bytes(b"traces")
    monkeypatch.setattr(matrix, "evaluate", lambda *a, **k: pytest.fail("a run with traces was evaluated again"))
    monkeypatch.setattr(matrix, "load_traces", lambda path: {"read": path})
    monkeypatch.setattr(matrix, "score_traces", lambda traces: fresh if traces == {"read": save / "traces.npz"} else None)
    monkeypatch.setattr(matrix, "trace_format", lambda path: matrix.TRACE_FORMAT)
    (save / "result.json").write_text(json.dumps(old))
    said.clear()
    redone = run_matrix(m, log=said.append)["pabee"][0].result
    assert redone["evaluation"] == 99 and redone["train_seconds"] == 9.0 and redone["budget"] == old["budget"]
    assert said == ["benchmark: pabee seed 1: scoring again from its traces (evaluation 1 -> 99)"]
    # traces saved under another format, or beside a gated run, are not used
    for result, fmt in ((old, matrix.TRACE_FORMAT - 1), (dict(old, gated=True), matrix.TRACE_FORMAT)):
        monkeypatch.setattr(matrix, "trace_format", lambda path, fmt=fmt: fmt)
        (save / "result.json").write_text(json.dumps(result))
        said.clear()
        assert run_matrix(m, log=said.append)["pabee"][0].result == result
        assert "kept as evaluation 1 scored it" in said[0]


def test_a_run_records_its_budget_and_a_run_under_another_budget_is_refused(tmp_path, monkeypatch):
    data = tmp_path / "rt-bin-1k"
    m = Matrix(data, tmp_path / "out", ["pabee"], [1], Budget(2), 100, "exit_bert_tiny", 4, None, torch.device("cpu"))
    import leebert_plugin.benchmark.matrix as matrix
    outcomes = Outcomes(np.arange(3), np.ones((1, 3), dtype=bool), np.ones((1, 3), dtype=np.int16))
    fresh = {"evaluation": VERSION, "gated": True, "points": [pt(80, 1.0, 79, 1.0, "none")]}
    launched = []
    monkeypatch.setattr(matrix, "train", lambda m, name, seed: launched.append(
        json.loads((m.save_dir(name, seed) / "launch.json").read_text())) or 5.0)
    monkeypatch.setattr(matrix, "evaluate", lambda *a, **k: (fresh, outcomes))
    monkeypatch.setattr(matrix, "write_weights", lambda *a: False)  # no real checkpoint: no weights to record
    run_matrix(m, log=lambda line: None)
    path = m.save_dir("pabee", 1) / "result.json"
    budget = {"epochs": 2, "batch_size": 32, "lr": 5e-5, "exit_pooling": "mean", "exit_lr_scale": 10.0,
              "data": "rt-bin-1k", "num_classes": 2, "train_size": 100, "arch": "exit_bert_tiny", "pretrained": False}
    assert json.loads(path.read_text())["budget"] == budget
    assert launched == [{"overrides": [], "budget": budget}]  # written before training started
    monkeypatch.setattr(matrix, "train", lambda *a: pytest.fail("a finished run was trained again"))
    said = []
    assert run_matrix(m, log=said.append)["pabee"][0].result["train_seconds"] == 5.0 and said == []
    others = ((replace(m, budget=Budget(3)), "epochs 2, not 3"),
              (replace(m, budget=Budget(2, lr=1e-4)), "lr 5e-05, not 0.0001"),
              (replace(m, budget=Budget(2, exit_pooling="cls")), "exit_pooling 'mean', not 'cls'"),
              (replace(m, data=tmp_path / "20ng-bin-1k", num_classes=20),
               "data 'rt-bin-1k', not '20ng-bin-1k'; num_classes 2, not 20"),
              (replace(m, train_size=300), "train_size 100, not 300"),
              (replace(m, restore="model.pt"), "pretrained False, not True"))
    for other, why in others:
        with pytest.raises(UsageError, match=f"result.json was trained with another budget \\({why}\\)"):
            run_matrix(other, log=said.append)
    # keys a record does not hold (an older record) are taken as the matrix's, with a line; keys it
    # holds and the matrix no longer has are not compared
    record = json.loads(path.read_text())
    del record["budget"]["data"], record["budget"]["num_classes"]
    record["budget"]["retired"] = 1
    path.write_text(json.dumps(record))
    other = replace(m, data=tmp_path / "20ng-bin-1k")
    assert run_matrix(other, log=said.append)["pabee"][0].result == record
    assert said == ["benchmark: pabee seed 1: its record does not say its data, num_classes: kept as trained under "
                    "this matrix's (delete its result.json to train it again if it was not)"]
    # a record with no budget at all, scored again, stays without one: nothing is guessed
    del record["budget"]
    path.write_text(json.dumps(dict(record, evaluation=1)))
    (path.parent / "checkpoint_last.pt").write_bytes(b"a checkpoint")
    said.clear()
    assert "budget" not in run_matrix(m, log=said.append)["pabee"][0].result
    assert "budget" not in json.loads(path.read_text()) and json.loads(path.read_text())["evaluation"] == VERSION
    assert "evaluating again (evaluation 1" in said[0] and "does not say its epochs, batch_size" in said[1]
    # the budget's exit pooling does not reach SmartBERT (its exits read what its config says): not
    # passed, not recorded, and a SmartBERT run recorded with it is not refused under another
    sm = replace(m, methods=["smartbert"], budget=Budget(2, exit_pooling="cls"))
    assert "exit_pooling" not in sm.budget_record("smartbert") and sm.budget_record("pabee")["exit_pooling"] == "cls"
    assert not [a for a in sm.command("smartbert", 1) if "exit_pooling" in a]
    save = sm.save_dir("smartbert", 1)
    save.mkdir(parents=True)
    (save / "result.json").write_text(json.dumps(dict(record, method="smartbert", evaluation=VERSION, gated=True,
                                                      budget={**m.budget_record("smartbert"), "exit_pooling": "mean"})))
    outcomes.save(save / "outcomes.npz")
    assert run_matrix(sm, log=said.append)["smartbert"][0].result["budget"]["exit_pooling"] == "mean"


def test_a_killed_run_resumes_only_as_it_was_launched(tmp_path, monkeypatch):
    """A run stopped mid-training resumes from its checkpoint: under another budget it would end as a
    mix of two budgets, recorded as the second, so it is refused before fairseq starts."""
    m = Matrix(tmp_path, tmp_path / "out", ["pabee"], [1], Budget(2), 100, "exit_bert_tiny", 4, None,
               torch.device("cpu"))
    import leebert_plugin.benchmark.matrix as matrix
    save = m.save_dir("pabee", 1)

    def killed(*a):
        (save / "checkpoint_last.pt").write_bytes(b"half way")
        raise KeyboardInterrupt

    monkeypatch.setattr(matrix, "train", killed)
    with pytest.raises(KeyboardInterrupt):
        run_matrix(m, log=lambda line: None)
    monkeypatch.setattr(matrix, "train", lambda *a: pytest.fail("resumed under another budget"))
    for other, why in ((replace(m, budget=Budget(3)), "another budget (epochs 2, not 3)"),
                       (replace(m, extra=["task.x=1"]), "overrides [], not ['task.x=1']")):
        with pytest.raises(UsageError, match=re.escape(f"{save} was launched with {why} and stopped before it "
                                                       "finished")):
            run_matrix(other, log=lambda line: None)
    resumed = []
    monkeypatch.setattr(matrix, "write_weights", lambda *a: False)  # no real checkpoint: no weights to record
    monkeypatch.setattr(matrix, "train", lambda *a: resumed.append(a[1:]) or 1.0)
    monkeypatch.setattr(matrix, "evaluate", lambda *a, **k: (
        {"evaluation": VERSION, "gated": True, "points": [pt(80, 1.0, 79, 1.0, "none")]},
        Outcomes(np.arange(3), np.ones((1, 3), dtype=bool), np.ones((1, 3), dtype=np.int16))))
    run_matrix(m, log=lambda line: None)
    assert resumed == [("pabee", 1)]
    # a checkpoint from before launches were recorded is resumed, with a line
    (save / "result.json").unlink()
    (save / "launch.json").unlink()
    said = []
    run_matrix(m, log=said.append)
    assert said[0] == ("benchmark: pabee seed 1: resuming a run launched before launches were recorded: taken as "
                       "launched under this matrix's budget") and (save / "launch.json").is_file()


def test_a_current_record_without_traces_gets_them_only_if_they_give_it_exactly(tmp_path, monkeypatch):
    m, save, record, outcomes, matrix = _one_finished_pabee_run(
        tmp_path, monkeypatch, "a current run was evaluated again", evaluation=VERSION, gated=False,
        points=[dict(pt(80, 1.0, 79, 1.0, "none"), thresholds=[0.1, 0.2])])
    traced, written = [], []
    monkeypatch.setattr(matrix, "traces_of", lambda ckpt, data, device: traced.append(ckpt) or {"traces": ckpt})
    monkeypatch.setattr(matrix, "save_traces", lambda path, traces: written.append((path, traces)))
    said = []
    run_matrix(m, log=said.append)  # no checkpoint: nothing to trace
    assert traced == [] and said == []
    torch.save({"model": {"w": torch.ones(64)}}, save / "checkpoint_last.pt")  # a whole torch archive
    whole = (save / "checkpoint_last.pt").read_bytes()
    # the traces give the record (its thresholds as a tuple, as score_traces makes them): written
    same = dict(record, points=[dict(record["points"][0], thresholds=(0.1, 0.2))])
    same = {k: v for k, v in same.items() if k not in ("method", "seed", "train_seconds", "overrides", "budget")}
    monkeypatch.setattr(matrix, "score_traces", lambda traces: (same, outcomes))
    run_matrix(m, log=said.append)
    assert written == [(save / "traces.npz", {"traces": save / "checkpoint_last.pt"})]
    assert said == ["benchmark: pabee seed 1: traces written (traced from its checkpoint; they give its record exactly)"]
    # a figure or an outcome that differs: nothing written, and the line says what differs
    other = Outcomes(np.arange(3), np.array([[True, False, True]]), np.ones((1, 3), dtype=np.int16))
    for fresh, what in (((dict(same, test_oracle={"layer_speedup": 2.0}), outcomes), "test_oracle"),
                        ((same, other), "outcomes.npz")):
        monkeypatch.setattr(matrix, "score_traces", lambda traces, fresh=fresh: fresh)
        written.clear()
        said.clear()
        (save / "traces.mismatch").unlink(missing_ok=True)
        assert run_matrix(m, log=said.append)["pabee"][0].result == record
        assert written == [] and said == [f"benchmark: pabee seed 1: its checkpoint's traces do not give its record "
                                          f"({what} differ): no traces written (traces.mismatch says so; delete it "
                                          "to try again)"]
        # ... and it is not traced again under the same evaluation
        traced.clear()
        said.clear()
        run_matrix(m, log=said.append)
        assert traced == [] and said == []
    # a damaged checkpoint (not a whole zip archive; the ones above were whole) is not traced: one
    # line, the matrix goes on
    (save / "traces.mismatch").unlink()
    (save / "checkpoint_last.pt").write_bytes(whole[: len(whole) // 2])
    monkeypatch.setattr(matrix, "traces_of", lambda *a: pytest.fail("a damaged checkpoint was traced"))
    said.clear()
    assert run_matrix(m, log=said.append)["pabee"][0].result == record
    assert said == ["benchmark: pabee seed 1: its checkpoint is damaged (not a whole zip archive): kept without traces"]
    # a gated run, or one whose traces are there in the current format, is left alone
    monkeypatch.setattr(matrix, "traces_of", lambda *a: pytest.fail("traced again"))
    (save / "result.json").write_text(json.dumps(dict(record, gated=True)))
    run_matrix(m, log=said.append)
    (save / "result.json").write_text(json.dumps(record))
    (save / "traces.npz").write_bytes(b"traces")
    monkeypatch.setattr(matrix, "trace_format", lambda path: matrix.TRACE_FORMAT)
    run_matrix(m, log=said.append)


def test_an_ablation_variant_is_its_method_with_its_overrides_in_its_own_folder(tmp_path):
    lle, cls = ABLATIONS["distill"][0], ABLATIONS["exit_pooling"][1]
    m = Matrix(tmp_path, tmp_path / "out", ["leebert", lle.name, cls.name], [3], Budget(2), 100, "exit_bert_tiny", 4,
               None, torch.device("cpu"), extra=["leebert:criterion.temperature=3.0", "pabee:task.d2_ratio=0.4"],
               variants={v.name: v for v in (lle, cls)})
    base, mine = m.command("leebert", 3), m.command(lle.name, 3)
    assert mine[mine.index("--config-name") + 1] == "sst_2_leebert"
    assert f"checkpoint.save_dir={tmp_path / 'out' / 'leebert-lle' / 'seed3'}" in mine
    assert "criterion.distill=lle" in mine and "criterion.distill=lle" not in base
    assert "criterion.temperature=3.0" in mine and "task.d2_ratio=0.4" not in mine  # extras follow the method
    pabee_cls = m.command(cls.name, 3)
    assert [a for a in pabee_cls if "exit_pooling" in a] == ["+model.exit_pooling=cls"]  # replaces the recipe's mean
    assert m.overrides_for(cls.name) == ["+model.exit_pooling=cls", "task.d2_ratio=0.4"]
    assert [v.name for v in variants(["meta", "distill", "meta"])] == ["leebert-darts2", "leebert-darts1", "leebert-lle"]
    assert [v.name for v in variants(["smartbert-closed", "distill", "leebert-lle", "leebert-wlr3e-2"])] == \
        ["smartbert-closed", "leebert-lle", "leebert-wlr3e-2"]  # single variants by name, each once
    assert len(variants(["all"])) == sum(len(v) for v in ABLATIONS.values())
    with pytest.raises(UsageError, match="unknown ablation 'lae'"):
        variants(["lae"])


def test_the_summary_keeps_variants_finished_by_earlier_invocations(tmp_path):
    """A variant not asked for now is summarised when every seed of the matrix has its record
    under the overrides it would get now, scored by the current evaluation, on its method's test
    examples; one missing seed, other overrides, an older evaluation, other data, or its method not
    in the matrix leave it out, with a line when it has records. Methods first, then the variants
    in the ablations' order, whatever order they were asked in."""
    lle, fixed, darts2, darts1, T2, T4, cls = (ABLATIONS["distill"][0], ABLATIONS["weights"][0], *ABLATIONS["meta"],
                                               *ABLATIONS["temperature"], ABLATIONS["exit_pooling"][1])
    kd = ABLATIONS["kd_weight"][0]
    m = Matrix(tmp_path, tmp_path / "out", ["leebert", "pabee", T2.name], [1, 2], Budget(2), 100, "exit_bert_tiny", 4,
               None, torch.device("cpu"), extra=["leebert:task.x=1"], variants={T2.name: T2})
    lee, pab = two_methods([2.0, 2.5])

    def record(name, seed, overrides, evaluation=VERSION, ids=None, **budget):
        save, run = m.save_dir(name, seed), lee[seed]
        save.mkdir(parents=True)
        (save / "result.json").write_text(json.dumps({**run.result, "overrides": overrides, "evaluation": evaluation,
                                                      **({"budget": {**m.budget_record(name.split("-")[0]), **budget}} if budget else {})}))
        Outcomes(run.outcomes.ids if ids is None else ids, run.outcomes.correct, run.outcomes.layers).save(
            save / "outcomes.npz")

    for seed in (1, 2):
        record(lle.name, seed, ["criterion.distill=lle", "task.x=1"])  # as the matrix would train it now
        record(darts1.name, seed, ["optimizer.mode=darts1"])  # trained without the extra override
        record(T4.name, seed, ["criterion.temperature=4.0", "task.x=1"], evaluation=VERSION - 1)
        record(cls.name, seed, ["+model.exit_pooling=cls"], epochs=2)  # this matrix's budget, recorded
        record(kd.name, seed, [*kd.overrides, "task.x=1"], epochs=1 + seed)  # seed 2 under another budget
    record(darts2.name, 1, ["optimizer.mode=darts2", "task.x=1"])  # seed 2 missing
    record(fixed.name, 1, [*fixed.overrides, "task.x=1"])
    record(fixed.name, 2, [*fixed.overrides, "task.x=1"], ids=lee[2].outcomes.ids + 1000)  # other test examples
    runs = {"leebert": [lee[1], lee[2]], "pabee": [pab[1], pab[2]], T2.name: [lee[1], lee[2]]}
    said = []
    shown_runs, shown = summary_runs(m, runs, variants(["all"]), log=said.append)
    assert list(shown_runs) == ["leebert", "pabee", lle.name, T2.name, cls.name]
    assert [v.name for v in shown] == [lle.name, T2.name, cls.name]
    assert [r.seed for r in shown_runs[lle.name]] == [1, 2] and shown_runs[lle.name][0].method == lle.name
    assert shown_runs[T2.name] is runs[T2.name]
    why = {line.split(":")[1].strip(): line for line in said if "left out" in line}
    assert set(why) == {fixed.name, darts2.name, darts1.name, T4.name, kd.name}
    assert "seed 2 was trained with another budget (epochs 3, not 2)" in why[kd.name]
    assert f"benchmark: {lle.name}: its records do not all say their arch, batch_size" in said[0]
    assert "no record of seed 2" in why[darts2.name] and "not ['optimizer.mode=darts1', 'task.x=1']" in why[darts1.name]
    assert f"evaluation {VERSION - 1}" in why[T4.name] and "other data" in why[fixed.name]
    assert said[-1].endswith(f"holds {lle.name}, {cls.name} (finished by earlier invocations)")
    text = summary(shown_runs, "setting: unit", reps=50, variants=shown)
    assert f"| {lle.name} - leebert | 2x |" in text and f"| {cls.name} - pabee | 2x |" in text
    no_pabee = {"leebert": runs["leebert"], T2.name: runs[T2.name]}
    assert list(earlier_variants(replace(m, methods=["leebert", T2.name]), variants(["all"]), no_pabee,
                                 log=said.append)) == [lle.name]


def test_ablations_compare_each_variant_with_its_method():
    lee, pab = two_methods([2.0, 2.5, 3.0, 2.0, 2.5])
    for r in lee.values():
        r.method = "leebert-x"
    variant = Variant("leebert-x", "pabee", ("criterion.x=1",))  # "leebert" plays pabee's variant here
    text = summary({"pabee": list(pab.values()), "leebert-x": list(lee.values())}, "setting: unit", reps=100,
                   variants=[variant, Variant("missing", "pabee", ())])
    rows = text.split("Ablations:")[1].splitlines()
    assert [r.split(" | ")[:2] for r in rows if r.startswith("| leebert-x")] == [
        ["| leebert-x - pabee", "full depth"], ["| leebert-x - pabee", "2x"], ["| leebert-x - pabee", "3x"]]
    assert "leebert-x better" in next(r for r in rows if "| 2x |" in r)
    assert not any("missing" in r for r in rows)
    # the targets of the method a variant stands in for ("leebert" here: its variant of "leebert"),
    # with the variant in its place, flagged as one of several tried
    lee_variant = Variant("leebert-x", "leebert", ())
    text = summary({"pabee": list(pab.values()), "leebert-x": list(lee.values())}, "setting: unit", reps=100,
                   variants=[lee_variant])
    swapped = text.split("Targets with a variant in its method's place")[1].splitlines()
    assert "one of the 1 variants tried" in swapped[0]
    assert any(line.startswith("- leebert-x in place of leebert: LeeBERT at least 0.5 points above PABEE at 2x")
               and line.endswith("-> met") for line in swapped)


def test_the_summary_names_runs_an_older_evaluation_scored():
    ok = make_run("pabee", 1, [pt(80, 1.0, 79, 1.0, "none")], [[True]])
    ok.result.update(evaluation=VERSION, gated=False)
    gated = make_run("smartbert", 1, [pt(70, 1.0, 69, 1.0, "none")], [[True]])
    gated.result.update(evaluation=GATED_SINCE, gated=True)
    assert "older evaluation" not in evaluation_line({"pabee": [ok], "smartbert": [gated]})
    stale = make_run("pabee", 2, [pt(80, 1.0, 79, 1.0, "none")], [[True]])
    stale.result.update(evaluation=GATED_SINCE, gated=False)  # a replayed run's grid changed since
    line = evaluation_line({"pabee": [ok, stale], "smartbert": [gated]})
    assert f"pabee seed 2 (evaluation {GATED_SINCE})" in line and "not like for like" in line
    assert "seed 1" not in line
    assert line in summary({"pabee": [ok, stale]}, "header", reps=10)


@pytest.mark.parametrize("variant", [v for vs in ABLATIONS.values() for v in vs], ids=lambda v: v.name)
def test_every_variant_composes_with_its_method_s_config(variant, tmp_path):
    """What hydra and fairseq do with a variant's command, on its method's yaml: a ``~key`` must
    name a key the yaml sets to a value (hydra refuses to delete a null or absent key: the fixed
    weights variant failed so once ``w_lr`` became null), and after a switch of optimizer every key
    left in the yaml's optimizer section must be one of the new optimizer's fields (fairseq
    refuses the others)."""
    import dataclasses

    import yaml
    from fairseq.optim import OPTIMIZER_DATACLASS_REGISTRY

    from helpers import ROOT

    m = Matrix(tmp_path, tmp_path / "out", [variant.name], [1], Budget(2), 100, "exit_bert_tiny", 4, None,
               torch.device("cpu"), variants={variant.name: variant})
    argv = m.command(variant.name, 1)
    cfg = yaml.safe_load((ROOT / "configs" / f"{argv[argv.index('--config-name') + 1]}.yaml").read_text())
    for override in argv[argv.index("--config-name") + 2:]:  # the recipe's, then the variant's
        key, _, value = override.lstrip("~+").partition("=")
        group, _, field = key.partition(".")
        if override.startswith("~"):
            assert cfg.get(group, {}).get(field) is not None, f"{override}: hydra cannot delete a null or absent key"
            del cfg[group][field]
        elif "$" not in value:
            cfg.setdefault(group, {})[field] = yaml.safe_load(value)
    fields = {f.name for f in dataclasses.fields(OPTIMIZER_DATACLASS_REGISTRY[cfg["optimizer"]["_name"]])}
    assert set(cfg["optimizer"]) <= fields, set(cfg["optimizer"]) - fields
