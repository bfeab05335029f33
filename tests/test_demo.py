"""The main job's pieces (leebert_plugin/demo.py) on the tiny trained model, and the training progress bar."""
import sys

import pytest

from helpers import validate
from leebert_plugin import demo
from leebert_plugin.errors import UsageError
from leebert_plugin.runtime.launch import train_with_progress


def test_report_chooses_on_dev_and_its_full_depth_row_is_fairseq_validates(trained, mr_bin, tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "TARGET", 1.2)
    table = demo.report(tmp_path, trained / "checkpoint_best.pt", mr_bin, "cpu")
    full = validate(trained, mr_bin, subset="test")
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in table.splitlines() if line.startswith("| ")}
    assert f"{full['accuracy']:.2f}" == rows["full depth"][0].strip()
    early = rows["early exit"]
    assert float(early[2].strip().rstrip("x")) >= 1.0 and float(early[1]) < 4.0  # fewer layers than full depth
    assert (tmp_path / "pareto.png").stat().st_size > 1000


def test_no_threshold_reaching_the_target_is_said_plainly(trained, mr_bin, tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "TARGET", 1000.0)
    assert "no threshold reached 1000x on dev" in demo.report(tmp_path, trained / "checkpoint_best.pt", mr_bin, "cpu")


def test_train_with_progress_logs_everything_and_counts_updates(tmp_path, capfd):
    script = ("import sys\n"
              "for n in (5, 10, 15):\n"
              "    print('[x][train_inner][INFO] - {\"epoch\": 1, \"num_updates\": \"%d\"}' % n, flush=True)\n"
              "print('stderr line', file=sys.stderr)\n"
              "sys.exit(3)\n")
    code, seconds = train_with_progress([sys.executable, "-c", script], tmp_path / "log", 15, "probe")
    log = (tmp_path / "log").read_text()
    assert code == 3 and seconds > 0
    assert log.count("num_updates") == 3 and "stderr line" in log
    assert "15/15" in capfd.readouterr().err  # the bar reached its total


def test_a_rerun_with_other_settings_is_refused(tmp_path):
    demo.same_settings(tmp_path, {"train_rows": 6000, "epochs": 1, "seed": 1})
    demo.same_settings(tmp_path, {"train_rows": 6000, "epochs": 1, "seed": 1})  # the same: goes on
    with pytest.raises(UsageError, match=r"train_rows=6000 \(now 4000\)"):
        demo.same_settings(tmp_path, {"train_rows": 4000, "epochs": 1, "seed": 1})
