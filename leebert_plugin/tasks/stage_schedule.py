"""Two-stage training's budget in updates: where stage 2 starts, the refusal of a budget that ends
inside stage 1, and each stage's own learning-rate schedule.

A run trains ``E = task.stage1_epochs`` epochs of stage 1, then stage 2 until the first of
``optimization.max_epoch`` and ``optimization.max_update`` (0: no bound). With ``U`` updates an
epoch (the training epoch iterator's batches over ``optimization.update_freq``), stage 2 starts
after update ``E * U``; a budget that ends at or before it never trains the intermediate exits, and
is refused unless the user asked for stage 1 alone (``task.stage1_only``).

The per-stage schedule (``lr_scheduler._name=two_stage_linear``) is the authors' (SmartBERT's
``main.py``, DeeBERT's ``run_highway_glue.py``: a fresh ``get_linear_schedule_with_warmup`` per
stage): within a stage of ``T`` updates, its ``s``-th update (from 0) runs at

    lr_s = lr * s / W                          for s < W  (warm-up over W updates)
    lr_s = lr * max(0, (T - s) / max(1, T - W))  after       (linear decay to 0 at the stage's end)

so stage 2 starts from a fresh warm-up instead of the tail of one decay over the whole run.
"""
import math
from dataclasses import dataclass
from typing import Optional

from leebert_plugin.errors import UsageError

STAGE1_ONLY = "task.stage1_only=true"


def updates_per_epoch(batches: int, update_freq: int) -> int:
    """Updates of an epoch of ``batches`` batches when ``update_freq`` batches make one update
    (fairseq's GroupedIterator: the last, shorter group is an update too)."""
    return math.ceil(batches / max(1, update_freq))


@dataclass(frozen=True)
class StagePlan:
    """The two stages of a run in updates. ``max_epoch`` / ``max_update``: 0 for no bound."""

    updates_per_epoch: int
    stage1_epochs: int
    max_epoch: int = 0
    max_update: int = 0

    @property
    def stage2_start(self) -> int:
        """Updates done when stage 2 begins: ``stage1_epochs * updates_per_epoch``."""
        return self.stage1_epochs * self.updates_per_epoch

    @property
    def last_update(self) -> Optional[int]:
        """The update the run ends at: the first of its bounds (None: unbounded)."""
        bounds = [b for b in (self.max_epoch * self.updates_per_epoch, self.max_update) if b > 0]
        return min(bounds) if bounds else None

    @property
    def stage1_updates(self) -> int:
        end = self.last_update
        return self.stage2_start if end is None else min(self.stage2_start, end)

    @property
    def stage2_updates(self) -> Optional[int]:
        end = self.last_update
        return None if end is None else max(0, end - self.stage2_start)

    def check(self, stage1_only: bool) -> None:
        """Refuse, in one line, a budget that ends inside stage 1 (unless ``stage1_only``), or one
        that reaches stage 2 although ``stage1_only`` says stage 1 alone."""
        end, start = self.last_update, self.stage2_start
        budget = f"optimization.max_update={self.max_update} with optimization.max_epoch={self.max_epoch}"
        where = (f"task.stage1_epochs={self.stage1_epochs} at {self.updates_per_epoch} updates an epoch: "
                 f"stage 2 would start at epoch {self.stage1_epochs + 1}, after update {start}")
        if not stage1_only and end is not None and end <= start:
            one = start + self.updates_per_epoch
            whole = self.max_epoch * self.updates_per_epoch if self.max_epoch * self.updates_per_epoch > one else 0
            raise UsageError(
                f"{budget} ends training at update {end}, inside stage 1 ({where}); the intermediate exits would "
                "never be trained",
                f"set optimization.max_update to at least {one} (one stage-2 epoch)"
                + (f", {whole} for all {self.max_epoch} epochs," if whole else "")
                + f" or 0 (no bound), or {STAGE1_ONLY} to train stage 1 alone")
        if stage1_only and (end is None or end > start):
            raise UsageError(f"{STAGE1_ONLY}, and {budget} goes on past stage 1 ({where})",
                             f"set optimization.max_epoch={self.stage1_epochs} (stage 1 alone), "
                             "or task.stage1_only=false to train both stages")

    def lr_factor(self, num_updates: int, warmup_updates: int) -> float:
        """The factor of the base lr for the update that follows ``num_updates`` done ones: the
        module's equation with ``s`` and ``T`` of the stage that update is in."""
        if num_updates < self.stage2_start:
            step, total = num_updates, self.stage1_updates
        else:
            step, total = num_updates - self.stage2_start, self.stage2_updates
        return linear_warmup_decay(step, warmup_updates, total)


def linear_warmup_decay(step: int, warmup: int, total: Optional[int]) -> float:
    """``s / W`` for ``s < W``, then ``max(0, (T - s) / max(1, T - W))`` (``T`` None: no decay)."""
    if step < warmup:
        return step / warmup
    if total is None:
        return 1.0
    return max(0.0, (total - step) / max(1, total - warmup))


def check_stage_epochs(stage1_epochs: int, max_epoch: int, max_update: int, stage1_only: bool) -> None:
    """What setup can check before the updates of an epoch are known: ``optimization.max_epoch``
    against ``task.stage1_epochs`` (``max_update`` waits for the epoch iterator, :class:`StagePlan`)."""
    budget = f"optimization.max_epoch={max_epoch} with optimization.max_update={max_update}"
    if not stage1_only and 0 < max_epoch <= stage1_epochs:
        raise UsageError(f"{budget} ends inside stage 1 (task.stage1_epochs={stage1_epochs}): stage 2 would start "
                         f"at epoch {stage1_epochs + 1}, and the intermediate exits would never be trained",
                         f"set optimization.max_epoch to at least {stage1_epochs + 1} (e.g. {2 * stage1_epochs}), "
                         f"or {STAGE1_ONLY} to train stage 1 alone")
    if stage1_only and max_epoch > stage1_epochs:
        raise UsageError(f"{STAGE1_ONLY}, and {budget} goes on past stage 1 (task.stage1_epochs={stage1_epochs}: "
                         f"stage 2 would start at epoch {stage1_epochs + 1})",
                         f"set optimization.max_epoch={stage1_epochs} (stage 1 alone), "
                         "or task.stage1_only=false to train both stages")
