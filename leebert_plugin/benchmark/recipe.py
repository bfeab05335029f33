"""One training recipe for every method: the hydra overrides of a fine-tuning run from a shared budget.

The benchmark (``scripts/benchmark.py``) and the main job (``leebert_plugin.demo``) train with it,
so a method's figures in ``BENCHMARKS.md`` and in the README come from the same command.

Every run is ``fairseq-hydra-train`` of the GLUE SST-2 config of the method (full fine-tuning with
the last exit only, PABEE, DeeBERT's two stages, LeeBERT with ``clo``, SmartBERT's two stages),
with the budget's epochs, batch size and learning rate (fairseq's polynomial decay to 0 over
``epochs x ceil(n_train / batch)`` updates, 6% warm-up, as GLUE's recipe), exit pooling and exit
learning-rate scale. Validation runs at full depth; exit policies are chosen afterwards.

The two-stage methods train as their authors' code does instead (:class:`TwoStageRecipe`): their own
epochs per stage, learning rate, batch and one learning rate for every part, each stage with its
own linear warm-up and decay (``lr_scheduler._name=two_stage_linear``), and dev selection over the
stage-1 epochs (stage 2 starts from the best one). ``full_ft_smartbert`` is the full fine-tuning
SmartBERT is compared with: SmartBERT's backbone's training (its stage-1 epochs, lr, batch and
schedule), so both backbones see the same data as often.
"""
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional

import torch

from leebert_plugin.runtime.devices import fairseq_device_args

@dataclass(frozen=True)
class TwoStageRecipe:
    """A two-stage method's schedule, as its authors' code trains it.

    ``stage1_epochs`` of backbone training (SmartBERT: the first ``soft_gate_epochs`` with soft
    gates, the rest hard), each kept if best on dev, then ``stage2_epochs`` of the intermediate
    exits on the frozen best stage-1 backbone; each stage warms up over ``warmup_updates`` and
    decays linearly to 0. ``gate_lambda_12``: SmartBERT's lambda for 12 layers, scaled to depth by
    :meth:`gate_lambda`.
    """

    stage1_epochs: int
    stage2_epochs: int
    lr: float
    batch_size: int
    warmup_updates: int
    soft_gate_epochs: int = 0
    exit_lr_scale: float = 1.0  # the authors' code trains every part at one learning rate
    gate_lambda_12: float = 0.0
    gated: bool = False

    def __post_init__(self):
        if self.stage1_epochs < 1 or self.stage2_epochs < 1:
            raise ValueError(f"two stages of at least one epoch each, not {self.stage1_epochs} + {self.stage2_epochs}")
        if self.gated and not (self.stage1_epochs >= 3 and 1 <= self.soft_gate_epochs < self.stage1_epochs):
            raise ValueError("SmartBERT's stage 1: at least 3 epochs, soft gates first, at least one hard epoch last")

    @property
    def epochs(self) -> int:
        return self.stage1_epochs + self.stage2_epochs

    def gate_lambda(self, layers: int) -> float:
        """lambda_L = lambda_12 * L / 12. The regulariser R = lambda / sum_j mean(g_j) pushes each gate by
        dR/dg_i = -lambda / (sum_j g_j)^2; with L gates at mean skip probability g that is
        R = lambda / (L g) and a total push sum_i |dR/dg_i| = lambda / (L g^2). Scaling lambda with
        L keeps both what the authors tuned at 12 layers (lambda_12 / (12 g), lambda_12 / (12 g^2));
        MiniLM's 6 layers get half their 0.04."""
        return self.gate_lambda_12 * layers / 12

    def overrides(self, layers: int) -> List[str]:
        """The hydra overrides of the two stages (the budget's lr, batch and epochs are the recipe's)."""
        o = ["lr_scheduler._name=two_stage_linear", f"lr_scheduler.warmup_updates={self.warmup_updates}",
             f"task.stage1_epochs={self.stage1_epochs}", f"task.soft_gate_epochs={self.soft_gate_epochs}"]
        if self.gated:
            o.append(f"criterion.gate_lambda={self.gate_lambda(layers):g}")
        return o


# SmartBERT (HuBoren99/SmartBert run.sh, main.py): 3 soft + 2 hard epochs, the best by dev reloaded, 4 epochs
# of exits; fresh AdamW with 10 warm-up steps and linear decay per stage; lr 2e-5, batch 16, lambda .04 (BERT-base)
SMARTBERT = TwoStageRecipe(stage1_epochs=5, stage2_epochs=4, lr=2e-5, batch_size=16, warmup_updates=10,
                           soft_gate_epochs=3, gate_lambda_12=0.04, gated=True)
