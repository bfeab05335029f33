"""NaN, infinity and out-of-range values of numeric options, refused the same way under hydra and argparse.

``float("nan")`` passes every range check written as ``value < low`` (all comparisons with NaN
are false), so without this a ``criterion.kd_weight=nan`` trains until the loss is NaN and is
then reported as a learning-rate problem. The task runs :func:`check_options` over each config
group it is handed (task, model, criterion, optimizer) before anything is built; the plugin's
criteria, optimizers and model run it over their own group too, so that an object built from
Python meets the same checks.

The ranges of the plugin's options are one table (:data:`RANGES`), not a check per constructor:
an option is checked wherever its group is, whichever front end (hydra's ``DictConfig``,
argparse's ``Namespace``) carries it.
"""
import dataclasses
import math
from argparse import Namespace
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, Tuple

from omegaconf import DictConfig, ListConfig, OmegaConf

from leebert_plugin.errors import UsageError


@dataclass(frozen=True)
class Range:
    """The values ``low .. high`` an option may take; ``open_low``/``open_high`` leave that end out."""

    low: float
    high: float = math.inf
    open_low: bool = False
    open_high: bool = True

    def holds(self, v: float) -> bool:
        above = v > self.low if self.open_low else v >= self.low
        below = v < self.high if self.open_high else v <= self.high
        return above and below

    def __str__(self) -> str:
        return f"{'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"

    def problem(self) -> str:
        """What is wrong with a value outside the range, in words."""
        if self.high == math.inf and self.low == 0:
            return "must be positive" if self.open_low else "is negative"
        if self.high == math.inf:
            return f"is {'not above' if self.open_low else 'below'} {self.low:g}"
        return f"is outside {self}"


NON_NEGATIVE, POSITIVE, AT_LEAST_ONE, OPEN_UNIT = Range(0), Range(0, open_low=True), Range(1), \
    Range(0, 1, open_low=True)

RANGES: Dict[str, Dict[str, Range]] = {
    "task": {"d2_ratio": OPEN_UNIT, "exit_patience": AT_LEAST_ONE, "stage1_epochs": NON_NEGATIVE,
             "soft_gate_epochs": NON_NEGATIVE},
    "model": {"skip_threshold": Range(0, 1, open_low=True, open_high=False)},  # 1: gates off (evaluation)
    "criterion": {"kd_weight": NON_NEGATIVE, "temperature": POSITIVE, "gate_lambda": NON_NEGATIVE,
                  "eta1": NON_NEGATIVE, "eta2": NON_NEGATIVE, "t1": POSITIVE, "t2": POSITIVE},
    "optimizer": {"exit_lr_scale": POSITIVE, "w_lr": POSITIVE, "w_weight_decay": NON_NEGATIVE,
                  "w_update_interval": AT_LEAST_ONE, "fd_eps": POSITIVE, "w_travel": POSITIVE},
}


def _items(cfg: Any) -> Iterator[Tuple[str, Any]]:
    if isinstance(cfg, DictConfig):
        for key in cfg.keys():
            if OmegaConf.is_interpolation(cfg, str(key)):
                continue  # another group's option (task.lr is ${optimization.lr}): checked, and named, there
            value = OmegaConf.select(cfg, str(key), throw_on_resolution_failure=False)
            yield str(key), value
    elif isinstance(cfg, Namespace):
        yield from vars(cfg).items()
    elif isinstance(cfg, dict):
        yield from cfg.items()
    elif dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):  # a config built in Python
        for f in dataclasses.fields(cfg):
            yield f.name, getattr(cfg, f.name)


def _numbers(value: Any) -> Iterator[float]:
    if isinstance(value, float):
        yield value
    elif isinstance(value, (list, tuple, ListConfig)):
        for v in value:
            yield from _numbers(v)


def check_options(group: str, cfg: Any, skip: Iterable[str] = ()) -> None:
    """Refuse ``group.key=nan`` / ``inf`` (also inside lists such as ``optimization.lr``), and a value
    of an option of :data:`RANGES` outside its range, in one line. ``skip``: keys that mirror another
    group's option (the task's ``lr`` is ``optimization.lr``), checked and named in their own group."""
    ranges = RANGES.get(group, {})
    for key, value in _items(cfg):
        if key in skip:
            continue
        if isinstance(value, (DictConfig, dict, Namespace)):
            continue  # nested groups are checked as their own group
        for number in _numbers(value):
            if not math.isfinite(number):
                raise UsageError(f"{group}.{key}={value} is not a finite number",
                                 f"give {group}.{key} a finite value (see its help for the range)")
        allowed = ranges.get(key)
        if allowed is not None and isinstance(value, (int, float)) and not isinstance(value, bool) \
                and not allowed.holds(value):
            raise UsageError(f"{group}.{key}={value} {allowed.problem()}",
                             f"set {group}.{key} to a value in {allowed}")


def check_option(group: str, key: str, value: Any) -> None:
    """:func:`check_options` for one value (an option handed over on its own)."""
    check_options(group, {key: value})
