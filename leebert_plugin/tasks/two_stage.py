"""Two-stage training (SmartBERT, DeeBERT) as one object: the switch, the freezing, the reload,
checkpoint selection and fairseq's optimizer over the trainable part (whatever its precision wrapper).

Stage 1 trains the backbone, the gates and the last exit for ``task.stage1_epochs`` epochs (soft
gate weights for the first ``task.soft_gate_epochs``, straight-through hard ones after). At the
first epoch past them, stage 2 reloads the best stage-1 checkpoint, freezes everything but the
intermediate exits and trains those until ``optimization.max_epoch``.

Where the stage is recorded: in the model (``training_stage``, a buffer saved with the weights),
because which parameters are frozen is a property of the weights. A resumed stage-2 checkpoint
therefore freezes on load, before fairseq builds its optimizer, and ``fairseq-validate`` knows
whether the intermediate exits were trained. Everything else about the stages is decided here;
the criterion is told the stage on every call.
"""
import logging
import os
import shutil
from typing import List

from fairseq import checkpoint_utils, distributed_utils

from leebert_plugin.errors import UsageError
from leebert_plugin.optim.precision import optimized_params, restrict_to

logger = logging.getLogger(__name__)


def frozen_in_stage2(model, head_name: str) -> List[str]:
    """The names, as in ``model.state_dict()``, of the tensors stage 2 must leave as the stage-1
    checkpoint had them: every parameter but the intermediate exits' (the backbone, gates,
    projectors, the last exit). What a check of a two-stage run compares."""
    trained = {id(p) for p in model.stage2_parameters(head_name)}
    return [name for name, p in model.named_parameters() if id(p) not in trained]


class TwoStageTraining:
    def __init__(self, cfg):
        self.cfg = cfg  # the task's config: stage1_epochs, soft_gate_epochs, stage1_checkpoint, save_dir

    def begin_epoch(self, epoch: int, model) -> None:
        """Gate mode of the epoch; the switch to stage 2 after ``stage1_epochs``."""
        in_stage1 = epoch <= self.cfg.stage1_epochs
        model.gate_mode = "soft" if in_stage1 and epoch <= self.cfg.soft_gate_epochs else "hard"
        if not in_stage1 and model.stage == 1:
            self._enter_stage2(model)

    def exits_trained(self, model) -> bool:
        """Whether the intermediate exits have been trained (an exit policy means something)."""
        return model.stage == 2

    def before_step(self, model, optimizer) -> int:
        """The stage of this training step. In stage 2, fairseq's optimizer must update exactly the
        trainable parameters, from their current (reloaded) values: one built in stage 1 (its fp32
        masters under --fp16/--bf16 hold stage-1 values of every parameter) is replaced, once, by a
        fresh one over the intermediate exits. A resumed stage-2 run builds it that way already."""
        if model.stage == 2 and any(not p.requires_grad for p in optimized_params(optimizer)):
            trainable = [p for p in model.parameters() if p.requires_grad]
            restrict_to(optimizer, trainable)
            logger.info(f"stage 2: fairseq's {type(optimizer).__name__} now updates the {len(trainable)} tensors of "
                        "the intermediate exits, with fresh state")
        return model.stage

    def _read_stage1(self, path: str, default: str) -> dict:
        """The stage-1 checkpoint's model weights (kept as checkpoint_stage1_best.pt)."""
        if not os.path.isfile(path):
            raise UsageError(f"stage 2 needs a stage-1 checkpoint, and {path} does not exist",
                             "let stage 1 validate and save (task.stage1_epochs > 0, checkpoint.no_save=false) "
                             "or point task.stage1_checkpoint at one")
        kept = os.path.join(self.cfg.save_dir, "checkpoint_stage1_best.pt")
        if path == default and not os.path.exists(kept):
            shutil.copyfile(path, kept)
        return checkpoint_utils.load_checkpoint_to_cpu(path)["model"]

    def _enter_stage2(self, model) -> None:
        default = os.path.join(self.cfg.save_dir, "checkpoint_best.pt")
        path = self.cfg.stage1_checkpoint or default
        # rank 0 wrote the checkpoint and reads it; the other ranks may have raced ahead of its
        # save, or not see its disk: they get the weights from rank 0 (only the weights: the
        # broadcast unpickles weights-only, and the saved cfg is an omegaconf object)
        distributed = distributed_utils.get_data_parallel_world_size() > 1
        first = not distributed or distributed_utils.get_data_parallel_rank() == 0
        weights = self._read_stage1(path, default) if first else None
        if distributed:
            weights = distributed_utils.broadcast_object(weights, src_rank=0,
                                                         group=distributed_utils.get_data_parallel_group())
        model.load_state_dict(weights, strict=True)
        model.enter_stage2(self.cfg.classification_head_name)
        # stage 2's best checkpoint is chosen among stage-2 epochs only: fairseq keeps the best
        # validation figure so far on its saver function
        if hasattr(checkpoint_utils.save_checkpoint, "best"):
            del checkpoint_utils.save_checkpoint.best
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.info(f"stage 2: restored {path}; training the intermediate exits only ({trainable} parameters)")

