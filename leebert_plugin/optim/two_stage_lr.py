"""``two_stage_linear``: each stage of two-stage training (SmartBERT, DeeBERT) with its own linear
warm-up and decay, as the authors' code trains them (``tasks/stage_schedule.py`` has the equation).

Why the task computes the rate and this scheduler only reports it: where stage 2 starts is
``task.stage1_epochs`` times the updates of an epoch, which the task learns from its training
epoch iterator and fairseq never tells a scheduler. The task sets the rate of every update before
fairseq's optimizer steps (``TwoStageTraining.before_step``); fairseq then asks this scheduler
for the rate after the update and logs the one that was used.
"""
from dataclasses import dataclass, field
from typing import List

from fairseq.dataclass import FairseqDataclass
from fairseq.optim.lr_scheduler import FairseqLRScheduler, register_lr_scheduler
from omegaconf import II


@dataclass
class TwoStageLinearConfig(FairseqDataclass):
    warmup_updates: int = field(
        default=10,
        metadata={"help": "linear warm-up of each stage, in updates (the authors' SmartBERT: 10; DeeBERT: 0); the "
                          "rate then decays linearly to 0 at the stage's end. Needs task.stage1_epochs > 0"},
    )
    lr: List[float] = II("optimization.lr")


@register_lr_scheduler("two_stage_linear", dataclass=TwoStageLinearConfig)
class TwoStageLinearSchedule(FairseqLRScheduler):
    def __init__(self, cfg: TwoStageLinearConfig, optimizer):
        super().__init__(cfg, optimizer)
        # the first update's rate until the task sets it: 0 during a warm-up, as the authors' schedule
        self.optimizer.set_lr(0.0 if cfg.warmup_updates > 0 else cfg.lr[0])

    def step_update(self, num_updates):
        """The rate the task set for the update just made (its schedule, not this object's)."""
        return self.optimizer.get_lr()