# DeeBERT (castorini/DeeBERT scripts/train_highway.sh, run_highway_glue.py): BERT's 3 epochs per stage, each
# with a fresh AdamW and linear schedule (no warm-up), lr 2e-5, batch 8
DEEBERT = TwoStageRecipe(stage1_epochs=3, stage2_epochs=3, lr=2e-5, batch_size=8, warmup_updates=0)

METHODS: Dict[str, Dict] = {
    "full_ft": {"config": "sst_2_multi_exit", "last_exit_only": True},
    "pabee": {"config": "sst_2_multi_exit"},
    "deebert": {"config": "sst_2_deebert", "recipe": DEEBERT},
    "leebert": {"config": "sst_2_leebert"},
    "smartbert": {"config": "sst_2_smartbert", "recipe": SMARTBERT, "own_exit_pooling": True},
    "full_ft_smartbert": {"config": "sst_2_multi_exit", "last_exit_only": True, "backbone_of": SMARTBERT},
}  # own_exit_pooling: the method's exits read what its config says; the budget's exit_pooling does not reach them
# recipe: the method's own two-stage schedule; backbone_of: full fine-tuning as that recipe's stage 1 trains


@dataclass
class Budget:
    epochs: int
    batch_size: int = 32
    lr: float = 5e-5
    exit_pooling: str = "mean"  # what pabee/deebert exits read: [CLS] ("cls") or the token mean
    exit_lr_scale: float = 10.0  # the exits' learning rate, x lr

    def updates(self, n_train: int) -> int:
        return self.epochs * math.ceil(n_train / self.batch_size)

    def for_method(self, method: str) -> "Budget":
        """What ``method`` trains under: this budget, or its own recipe's epochs, batch, lr and exit
        learning-rate scale (a two-stage recipe: both stages; ``backbone_of``: the recipe's stage 1)."""
        spec = METHODS[method]
        recipe = spec.get("recipe") or spec.get("backbone_of")
        if recipe is None:
            return self
        epochs = recipe.epochs if "recipe" in spec else recipe.stage1_epochs
        return replace(self, epochs=epochs, batch_size=recipe.batch_size, lr=recipe.lr,
                       exit_lr_scale=recipe.exit_lr_scale)

    def reaching(self, method: str, layers: Optional[int] = None) -> Dict:
        """What ``method``'s runs are trained under (:func:`overrides`), by name: the budget's fields
        as :meth:`for_method` gives them, but ``exit_pooling`` for a method that keeps its own
        (SmartBERT); a method with its own recipe adds its stage epochs, warm-up (and gate lambda at
        ``layers``), so a record of another schedule is not taken for this one."""
        fields = asdict(self.for_method(method))
        spec = METHODS[method]
        if spec.get("own_exit_pooling"):
            del fields["exit_pooling"]
        recipe = spec.get("recipe") or spec.get("backbone_of")
        if recipe is not None:
            fields["stage1_epochs"] = recipe.stage1_epochs
            fields["warmup_updates"] = recipe.warmup_updates
        if spec.get("recipe") is not None:
            fields["stage2_epochs"], fields["soft_gate_epochs"] = recipe.stage2_epochs, recipe.soft_gate_epochs
            if recipe.gated and layers is not None:
                fields["gate_lambda"] = recipe.gate_lambda(layers)
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
    recipe = spec.get("recipe") or spec.get("backbone_of")
    budget = budget.for_method(method)
    updates = budget.updates(n_train)
    # GLUE's 6% warm-up under the shared budget; a recipe's own (per stage for a two-stage one)
    warmup = max(1, round(0.06 * updates)) if recipe is None else max(1, recipe.warmup_updates)
    o = [f"task.data={data}", f"task.num_classes={num_classes}", f"checkpoint.save_dir={save}", f"common.seed={seed}",
         *fairseq_device_args(device, hydra=True),
         f"model._name={arch}", f"dataset.batch_size={budget.batch_size}", "dataset.max_tokens=null",
         f"optimization.lr=[{budget.lr}]",
         f"optimization.max_epoch={budget.epochs}", f"optimization.max_update={updates}",
         f"lr_scheduler.warmup_updates={warmup}", f"common.log_interval={log_interval}",
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
    if spec.get("recipe") is not None:  # the authors' two stages, each on its own schedule
        o = with_overrides(o, spec["recipe"].overrides(layers))
    return o


def with_overrides(base: List[str], extra: List[str]) -> List[str]:
    """``base`` hydra overrides with ``extra`` ones appended, each replacing any of the same key."""
    def key(ov: str) -> str:
        return ov.split("=", 1)[0].lstrip("+")
    replaced = {key(ov) for ov in extra}
    return [ov for ov in base if key(ov) not in replaced] + extra
