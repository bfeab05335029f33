"""Options checked before any work: NaN and infinity in any option are refused in one line, in hydra's and
argparse's configs alike; a class count against the data's labels."""
from argparse import Namespace

import pytest
from omegaconf import OmegaConf

from leebert_plugin.errors import UsageError
from leebert_plugin.runtime.option_checks import RANGES, check_options


@pytest.mark.parametrize("cfg", [
    OmegaConf.create({"kd_weight": float("nan"), "temperature": 1.0}),
    Namespace(kd_weight=float("nan"), temperature=1.0),
    {"kd_weight": float("nan")},
])
def test_nan_is_refused_in_every_kind_of_config(cfg):
    with pytest.raises(UsageError, match=r"criterion\.kd_weight=nan is not a finite number"):
        check_options("criterion", cfg)


def test_infinity_inside_a_list_is_refused_and_finite_values_pass():
    with pytest.raises(UsageError, match=r"optimizer\.lr=\[.*inf\] is not a finite"):
        check_options("optimizer", OmegaConf.create({"lr": [1e-3, float("inf")], "w_lr": 3e-3}))
    check_options("optimizer", OmegaConf.create({"lr": [1e-3], "xi": -1.0, "name": "clo", "steps": 3,
                                                        "nested": {"x": float("nan")}, "unset": None}))


@pytest.mark.parametrize("group, key, value, words", [
    ("optimizer", "w_lr", -0.1, "optimizer.w_lr=-0.1 must be positive"),
    ("optimizer", "fd_eps", 0.0, "optimizer.fd_eps=0.0 must be positive"),
    ("optimizer", "w_weight_decay", -1e-3, "optimizer.w_weight_decay=-0.001 is negative"),
    ("optimizer", "w_update_interval", 0, "optimizer.w_update_interval=0 is below 1"),
    ("task", "stage1_epochs", -1, "task.stage1_epochs=-1 is negative"),
    ("task", "d2_ratio", 1.0, r"task.d2_ratio=1.0 is outside \(0, 1\)"),
    ("model", "skip_threshold", 0.0, r"model.skip_threshold=0.0 is outside \(0, 1\]"),
    ("criterion", "temperature", 0.0, "criterion.temperature=0.0 must be positive"),
])
def test_a_value_outside_its_range_is_refused_the_same_way_in_hydra_and_argparse(group, key, value, words):
    assert key in RANGES[group]
    for cfg in (OmegaConf.create({key: value}), Namespace(**{key: value})):
        with pytest.raises(UsageError, match=words):
            check_options(group, cfg)


def test_the_range_ends_are_where_the_table_says():
    check_options("task", OmegaConf.create({"d2_ratio": 0.5, "exit_patience": 1, "stage1_epochs": 0}))
    check_options("optimizer", Namespace(w_lr=1e-9, w_weight_decay=0.0, w_update_interval=1, exit_lr_scale=1e-3))
    check_options("criterion", {"kd_weight": 0.0, "gate_lambda": 0, "t1": 1e-6, "unlisted": -5.0})


def test_a_config_dataclass_built_in_python_is_checked_too():
    from leebert_plugin.criterions.leebert import LeeBertConfig
    from leebert_plugin.optim.clo import CLOConfig
    with pytest.raises(UsageError, match="criterion.temperature=0.0 must be positive"):
        check_options("criterion", LeeBertConfig(temperature=0.0))
    with pytest.raises(UsageError, match="optimizer.w_lr=-1.0 must be positive"):
        check_options("optimizer", CLOConfig(w_lr=-1.0))
    check_options("criterion", LeeBertConfig())  # the defaults are in range


def test_a_class_count_mismatch_names_the_setting_in_training_and_the_data_for_a_saved_model():
    """Training: task.num_classes is what to change. A saved model's count is its own: evaluating it
    on 20-class data, setting num_classes would only fail later; the data is what is wrong."""
    from fairseq.data import Dictionary

    from leebert_plugin.data.checks import check_num_classes

    labels = Dictionary()
    for name in ("neg", "neutral", "pos"):
        labels.add_symbol(name)
    check_num_classes(3, labels, "/data/bin")  # agrees: nothing to say
    with pytest.raises(UsageError, match="num_classes=2 but /data/bin/label/dict.txt lists 3 labels") as training:
        check_num_classes(2, labels, "/data/bin")
    assert "task.num_classes=3" in training.value.fix
    with pytest.raises(UsageError, match="the checkpoint was trained with 2 classes but .* lists 3 labels") as saved:
        check_num_classes(2, labels, "/data/bin", from_checkpoint=True)
    assert "num_classes" not in saved.value.fix and "--srcdict" in saved.value.fix
