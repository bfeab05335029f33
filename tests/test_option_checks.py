"""NaN and infinity in any option are refused in one line, in hydra's and argparse's configs alike."""
from argparse import Namespace

import pytest
from omegaconf import OmegaConf

from leebert_plugin.errors import UsageError
from leebert_plugin.option_checks import check_finite_options


@pytest.mark.parametrize("cfg", [
    OmegaConf.create({"kd_weight": float("nan"), "temperature": 1.0}),
    Namespace(kd_weight=float("nan"), temperature=1.0),
    {"kd_weight": float("nan")},
])
def test_nan_is_refused_in_every_kind_of_config(cfg):
    with pytest.raises(UsageError, match=r"criterion\.kd_weight=nan is not a finite number"):
        check_finite_options("criterion", cfg)


def test_infinity_inside_a_list_is_refused_and_finite_values_pass():
    with pytest.raises(UsageError, match=r"optimizer\.lr=\[.*inf\] is not a finite"):
        check_finite_options("optimizer", OmegaConf.create({"lr": [1e-3, float("inf")], "w_lr": 3e-3}))
    check_finite_options("optimizer", OmegaConf.create({"lr": [1e-3], "xi": -1.0, "name": "clo", "steps": 3,
                                                        "nested": {"x": float("nan")}, "unset": None}))
