"""``clo``: the cross-level optimisation of LeeBERT's learned loss weights, as a fairseq optimizer.

The model's side is ``exit_adam`` (fairseq's ``adam``, optionally with a larger lr for the exits):
the lr scheduler, gradient clipping, fairseq's precision wrappers and checkpointing see only that
one. The weights' side, their AdamW and the meta step every ``w_update_interval`` updates, is
:class:`~leebert_plugin.optim.bilevel.BilevelTraining`, built from this config by the
``early_exit_sentence_prediction`` task. Modes (``methods.md`` §2.5 and §6.2; the paper's exact rule is not
public):

* ``clo`` (reading A, recommended): the hypergradient crossed both ways, D1->D2 and D2->D1,
  averaged; the model is trained on both splits.
* ``darts2``: DARTS second order, D1->D2 only; the model trains on D1.
* ``darts1``: first order: the same finite-difference product, with the outer gradient taken at
  the current parameters instead of after a virtual step (the plain first-order DARTS gradient
  is zero here, since the outer objective does not contain the weights); the model trains on D1.

The weights' learning rate (``w_lr``) fits the run by default: Adam moves a logit by about
``w_lr`` per meta step at most, so ``w_lr = w_travel / meta steps`` lets a weight travel
``w_travel`` logits over any run, from 64 updates to 20,000 (``BilevelTraining``). An explicit
``optimizer.w_lr`` wins over the derived one; the checkpoint's is never used.
"""
import logging
from dataclasses import dataclass, field
from typing import Optional

from fairseq.optim import register_optimizer

from leebert_plugin.errors import UsageError
from leebert_plugin.optim.bilevel import MODES
from leebert_plugin.optim.exit_adam import ExitAdam, ExitAdamConfig

logger = logging.getLogger(__name__)


@dataclass
class CLOConfig(ExitAdamConfig):
    mode: str = field(default="clo", metadata={"help": "clo (cross-level, both directions), darts2 "
                                                       "(second order) or darts1 (first order)"})
    w_lr: Optional[float] = field(
        default=None, metadata={"help": "learning rate of the loss weights' Adam; null (default): "
                                        "w_travel / the number of meta steps the run will take"})
    w_travel: float = field(
        default=3.0, metadata={"help": "with w_lr null: how far (in logits) Adam may move a loss weight over "
                                       "the whole run, at most w_lr per meta step"})
    w_weight_decay: float = field(default=1e-3, metadata={"help": "decoupled weight decay of the loss weights' AdamW"})
    w_betas: str = field(default="(0.5, 0.999)", metadata={"help": "betas of the loss weights' Adam (DARTS')"})
    w_update_interval: int = field(default=10, metadata={"help": "run the meta step every k updates"})
    xi: float = field(default=-1.0, metadata={"help": "virtual step size; <= 0: the model's current lr"})
    fd_eps: float = field(default=0.01, metadata={"help": "finite-difference radius r = fd_eps / ||v||"})


@register_optimizer("clo", dataclass=CLOConfig)
class CLOOptimizer(ExitAdam):
    """The model's optimizer under ``clo``: ``exit_adam``. The loss weights' side (their AdamW, the
    meta step) is :class:`~leebert_plugin.optim.bilevel.BilevelTraining`, which the task builds
    from this config; this optimizer never sees the weights, the model or the criterion."""

    def __init__(self, cfg: CLOConfig, params):
        if cfg.mode not in MODES:  # the task checks it too, but a bare optimizer must not accept it either
            raise UsageError(f"unknown clo mode {cfg.mode!r}", f"set optimizer.mode to one of {', '.join(MODES)}")
        super().__init__(cfg, params)

    def load_state_dict(self, state_dict, optimizer_overrides=None):
        """Checkpoints of earlier versions hold ``{"inner": model's Adam, "weights": the weights' AdamW}``;
        the model's part loads, the weights' optimizer state is left behind (the task keeps it now)."""
        if isinstance(state_dict, dict) and set(state_dict) == {"inner", "weights"}:
            logger.warning("optimizer state of an older leebert-plugin clo: the loss weights' AdamW state is dropped")
            state_dict = state_dict["inner"]
        super().load_state_dict(state_dict, optimizer_overrides)
