"""NaN and infinity in any numeric option, refused the same way under hydra and argparse.

``float("nan")`` passes every range check written as ``value < low`` (all comparisons with NaN
are false), so without this a ``criterion.kd_weight=nan`` trains until the loss is NaN and is
then reported as a learning-rate problem. The task runs :func:`check_finite_options` over each
config group it is handed (task, model, criterion, optimizer) before anything is built.
"""
import math
from argparse import Namespace
from typing import Any, Iterator, Tuple

from omegaconf import DictConfig, ListConfig, OmegaConf

from leebert_plugin.errors import UsageError


def _items(cfg: Any) -> Iterator[Tuple[str, Any]]:
    if isinstance(cfg, DictConfig):
        for key in cfg.keys():
            value = OmegaConf.select(cfg, str(key), throw_on_resolution_failure=False)
            yield str(key), value
    elif isinstance(cfg, Namespace):
        yield from vars(cfg).items()
    elif isinstance(cfg, dict):
        yield from cfg.items()


def _numbers(value: Any) -> Iterator[float]:
    if isinstance(value, float):
        yield value
    elif isinstance(value, (list, tuple, ListConfig)):
        for v in value:
            yield from _numbers(v)


def check_finite_options(group: str, cfg: Any) -> None:
    """Refuse ``group.key=nan`` / ``inf`` (also inside lists such as ``optimization.lr``) in one line."""
    for key, value in _items(cfg):
        if isinstance(value, (DictConfig, dict, Namespace)):
            continue  # nested groups are checked as their own group
        for number in _numbers(value):
            if not math.isfinite(number):
                raise UsageError(f"{group}.{key}={value} is not a finite number",
                                 f"give {group}.{key} a finite value (see its help for the range)")
