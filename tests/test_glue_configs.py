"""The generated GLUE configs: in sync with their generator, and usable as they are."""
import shutil

import pytest
import yaml

from conftest import hydra_train
from helpers import BIN, ROOT, json_records, run
from leebert_plugin.data.glue_configs import names, write_or_check

GLUE = [p for p in sorted((ROOT / "configs").glob("*.yaml")) if not p.name.startswith("mr_")]
DEMO = sorted((ROOT / "configs").glob("mr_*.yaml"))


def test_committed_configs_match_the_generator(tmp_path):
    proc = run([str(BIN / "python"), "scripts/make_glue_configs.py", "--check"])
    assert proc.returncode == 0, proc.stderr
    for path in GLUE:
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "rte_leebert.yaml").write_text((tmp_path / "rte_leebert.yaml").read_text().replace("w_lr: null", "w_lr: 0.1"))
    (tmp_path / "wnli_deebert.yaml").unlink()
    assert write_or_check(tmp_path, check=True) == ["rte_leebert.yaml", "wnli_deebert.yaml"]  # hand edits are caught
    assert len(GLUE) == len(list(names())) == 34  # 9 tasks x 4 methods, no two-stage STS-B


def test_glue_configs_train_where_fairseq_finds_and_only_the_demos_force_the_cpu():
    assert GLUE and DEMO
    for path in GLUE:
        assert "cpu" not in yaml.safe_load(path.read_text())["common"], path.name
    for path in DEMO:
        assert yaml.safe_load(path.read_text())["common"]["cpu"] is True, path.name


@pytest.mark.parametrize("name", ["rte_leebert", "sts_b_multi_exit", "mrpc_smartbert"])
def test_a_glue_config_trains_with_only_paths_and_size_overridden(name, mr_bin, tmp_path):
    """The user's own command, shrunk to the tiny model and a few updates on the bundled data, on
    the device fairseq finds (one worker: several GPUs would start one process each)."""
    regression = name.startswith("sts_b")
    data = tmp_path / "data"
    shutil.copytree(mr_bin, data)
    overrides = [f"task.data={data}", f"checkpoint.save_dir={tmp_path}",
                 "checkpoint.restore_file=checkpoint_last.pt", "distributed_training.distributed_world_size=1",
                 "model._name=exit_roberta_tiny", "task.max_positions=256", "optimization.max_update=3",
                 "lr_scheduler.warmup_updates=1", "common.log_interval=1", "dataset.num_workers=0"]
    if regression:  # the bundled labels are 0/1 numbers: a fine regression target
        for split in ("train", "valid"):
            shutil.copy(data / "raw" / f"{split}.label", data / "label" / f"{split}.label")
    if name.endswith("_smartbert"):  # 3 updates end inside stage 1 (5 epochs): asked for on purpose
        overrides += ["task.stage1_only=true", "optimization.max_epoch=5"]
    proc = hydra_train(name, *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json_records(proc.stdout, "train_inner")
    assert len(records) == 3
    expected = {"rte_leebert": "kd_L1<L4", "sts_b_multi_exit": "mse_L4", "mrpc_smartbert": "gate_reg"}[name]
    assert expected in records[-1]
