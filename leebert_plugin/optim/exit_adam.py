"""``exit_adam``: fairseq's Adam with a learning rate of their own for the exit classifiers.

New exit heads start from scratch on top of a pretrained encoder; a larger step for them (a
common remedy when shallow exits stay at the majority class) is ``exit_lr_scale`` times the
scheduler's lr. The exits' parameters carry the tag :data:`EXIT_PARAM` (set by the model); they
form a second parameter group whose lr follows the schedule, scaled.
"""
from dataclasses import dataclass, field
from typing import Iterable, List, Union

import torch
from fairseq.optim import register_optimizer
from fairseq.optim.adam import FairseqAdam, FairseqAdamConfig

from leebert_plugin.errors import UsageError
from leebert_plugin.runtime.option_checks import check_option

EXIT_PARAM = "is_exit_param"  # attribute set to True on every exit-head parameter


@dataclass
class ExitAdamConfig(FairseqAdamConfig):
    exit_lr_scale: float = field(
        default=1.0, metadata={"help": "learning rate of the exit classifiers as a multiple of the scheduled lr"}
    )


def exit_param_groups(params: Iterable[torch.nn.Parameter], scale: float, lr: float) -> Union[List, List[dict]]:
    """The model's parameters, then (with a scale != 1) the exit heads' in a group of their own."""
    check_option("optimizer", "exit_lr_scale", scale)
    params = list(params)
    if scale == 1.0:
        return params
    exits = [p for p in params if getattr(p, EXIT_PARAM, False)]
    rest = [p for p in params if not getattr(p, EXIT_PARAM, False)]
    if not exits:
        # fairseq's --fp16 hands the optimizer one flat fp32 copy of every parameter, which
        # cannot carry the tag; a scale that reaches nothing must not pass silently
        raise UsageError(f"exit_lr_scale={scale} applies to the exit heads' parameters, and none of the {len(params)} "
                         "tensors the optimizer got is one (under --fp16, fairseq gives it one flat copy of all)",
                         "with --fp16 set common.fp16_no_flatten_grads=true (or use --amp, common.bf16=true or "
                         "--memory-efficient-fp16); else optimizer.exit_lr_scale=1")
    return [{"params": rest, "lr_scale": 1.0}, {"params": exits, "lr": lr * scale, "lr_scale": scale}]


@register_optimizer("exit_adam", dataclass=ExitAdamConfig)
class ExitAdam(FairseqAdam):
    def __init__(self, cfg: ExitAdamConfig, params):
        super().__init__(cfg, exit_param_groups(params, cfg.exit_lr_scale, cfg.lr[0]))

    def get_lr(self) -> float:
        """The scheduled lr (that of the model's group)."""
        group = self.param_groups[0]
        return group["lr"] / group.get("lr_scale", 1.0)

    def set_lr(self, lr: float) -> None:
        for group in self.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
