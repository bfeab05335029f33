"""One training recipe for every method: the hydra overrides of a fine-tuning run from a shared budget.

The benchmark (``scripts/benchmark.py``) and the main job (``leebert_plugin.demo``) train with it,
so a method's figures in ``BENCHMARKS.md`` and in the README come from the same command.

Every run is ``fairseq-hydra-train`` of the GLUE SST-2 config of the method (full fine-tuning with
the last exit only, PABEE, DeeBERT's two stages, LeeBERT with ``clo``, SmartBERT's two stages),
with the budget's epochs, batch size and learning rate (fairseq's polynomial decay to 0 over
``epochs x ceil(n_train / batch)`` updates, 6% warm-up, as GLUE's recipe), exit pooling and exit
learning-rate scale. Validation runs at full depth; exit policies are chosen afterwards.
"""
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch

from leebert_plugin.runtime.devices import fairseq_device_args

METHODS: Dict[str, Dict] = {
    "full_ft": {"config": "sst_2_multi_exit", "last_exit_only": True},
    "pabee": {"config": "sst_2_multi_exit"},
    "deebert": {"config": "sst_2_deebert", "two_stage": True},
    "leebert": {"config": "sst_2_leebert"},
    "smartbert": {"config": "sst_2_smartbert", "two_stage": True, "own_exit_pooling": True},
}  # own_exit_pooling: the method's exits read what its config says; the budget's exit_pooling does not reach them


@dataclass
class Budget:
    epochs: int
    batch_size: int = 32
    lr: float = 5e-5
    exit_pooling: str = "mean"  # what pabee/deebert exits read: [CLS] ("cls") or the token mean
    exit_lr_scale: float = 10.0  # the exits' learning rate, x lr

    def updates(self, n_train: int) -> int:
        return self.epochs * math.ceil(n_train / self.batch_size)

    def reaching(self, method: str) -> Dict:
        """The budget's fields that reach ``method``'s runs (:func:`overrides`), by name: every one
        but ``exit_pooling`` for a method that keeps its own (SmartBERT)."""
        fields = asdict(self)
        if METHODS[method].get("own_exit_pooling"):
            del fields["exit_pooling"]
        return fields


def overrides(method: str, data: Path, save: Path, seed: int, n_train: int, budget: Budget, arch: str,
              restore: Optional[str], layers: int, device: torch.device, log_interval: int = 20,
              num_classes: int = 2) -> List[str]:
    """The hydra overrides of one run of ``method`` (``METHODS``) on ``config`` ``METHODS[method]["config"]``.

    ``restore``: the encoder checkpoint to start from (None: from scratch). A run always resumes
    from ``save``'s own ``checkpoint_last.pt`` when there is one (fairseq's ``finetune_from_model``:
    the encoder is read, with fresh optimizer, meters and data order, only on the first launch);
    ``layers``: the encoder's depth (full fine-tuning keeps only that exit); ``num_classes``: the
    data's (``leebert_plugin.data.checks.label_count``).
    """
    spec = METHODS[method]
    updates = budget.updates(n_train)
    o = [f"task.data={data}", f"task.num_classes={num_classes}", f"checkpoint.save_dir={save}", f"common.seed={seed}",
         *fairseq_device_args(device, hydra=True),
         f"model._name={arch}", f"dataset.batch_size={budget.batch_size}", "dataset.max_tokens=null",
         f"optimization.lr=[{budget.lr}]",
         f"optimization.max_epoch={budget.epochs}", f"optimization.max_update={updates}",
         f"lr_scheduler.warmup_updates={max(1, round(0.06 * updates))}", f"common.log_interval={log_interval}",
         "dataset.num_workers=0", "checkpoint.no_last_checkpoints=false",
         "task.exit_policy=none", "task.exit_threshold=null"]  # validate at full depth; policies come after
    o.append("checkpoint.restore_file=checkpoint_last.pt")  # a killed run resumes from its own last checkpoint
    if restore:  # ... and a first launch starts from the encoder, optimizer and data order fresh
        o += [f"checkpoint.finetune_from_model={restore}", "checkpoint.reset_optimizer=false",
              "checkpoint.reset_dataloader=false", "checkpoint.reset_meters=false", "task.separator_token=null"]
    if spec.get("last_exit_only"):
        o.append(f"model.exit_layers='{layers}'")
    if "exit_pooling" in budget.reaching(method):
        o.append(f"+model.exit_pooling={budget.exit_pooling}")
    if method == "leebert":
        o.append(f"+optimizer.exit_lr_scale={budget.exit_lr_scale}")
    else:
        o += ["optimizer._name=exit_adam", f"+optimizer.exit_lr_scale={budget.exit_lr_scale}"]
    if spec.get("two_stage"):  # half the budget each; stage 2 trains the exits on the frozen encoder
        stage1 = max(1, budget.epochs // 2)
        o += [f"task.stage1_epochs={stage1}", f"task.soft_gate_epochs={stage1 // 2 if method == 'smartbert' else 0}"]
    return o


def with_overrides(base: List[str], extra: List[str]) -> List[str]:
    """``base`` hydra overrides with ``extra`` ones appended, each replacing any of the same key."""
    def key(ov: str) -> str:
        return ov.split("=", 1)[0].lstrip("+")
    replaced = {key(ov) for ov in extra}
    return [ov for ov in base if key(ov) not in replaced] + extra
