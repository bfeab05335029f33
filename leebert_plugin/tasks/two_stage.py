"""Two-stage training (SmartBERT, DeeBERT) as one object: the switch, the freezing, the reload,
checkpoint selection, the budget check, each stage's learning rate and fairseq's optimizer over the
trainable part (whatever its precision wrapper).

Stage 1 trains the backbone, the gates and the last exit for ``task.stage1_epochs`` epochs (soft
gate weights for the first ``task.soft_gate_epochs``, straight-through hard ones after). At the
first epoch past them, stage 2 reloads the best stage-1 checkpoint, freezes everything but the
intermediate exits and trains those until ``optimization.max_epoch``. Once the updates of an epoch
are known (the training epoch iterator, before the first update), a budget that ends inside
stage 1 is refused unless ``task.stage1_only`` (``stage_schedule.py``); with
``lr_scheduler._name=two_stage_linear`` every update's rate is set here, from its stage's schedule.

Where the stage is recorded: in the model (``training_stage``, a buffer saved with the weights),
because which parameters are frozen is a property of the weights. A resumed stage-2 checkpoint
therefore freezes on load, before fairseq builds its optimizer, and ``fairseq-validate`` knows
whether the intermediate exits were trained. Everything else about the stages is decided here;
the criterion is told the stage on every call.
"""
import logging
import os
import shutil
from typing import List, Optional

from fairseq import checkpoint_utils, distributed_utils

from leebert_plugin.errors import UsageError
from leebert_plugin.optim.precision import optimized_params, restrict_to
from leebert_plugin.tasks.stage_schedule import StagePlan

logger = logging.getLogger(__name__)


def frozen_in_stage2(model, head_name: str) -> List[str]:
    """The names, as in ``model.state_dict()``, of the tensors stage 2 must leave as the stage-1
    checkpoint had them: every parameter but the intermediate exits' (the backbone, gates,
    projectors, the last exit). What a check of a two-stage run compares."""
    trained = {id(p) for p in model.stage2_parameters(head_name)}
    return [name for name, p in model.named_parameters() if id(p) not in trained]


def trained_epoch(state: dict) -> str:
    """The epoch whose training a checkpoint holds, in words ("" : it does not say). fairseq saves
    the data iterator's position: at an epoch's end, the next epoch with no batch of it done
    (``{"epoch": k + 1, "iterations_in_epoch": 0}``), so epoch k; within an epoch (a
    ``save_interval_updates`` save), that epoch, part-trained."""
    position = (state.get("extra_state") or {}).get("train_iterator") or {}
    if "epoch" not in position:
        return ""
    if position.get("iterations_in_epoch", 0) == 0:
        return f"{position['epoch'] - 1}"
    return f"{position['epoch']}, after {position['iterations_in_epoch']} of its batches"


