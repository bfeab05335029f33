"""Two-stage budgets: every shipped two-stage config reaches stage 2 on its data, the refusal of a
budget that ends inside stage 1, and each stage's own learning-rate schedule, by hand."""
import math

import pytest
import yaml

from helpers import ROOT
from leebert_plugin.data.glue_tasks import TRAIN_SIZES
from leebert_plugin.errors import UsageError
from leebert_plugin.tasks.stage_schedule import StagePlan, check_stage_epochs, linear_warmup_decay, updates_per_epoch
from leebert_plugin.tasks.two_stage import trained_epoch

# the bundled demo data (data/mr/train.tsv, a header line and one snippet a line) and GLUE's
CONFIG_DATA = {"mr": sum(1 for _ in open(ROOT / "data" / "mr" / "train.tsv")) - 1,
               "cola": TRAIN_SIZES["CoLA"], "sst_2": TRAIN_SIZES["SST-2"], "mrpc": TRAIN_SIZES["MRPC"],
               "qqp": TRAIN_SIZES["QQP"], "mnli": TRAIN_SIZES["MNLI"], "qnli": TRAIN_SIZES["QNLI"],
               "rte": TRAIN_SIZES["RTE"], "wnli": TRAIN_SIZES["WNLI"]}


def two_stage_configs():
    found = []
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        if cfg["task"].get("stage1_epochs", 0) > 0:
            found.append((path.stem, cfg))
    return found


def test_the_two_stage_configs_are_the_smartbert_and_deebert_ones():
    names = {name for name, _ in two_stage_configs()}
    assert len(names) == 18 and all(n.endswith(("_smartbert", "_deebert")) for n in names)  # 8 GLUE tasks + mr, each


@pytest.mark.parametrize("name, cfg", two_stage_configs(), ids=[n for n, _ in two_stage_configs()])
def test_every_two_stage_config_trains_at_least_one_stage_2_epoch_on_its_data(name, cfg):
    """From the task's training-set size and the config's batch (one GPU; a batch that
    dataset.max_tokens splits only adds updates to every epoch alike): stage 2 starts after
    stage1_epochs x ceil(n / batch) updates and max_update leaves it at least one epoch."""
    task = name.rsplit("_", 1)[0]
    opt, stages = cfg["optimization"], cfg["task"]
    per_epoch = math.ceil(CONFIG_DATA[task] / cfg["dataset"]["batch_size"])
    plan = StagePlan(per_epoch, stages["stage1_epochs"], opt["max_epoch"], opt.get("max_update", 0))
    plan.check(stage1_only=False)
    assert plan.stage2_updates >= per_epoch, (name, plan)
    if name.endswith("_smartbert"):  # soft gates first, at least one hard-gated epoch at the end of stage 1
        assert 0 < stages["soft_gate_epochs"] < stages["stage1_epochs"]


def test_the_glue_smartbert_configs_train_the_authors_5_plus_4_epochs_at_batch_16():
    for name, cfg in two_stage_configs():
        if name.endswith("_smartbert") and not name.startswith("mr_"):
            per_epoch = math.ceil(CONFIG_DATA[name.rsplit("_", 1)[0]] / 16)
            assert cfg["dataset"]["batch_size"] == 16 and cfg["optimization"]["max_epoch"] == 9
            assert cfg["optimization"]["max_update"] == 9 * per_epoch  # all 9 epochs, not fairseq's batch-32 figure
            assert cfg["lr_scheduler"] == {"_name": "two_stage_linear", "warmup_updates": 10}


def test_updates_per_epoch_counts_the_last_short_group():
    assert updates_per_epoch(26, 1) == 26 and updates_per_epoch(26, 4) == 7 and updates_per_epoch(24, 4) == 6


def test_stage_plan_arithmetic():
    plan = StagePlan(updates_per_epoch=10, stage1_epochs=3, max_epoch=5, max_update=45)
    assert plan.stage2_start == 30 and plan.last_update == 45  # max_update ends before max_epoch's 50
    assert plan.stage1_updates == 30 and plan.stage2_updates == 15
    assert StagePlan(10, 3, 5, 0).last_update == 50 and StagePlan(10, 3, 0, 0).last_update is None


def test_linear_warmup_decay_is_the_authors_schedule():
    # W = 2, T = 10: 0, 1/2, then (10 - s) / 8
    assert [linear_warmup_decay(s, 2, 10) for s in range(11)] == \
        [0.0, 0.5, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8, 0.0]
    assert linear_warmup_decay(0, 0, 4) == 1.0 and linear_warmup_decay(5, 0, 4) == 0.0  # no warm-up; past the end
    assert linear_warmup_decay(7, 2, None) == 1.0  # an unbounded stage does not decay


def test_each_stage_restarts_its_warmup_and_decays_to_zero_at_its_end():
    plan = StagePlan(updates_per_epoch=4, stage1_epochs=2, max_epoch=3)  # stage 1: 8 updates, stage 2: 4
    factors = [plan.lr_factor(n, 2) for n in range(12)]
    assert factors[:8] == [0.0, 0.5, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6]
    assert factors[8:] == [0.0, 0.5, 1.0, 0.5]  # fresh warm-up, then (4 - s) / 2


def test_a_budget_ending_inside_stage_1_is_refused_naming_both_values_stage_2_and_the_fix():
    plan = StagePlan(updates_per_epoch=4210, stage1_epochs=5, max_epoch=9, max_update=18842)  # the old SST-2 config
    with pytest.raises(UsageError) as err:
        plan.check(stage1_only=False)
    line = str(err.value)
    for words in ("optimization.max_update=18842", "optimization.max_epoch=9", "inside stage 1",
                  "stage 2 would start at epoch 6, after update 21050", "at least 25260",
                  "37890 for all 9 epochs", "task.stage1_only=true"):
        assert words in line, line
    assert "\n" not in line
    plan.check(stage1_only=True)  # stage 1 alone, asked for


def test_stage1_only_refuses_a_budget_that_goes_past_stage_1():
    with pytest.raises(UsageError, match=r"task.stage1_only=true, and .* goes on past stage 1 .*epoch 6"):
        StagePlan(10, 5, 9, 0).check(stage1_only=True)
    with pytest.raises(UsageError, match="goes on past stage 1"):
        StagePlan(10, 5, 0, 0).check(stage1_only=True)  # unbounded
    StagePlan(10, 5, 9, 0).check(stage1_only=False)


def test_max_epoch_is_checked_at_setup():
    with pytest.raises(UsageError, match=r"max_epoch=5 with optimization.max_update=0 ends inside stage 1 .*"
                                         r"epoch 6.*at least 6.*task.stage1_only=true"):
        check_stage_epochs(5, 5, 0, stage1_only=False)
    check_stage_epochs(5, 5, 0, stage1_only=True)
    check_stage_epochs(5, 0, 0, stage1_only=False)  # no max_epoch: max_update is checked with the epoch iterator
    with pytest.raises(UsageError, match="goes on past stage 1"):
        check_stage_epochs(5, 9, 0, stage1_only=True)


def test_the_kept_stage_1_epoch_is_read_from_the_checkpoint_s_data_position():
    # fairseq saves an epoch's end as the next epoch, none of its batches done
    assert trained_epoch({"extra_state": {"train_iterator": {"epoch": 4, "iterations_in_epoch": 0}}}) == "3"
    assert trained_epoch({"extra_state": {"train_iterator": {"epoch": 4, "iterations_in_epoch": 7}}}) == \
        "4, after 7 of its batches"
    assert trained_epoch({"model": {}}) == ""
