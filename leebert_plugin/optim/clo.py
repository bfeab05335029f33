"""``clo``: the cross-level optimisation of LeeBERT's learned loss weights, as a fairseq optimizer.

It wraps ``exit_adam`` (fairseq's ``adam``, optionally with a larger lr for the exits) for the
model parameters (the lr scheduler, gradient clipping and checkpointing see only that one) and keeps its own AdamW for the loss weights, which it updates in
:meth:`meta_step`, driven by the ``early_exit_sentence_prediction`` task every
``w_update_interval`` updates. Modes (``methods.md`` §2.5 and §6.2; the paper's exact rule is not
public):

* ``clo`` (reading A, recommended): the hypergradient crossed both ways, D1->D2 and D2->D1,
  averaged; the model is trained on both splits.
* ``darts2``: DARTS second order, D1->D2 only; the model trains on D1.
* ``darts1``: first order: the same finite-difference product, with the outer gradient taken at
  the current parameters instead of after a virtual step (the plain first-order DARTS gradient
  is zero here, since the outer objective does not contain the weights); the model trains on D1.
"""
import ast
import logging
from dataclasses import dataclass, field
from typing import Dict

import torch
from fairseq.distributed import utils as distributed_utils
from fairseq.optim import FairseqOptimizer, register_optimizer

from leebert_plugin.errors import UsageError
from leebert_plugin.modules.loss_weights import PARAM_GROUP
from leebert_plugin.optim.exit_adam import ExitAdam, ExitAdamConfig
from leebert_plugin.optim.hypergradient import hypergradient

logger = logging.getLogger(__name__)
MODES = ("clo", "darts2", "darts1")


@dataclass
class CLOConfig(ExitAdamConfig):
    mode: str = field(default="clo", metadata={"help": "clo (cross-level, both directions), darts2 "
                                                       "(second order) or darts1 (first order)"})
    w_lr: float = field(default=3e-3, metadata={"help": "learning rate of the loss weights' Adam"})
    w_weight_decay: float = field(default=1e-3, metadata={"help": "decoupled weight decay of the loss weights' AdamW"})
    w_betas: str = field(default="(0.5, 0.999)", metadata={"help": "betas of the loss weights' Adam (DARTS')"})
    w_update_interval: int = field(default=10, metadata={"help": "run the meta step every k updates"})
    xi: float = field(default=-1.0, metadata={"help": "virtual step size; <= 0: the model's current lr"})
    fd_eps: float = field(default=0.01, metadata={"help": "finite-difference radius r = fd_eps / ||v||"})


@register_optimizer("clo", dataclass=CLOConfig)
class CLOOptimizer(FairseqOptimizer):
    def __init__(self, cfg: CLOConfig, params):
        super().__init__(cfg)
        if cfg.mode not in MODES:
            raise UsageError(f"unknown clo mode {cfg.mode!r}", f"set optimizer.mode to one of {', '.join(MODES)}")
        if cfg.w_update_interval < 1:
            raise UsageError(f"w_update_interval={cfg.w_update_interval}", "set optimizer.w_update_interval >= 1")
        params = list(params)
        self.weight_params = [p for p in params if getattr(p, "param_group", None) == PARAM_GROUP]
        self.inner = ExitAdam(cfg, [p for p in params if getattr(p, "param_group", None) != PARAM_GROUP])
        # decoupled weight decay: with xi at the model's (small) lr, L2 folded into the gradient
        # would dominate the hypergradient and pin the weights at their start
        self.w_optimizer = torch.optim.AdamW(
            self.weight_params or [torch.nn.Parameter(torch.zeros(1))],
            lr=cfg.w_lr, betas=ast.literal_eval(cfg.w_betas), weight_decay=cfg.w_weight_decay,
        )
        self.driven_by_task = False

    @property
    def _optimizer(self):
        return self.inner._optimizer

    @property
    def optimizer_config(self):
        return self.inner.optimizer_config

    @property
    def supports_flat_params(self):
        return False

    def get_lr(self) -> float:
        return self.inner.get_lr()

    def set_lr(self, lr: float) -> None:
        self.inner.set_lr(lr)

    def meta_due(self, update_num: int) -> bool:
        return update_num % self.cfg.w_update_interval == 0

    def trains_on_both_splits(self) -> bool:
        return self.cfg.mode == "clo"

    def meta_step(self, model, criterion, b1, b2, seed: int) -> Dict[str, float]:
        """Update the loss weights from the hypergradient(s); theta is left as it was.

        Every data-parallel worker calls this on the same updates: one whose batch lacks D1 or
        D2 examples (or is a dummy batch, b1 = b2 = None) contributes nothing, and the weights
        move by the mean over the workers that had both, identically everywhere.
        """
        weights = getattr(model, "loss_weights", None)
        if weights is None or not self.weight_params:
            raise UsageError("the clo optimizer found no learned loss weights on the model",
                             "use a criterion with learn_weights=true (leebert has it by default)")
        g = torch.zeros_like(weights.logits)
        count = torch.zeros((), device=g.device)
        if b1 is not None and b2 is not None:
            xi = self.cfg.xi if self.cfg.xi > 0 else self.inner.get_lr()
            first_order = self.cfg.mode == "darts1"
            g = hypergradient(model, criterion, b1, b2, xi, self.cfg.fd_eps, not first_order, seed)
            if self.cfg.mode == "clo":
                g = 0.5 * (g + hypergradient(model, criterion, b2, b1, xi, self.cfg.fd_eps, True, seed + 7))
            count += 1
        if distributed_utils.get_data_parallel_world_size() > 1:
            group = distributed_utils.get_data_parallel_group()
            g, count = distributed_utils.all_reduce(g, group), distributed_utils.all_reduce(count, group)
        if float(count) == 0:
            return {"meta_steps": 1, "hypergrad_norm": 0.0}
        g = g / count
        self.w_optimizer.zero_grad()
        torch.autograd.backward(weights.weights(), g.to(weights.logits.dtype))
        self.w_optimizer.step()
        return {"meta_steps": 1, "hypergrad_norm": float(g.norm())}

    def step(self, closure=None, scale=1.0, groups=None):
        if not self.driven_by_task:
            raise UsageError("the clo optimizer needs the early_exit_sentence_prediction task, which "
                             "runs its meta step", "set task._name=early_exit_sentence_prediction "
                             "(--task early_exit_sentence_prediction)")
        self.inner.step(closure, scale)

    def zero_grad(self):
        self.inner.zero_grad()
        self.w_optimizer.zero_grad()

    def state_dict(self):
        return {"inner": self.inner.state_dict(), "weights": self.w_optimizer.state_dict()}

    def load_state_dict(self, state_dict, optimizer_overrides=None):
        self.inner.load_state_dict(state_dict["inner"], optimizer_overrides)
        self.w_optimizer.load_state_dict(state_dict["weights"])