class TwoStageTraining:
    def __init__(self, cfg, max_epoch: int = 0, max_update: int = 0, lr: float = 0.0,
                 warmup_updates: Optional[int] = None):
        """``cfg``: the task's config (stage1_epochs, soft_gate_epochs, stage1_only, stage1_checkpoint,
        save_dir); ``warmup_updates``: the per-stage schedule's (None: fairseq's scheduler sets the rate)."""
        self.cfg = cfg
        self.max_epoch, self.max_update, self.lr, self.warmup_updates = max_epoch, max_update, lr, warmup_updates
        self.plan: Optional[StagePlan] = None  # known once the training epoch iterator is

    def plan_updates(self, updates_per_epoch: int) -> StagePlan:
        """The stages in updates, from the training epoch iterator's updates an epoch; a budget
        that ends inside stage 1 (or, with ``stage1_only``, goes past it) is refused here, before
        the first update."""
        plan = StagePlan(updates_per_epoch, self.cfg.stage1_epochs, self.max_epoch, self.max_update)
        plan.check(getattr(self.cfg, "stage1_only", False))
        if self.plan != plan:
            logger.info(f"two stages: {plan.updates_per_epoch} updates an epoch; stage 1 is updates 1-{plan.stage2_start}"
                        + ("" if getattr(self.cfg, "stage1_only", False) else
                           f", stage 2 updates {plan.stage2_start + 1}-{plan.last_update or 'unbounded'}")
                        + ("" if self.warmup_updates is None else
                           f"; each stage warms up over {self.warmup_updates} updates and decays linearly to 0"))
        self.plan = plan
        return plan

    def lr_at(self, num_updates: int) -> Optional[float]:
        """The rate of the update after ``num_updates`` under the per-stage schedule (None: not used)."""
        if self.warmup_updates is None or self.plan is None:
            return None
        return self.lr * self.plan.lr_factor(num_updates, self.warmup_updates)

    def begin_epoch(self, epoch: int, model) -> None:
        """Gate mode of the epoch; the switch to stage 2 after ``stage1_epochs``."""
        in_stage1 = epoch <= self.cfg.stage1_epochs
        model.gate_mode = "soft" if in_stage1 and epoch <= self.cfg.soft_gate_epochs else "hard"
        if not in_stage1 and model.stage == 1:
            self._enter_stage2(model)

    def exits_trained(self, model) -> bool:
        """Whether the intermediate exits have been trained (an exit policy means something)."""
        return model.stage == 2

    def before_step(self, model, optimizer, num_updates: int = 0) -> int:
        """The stage of this training step, and its rate under the per-stage schedule (set on
        fairseq's optimizer before it steps). In stage 2, fairseq's optimizer must update exactly the
        trainable parameters, from their current (reloaded) values: one built in stage 1 (its fp32
        masters under --fp16/--bf16 hold stage-1 values of every parameter) is replaced, once, by a
        fresh one over the intermediate exits. A resumed stage-2 run builds it that way already."""
        lr = self.lr_at(num_updates)
        if lr is not None:
            optimizer.set_lr(lr)
        if model.stage == 2 and any(not p.requires_grad for p in optimized_params(optimizer)):
            trainable = [p for p in model.parameters() if p.requires_grad]
            restrict_to(optimizer, trainable)
            logger.info(f"stage 2: fairseq's {type(optimizer).__name__} now updates the {len(trainable)} tensors of "
                        "the intermediate exits, with fresh state")
        return model.stage

    def _read_stage1(self, path: str, default: str) -> dict:
        """The stage-1 checkpoint's model weights (kept as checkpoint_stage1_best.pt) and the epoch
        it holds (:func:`trained_epoch`)."""
        if not os.path.isfile(path):
            raise UsageError(f"stage 2 needs a stage-1 checkpoint, and {path} does not exist",
                             "let stage 1 validate and save (task.stage1_epochs > 0, checkpoint.no_save=false) "
                             "or point task.stage1_checkpoint at one")
        kept = os.path.join(self.cfg.save_dir, "checkpoint_stage1_best.pt")
        if path == default and not os.path.exists(kept):
            shutil.copyfile(path, kept)
        state = checkpoint_utils.load_checkpoint_to_cpu(path)
        return {"model": state["model"], "epoch": trained_epoch(state)}

    def _enter_stage2(self, model) -> None:
        default = os.path.join(self.cfg.save_dir, "checkpoint_best.pt")
        path = self.cfg.stage1_checkpoint or default
        # rank 0 wrote the checkpoint and reads it; the other ranks may have raced ahead of its
        # save, or not see its disk: they get the weights from rank 0 (only the weights: the
        # broadcast unpickles weights-only, and the saved cfg is an omegaconf object)
        distributed = distributed_utils.get_data_parallel_world_size() > 1
        first = not distributed or distributed_utils.get_data_parallel_rank() == 0
        stage1 = self._read_stage1(path, default) if first else None
        if distributed:
            stage1 = distributed_utils.broadcast_object(stage1, src_rank=0,
                                                        group=distributed_utils.get_data_parallel_group())
        model.load_state_dict(stage1["model"], strict=True)
        model.enter_stage2(self.cfg.classification_head_name)
        # stage 2's best checkpoint is chosen among stage-2 epochs only: fairseq keeps the best
        # validation figure so far on its saver function
        if hasattr(checkpoint_utils.save_checkpoint, "best"):
            del checkpoint_utils.save_checkpoint.best
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        # the dev selection over stage-1 epochs, in a line the benchmark's records read (gate_diagnostics.py)
        kept = f" (kept stage-1 epoch {stage1['epoch']})" if stage1["epoch"] else ""
        logger.info(f"stage 2: restored {path}{kept}; training the intermediate exits only ({trainable} parameters)")

