"""The learned loss weights' records of benchmark runs (weights.json), their table and their plot."""
import json

import pytest
from matplotlib.image import imread

from leebert_plugin.benchmark.plots import plot_weights
from leebert_plugin.benchmark.weights import WEIGHTS, read_weights, spread_table, write_weight_figures
from leebert_plugin.modules.loss_weights import spread


def synthetic_record(seed: int, updates=(0, 10, 20, 30)) -> dict:
    """A record as ``trajectory_of`` writes it: two CE terms, three KD terms, the third KD term
    weighted down a little more at every meta step."""
    names = ["ce_L1", "ce_L2", "kd_L1<L2", "kd_L2<L1", "kd_wrong"]
    start = [0.5, 0.5, 1 / 3, 1 / 3, 1 / 3]
    rows = []
    for i, _ in enumerate(updates, start=1):
        low = 1 / 3 * 0.8 ** i
        rows.append([0.5 + 0.01 * seed, 0.5 - 0.01 * seed, (1 - low) / 2, (1 - low) / 2, low])
    final = dict(zip(names, rows[-1]))
    return {"names": names, "groups": [n.split("_", 1)[0] for n in names], "start": start, "updates": list(updates),
            "weights": rows, "final": final, "spread": spread(final), "w_lr": 0.1, "planned_updates": 40}


def test_the_trajectory_plot_renders_one_panel_per_group(tmp_path):
    path = tmp_path / "weights.png"
    groups = plot_weights([(1, synthetic_record(1)), (2, synthetic_record(2))], path, "leebert")
    assert groups == ["ce", "kd"]
    image = imread(path)
    assert image.shape[1] > image.shape[0] > 200  # two panels side by side
    assert image[..., :3].std() > 0.05  # something drawn, not a blank canvas
    assert plot_weights([], tmp_path / "none.png", "nothing") == [] and not (tmp_path / "none.png").exists()


def test_the_figures_and_the_table_cover_every_run_with_records(tmp_path):
    records = {"leebert": [(1, synthetic_record(1)), (2, synthetic_record(2))], "leebert-lle": [(1, synthetic_record(1))]}
    assert write_weight_figures(records, tmp_path) == ["weights_leebert.png", "weights_leebert-lle.png"]
    assert all((tmp_path / name).stat().st_size > 0 for name in ("weights_leebert.png", "weights_leebert-lle.png"))
    table = spread_table(records).splitlines()
    assert table[0].startswith("| run | term group | seeds | KL to uniform")
    rows = {tuple(cell.strip() for cell in line.split("|")[1:4]): line for line in table[2:]}
    assert set(rows) == {("leebert", "ce", "2"), ("leebert", "kd", "2"), ("leebert-lle", "ce", "1"), ("leebert-lle", "kd", "1")}
    kd = synthetic_record(1)["spread"]["kd"]
    assert f"{kd['max_min_ratio']:.2f} [{kd['max_min_ratio']:.2f}, {kd['max_min_ratio']:.2f}]" in rows[("leebert-lle", "kd", "1")]
    assert spread_table({}) == ""


def test_a_runs_record_is_read_back_from_its_folder(tmp_path):
    assert read_weights(tmp_path) is None
    (tmp_path / WEIGHTS).write_text(json.dumps(synthetic_record(3)))
    assert read_weights(tmp_path)["final"]["kd_wrong"] == pytest.approx(1 / 3 * 0.8 ** 4)


def test_the_matrix_reads_the_records_of_the_runs_that_learn_their_weights(tmp_path):
    import torch

    from leebert_plugin.benchmark.ablations import variants
    from leebert_plugin.benchmark.matrix import Matrix, _weights_missing, weight_records
    from leebert_plugin.benchmark.recipe import Budget

    fixed = variants(["leebert-fixed"])
    m = Matrix(tmp_path / "data", tmp_path / "out", ["leebert", "pabee", "leebert-fixed"], [1, 2], Budget(1), 100,
               "exit_roberta_tiny", 4, None, torch.device("cpu"), variants={v.name: v for v in fixed})
    for name in m.methods:
        for seed in m.seeds:
            save = m.save_dir(name, seed)
            save.mkdir(parents=True)
            torch.save({"model": {}}, save / "checkpoint_last.pt")  # an intact zip
    (m.save_dir("leebert", 2) / WEIGHTS).write_text(json.dumps(synthetic_record(2)))
    assert list(weight_records(m, m.methods)) == ["leebert"]
    assert [seed for seed, _ in weight_records(m, m.methods)["leebert"]] == [2]
    # only a LeeBERT run that learns its weights and has no record yet gets one from its checkpoint
    assert _weights_missing(m, "leebert", 1) and not _weights_missing(m, "leebert", 2)
    assert not _weights_missing(m, "pabee", 1) and not _weights_missing(m, "leebert-fixed", 1)
