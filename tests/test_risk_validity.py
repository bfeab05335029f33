"""The validity benchmark of the guarantee: its shortcuts equal the slow, plain computations, and on
traces whose true risks are known it finds the guaranteed rule within its level."""
import math

import numpy as np
import pytest
import torch

from helpers import BIN, assert_one_clear_error, run
from leebert_plugin.benchmark import risk_validity as rv
from leebert_plugin.exits.calibrate import thresholds_for_levels, thresholds_from_scores
from leebert_plugin.exits.evaluate import ExitTrace, replay, save_traces
from leebert_plugin.exits.policies import build_policy
from test_risk_control import TAUS, TRUE_RISK, synthetic_trace

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("ties", [False, True])
def test_all_levels_at_once_equal_one_level_at_a_time(ties):
    rng = np.random.default_rng(0)
    for _ in range(15):
        E, n = int(rng.integers(2, 7)), int(rng.integers(1, 300))
        h = torch.from_numpy(rng.random((E, n)).astype(np.float32))
        if ties:
            h = torch.round(h * 10) / 10
        right = torch.from_numpy(rng.random((E, n)) < rng.random())
        alphas = list(rng.random(6)) + [0.0, 1.0]
        one_by_one = np.array([thresholds_from_scores(h, right, a) for a in alphas])
        assert np.array_equal(thresholds_for_levels(h, right, alphas), one_by_one)


def random_trace(n=300, exits=4, classes=3, seed=0) -> ExitTrace:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(exits, n, classes, generator=g) * torch.linspace(0.5, 3, exits).view(-1, 1, 1)
    return ExitTrace(logits, torch.randint(classes, (n,), generator=g), torch.full((n,), 8), [2, 4, 6, 8][:exits], 8, 1,
                     False)


def test_the_vectorised_per_exit_decision_is_the_policys_replay():
    t = random_trace()
    h = rv.normalized_entropies(t)
    taus = torch.tensor([[0.2, 0.5, 0.9], [0.0, 0.0, 0.0], [1.0, 0.3, 0.0], [0.6, 0.6, 1.0]])
    exits = rv.per_exit_exits(h, taus)
    for row, e in zip(taus, exits):
        assert torch.equal(e, replay(build_policy("per_exit_entropy", 3, thresholds=row.tolist()), t))


def test_the_split_sums_equal_a_plain_count_on_each_part():
    t = random_trace(n=200)
    o = rv.global_outcomes(t, "normalized_entropy")
    cal = rv.split_masks(200, 7, 0.5, seed=1)
    s = rv.sums(o, cal)
    chosen = np.array([0, 50, 120, 199, -1, 10, 150])
    drop, speed = rv.held_out(s, chosen)
    for i, c in enumerate(chosen):
        held = cal[i] == 0
        assert held.sum() == 100 and s.n == 100
        if c < 0:
            assert drop[i] == 0 and speed[i] == 1
            continue
        plain_drop = o.correct_full[held].mean() - o.correct[c, held].mean()
        plain_speed = 8 / o.layers[c, held].mean()
        assert drop[i] == pytest.approx(plain_drop) and speed[i] == pytest.approx(plain_speed)
        part = cal[i] == 1
        assert s.loss["disagreement"][c, i] == o.loss["disagreement"][c, part].sum()


def test_on_known_risks_the_guaranteed_rule_exceeds_d_less_often_than_delta_and_the_point_estimate_more():
    """The synthetic traces of test_risk_control: the true drop of each threshold is known; the
    held-out part is large (23,000), so its realised drop is the true one up to about 0.1 point."""
    t = synthetic_trace(24_000, np.random.default_rng(5))
    cal = rv.split_masks(24_000, 300, 1 / 24, seed=2)  # 1,000 to calibrate on
    o = rv.outcomes(t, torch.stack([replay(build_policy("normalized_entropy", 2, tau), t) for tau in TAUS]))
    s = rv.sums(o, cal)
    level, confidence = 0.02, 0.9
    g_drop, _ = rv.held_out(s, rv.choose_guaranteed(s, "disagreement", level, confidence))
    p_drop, _ = rv.held_out(s, rv.choose_point(s, level))
    assert np.mean(g_drop > level) <= 0.1 + 3 * math.sqrt(0.09 / 300)
    assert np.mean(p_drop > level) > 0.2  # TRUE_RISK[7] = 2.2%: the point estimate takes it a third of the time
    assert TRUE_RISK[7] > level > TRUE_RISK[6]


def _records(tmp_path):
    rng = np.random.default_rng(6)
    for seed in (1, 2):
        folder = tmp_path / "rec" / "leebert" / f"seed{seed}"
        folder.mkdir(parents=True)
        save_traces(folder / "traces.npz", {"dev": synthetic_trace(600, rng), "test": synthetic_trace(600, rng)})
    return tmp_path / "rec"


def test_the_script_writes_the_table_the_cells_and_the_plot(tmp_path):
    rec = _records(tmp_path)
    out = tmp_path / "out"
    proc = run([str(BIN / "python"), "scripts/risk_validity.py", "--records", f"synthetic={rec}", "--methods", "leebert",
                "--splits", "30", "--per-exit-splits", "10", "--max-drops", "2", "5", "--confidences", "0.9", "--policies", "normalized_entropy",
                "per_exit_entropy", "--table", str(out / "t.md"), "--tsv", str(out / "c.tsv"), "--plot", str(out / "p.png")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (out / "t.md").read_text().splitlines()
    assert len(table) == 2 + 2 * 2 * 2  # header, rule, 2 policies x 2 risks x 2 D
    assert all(line.startswith("| synthetic |") for line in table[2:])
    assert (out / "p.png").stat().st_size > 10_000
    rows = (out / "c.tsv").read_text().splitlines()
    assert rows[0].split("\t") == rv.COLUMNS and len(rows) == 9
    cells = [dict(zip(rv.COLUMNS, r.split("\t"))) for r in rows[1:]]
    assert all(c["runs"] == "2" and c["splits"] == ("10" if c["policy"] == "per_exit_entropy" else "30") for c in cells)


@pytest.mark.parametrize("args, words", [
    (["--records", "nofolder"], ["--records", "'nofolder' is not NAME=FOLDER"]),
    (["--records", "x=/nonexistent"], ["no traces.npz"]),
    (["--max-drops", "0"], ["--max-drops", "0 is at or below 0"]),
    (["--policies", "none"], ["cannot be calibrated"]),
])
def test_bad_validity_arguments_are_one_line(tmp_path, args, words):
    rec = _records(tmp_path)
    cmd = [str(BIN / "python"), "scripts/risk_validity.py", "--records", f"s={rec}", "--methods", "leebert",
           "--splits", "5", "--table", str(tmp_path / "t.md"), "--tsv", str(tmp_path / "c.tsv"),
           "--plot", str(tmp_path / "p.png"), *args]
    assert_one_clear_error(run(cmd), *words)
    assert not (tmp_path / "t.md").exists()


def test_earlier_outputs_are_kept_without_overwrite(tmp_path):
    (tmp_path / "t.md").write_text("earlier")
    cmd = [str(BIN / "python"), "scripts/risk_validity.py", "--splits", "5", "--table", str(tmp_path / "t.md"),
           "--tsv", str(tmp_path / "c.tsv"), "--plot", str(tmp_path / "p.png")]
    assert_one_clear_error(run(cmd), "already exist", "--overwrite")
    assert (tmp_path / "t.md").read_text() == "earlier"
