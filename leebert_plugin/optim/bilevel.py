"""LeeBERT's bi-level training of the loss-term weights, as one object.

    min_w  L_outer(theta*(w); D2)     s.t.  theta*(w) = argmin_theta  sum_k w_k l_k(theta; D1)

:class:`BilevelTraining` owns everything on the upper level: the learned weights (a
:class:`LossWeights` module in fp32), their AdamW, the D1/D2 split of every batch and the meta
step that moves the weights by the hypergradient (``hypergradient.py``). It lives beside the model,
not in it, so that

* DDP never sees the weights: a backward through them in the meta step cannot collide with DDP's
  gradient bookkeeping ("Expected to mark a variable ready only once"), and nothing is all-reduced
  for them but the hypergradient itself;
* fairseq's optimizers and their fp16/bf16 master copies never see them: fairseq's optimizer is
  the model's alone (``clo`` is ``exit_adam`` plus this object);
* the meta step runs on the unwrapped model, whose parameters it perturbs and restores bit for bit.

The task builds it when the criterion learns weights and the optimizer is ``clo`` (whose config
holds these settings), hands its weights to the criterion, and saves it in the checkpoint's
``task_state``.
"""
import ast
import contextlib
import copy
import logging
from typing import Dict, Optional, Sequence, Tuple

import torch
from fairseq.distributed import utils as distributed_utils
from torch import Tensor

from leebert_plugin.data.bilevel_split import in_d2, subset_sample
from leebert_plugin.errors import UsageError
from leebert_plugin.runtime.option_checks import check_options
from leebert_plugin.modules.loss_weights import LossWeights
from leebert_plugin.optim.hypergradient import hypergradient

logger = logging.getLogger(__name__)
MODES = ("clo", "darts2", "darts1")
SHARE_WINDOW = 20  # meta steps between two looks at the share that had both D1 and D2 examples
LOW_SHARE = 0.5  # below it, the weights learn from too few meta steps: one warning


class BilevelTraining:
    """The learned loss weights, their optimizer and the meta step (settings: ``CLOConfig``)."""

    def __init__(self, cfg, names: Sequence[str], parametrization: str, group_scales: Dict[str, float],
                 d2_ratio: float, seed: int, device: torch.device):
        if cfg.mode not in MODES:
            raise UsageError(f"unknown clo mode {cfg.mode!r}", f"set optimizer.mode to one of {', '.join(MODES)}")
        check_options("optimizer", cfg)
        self.cfg = cfg
        self.d2_ratio, self.seed = d2_ratio, seed
        self.weights = LossWeights(names, parametrization, group_scales).to(device=device, dtype=torch.float32)
        # decoupled weight decay: with xi at the model's (small) lr, L2 folded into the gradient
        # would dominate the hypergradient and pin the weights at their start
        self.optimizer = torch.optim.AdamW(self.weights.parameters(), lr=cfg.w_lr, betas=ast.literal_eval(cfg.w_betas),
                                           weight_decay=cfg.w_weight_decay)
        self._last_meta_update = -1
        self._split_checked = False
        self._meta_window = [0, 0]  # meta steps due, and those with D1 and D2 examples, since the last check
        self._warned_share = False
        self._replica: Optional[torch.nn.Module] = None  # fp32 copy of a model trained in fp16/bf16

    # ---- what the training step asks ------------------------------------------------------
    def current(self, names: Sequence[str]) -> Dict[str, Tensor]:
        """The weights of ``names`` as constants (only the meta step moves them)."""
        return {name: w.detach() for name, w in self.weights(names).items()}

    def split(self, sample: dict) -> Tuple[Optional[dict], Optional[dict]]:
        """The batch's D1 and D2 examples (None where a split has none)."""
        d2 = in_d2(sample["id"], self.seed, self.d2_ratio)
        return subset_sample(sample, ~d2), subset_sample(sample, d2)

    def training_batch(self, sample: dict, b1: Optional[dict]) -> Optional[dict]:
        """What the model trains on: both splits (clo), or D1 only (darts); None: nothing."""
        return sample if self.cfg.mode == "clo" else b1

    def check_split(self, dataset_size: int) -> None:
        """Both D1 and D2 must hold examples; checked once, on the first update."""
        if self._split_checked:
            return
        d2 = int(in_d2(torch.arange(dataset_size), self.seed, self.d2_ratio).sum())
        if d2 == 0 or d2 == dataset_size:
            empty = "D2" if d2 == 0 else "D1"
            raise UsageError(
                f"{empty} is empty: d2_ratio={self.d2_ratio} puts {d2} of the {dataset_size} training examples in D2",
                "use more training data or a d2_ratio nearer 0.5",
            )
        logger.info(f"bi-level split: {dataset_size - d2} examples in D1, {d2} in D2 (d2_ratio={self.d2_ratio})")
        self._split_checked = True

    def meta_due(self, update_num: int) -> bool:
        """Every ``w_update_interval`` updates, once per update however many micro-batches it has;
        decided by the update number alone, so every worker joins the meta step's all-reduce."""
        return update_num % self.cfg.w_update_interval == 0 and update_num != self._last_meta_update

    def meta_step(self, model, criterion, b1: Optional[dict], b2: Optional[dict], update_num: int,
                  lr: float) -> Dict[str, float]:
        """Move the weights by the hypergradient(s); the model (unwrapped) is left as it was.

        Every data-parallel worker calls this on the same updates: one whose batch lacks D1 or
        D2 examples (or is a dummy batch, b1 = b2 = None) contributes nothing, and the weights
        move by the mean over the workers that had both, identically everywhere.
        """
        self._last_meta_update = update_num
        seed = self.seed * 1_000_003 + update_num
        names = list(self.weights.names)
        g = torch.zeros(len(names), device=self.weights.logits.device)
        count = torch.zeros((), device=g.device)
        if b1 is not None and b2 is not None:
            xi = self.cfg.xi if self.cfg.xi > 0 else lr
            weights = self.current(names)
            fp32 = self._in_fp32(model)
            with _no_autocast(g.device.type):
                g = hypergradient(fp32, criterion, weights, b1, b2, xi, self.cfg.fd_eps, self.cfg.mode != "darts1", seed)
                if self.cfg.mode == "clo":
                    g = 0.5 * (g + hypergradient(fp32, criterion, weights, b2, b1, xi, self.cfg.fd_eps, True, seed + 7))
            count += 1
        if distributed_utils.get_data_parallel_world_size() > 1:
            group = distributed_utils.get_data_parallel_group()
            g, count = distributed_utils.all_reduce(g, group), distributed_utils.all_reduce(count, group)
        moved = float(count) > 0
        self._watch_share(moved, b1, b2)
        if not moved:
            return {"meta_steps": 1, "meta_with_both": 0, "hypergrad_norm": 0.0}
        g = (g / count).float()
        self.optimizer.zero_grad()
        torch.autograd.backward(self.weights.weights(), g)
        self.optimizer.step()
        return {"meta_steps": 1, "meta_with_both": 1, "hypergrad_norm": float(g.norm())}

    def _watch_share(self, moved: bool, b1: Optional[dict], b2: Optional[dict]) -> None:
        """Warn once when fewer than ``LOW_SHARE`` of the last ``SHARE_WINDOW`` meta steps had
        both D1 and D2 examples (on some worker): a meta step without them leaves the weights
        where they are, so at a small batch size they barely learn, silently."""
        self._meta_window[0] += 1
        self._meta_window[1] += int(moved)
        due, both = self._meta_window
        if due < SHARE_WINDOW:
            return
        self._meta_window = [0, 0]
        if both / due < LOW_SHARE and not self._warned_share:
            self._warned_share = True
            size = sum(int(b["nsentences"]) for b in (b1, b2) if b is not None)
            logger.warning(f"clo: only {both} of the last {due} meta steps ({100 * both / due:.0f}%) had both D1 and D2 "
                           f"examples in their batch ({size} sentences in the last): the loss-term weights learn from "
                           f"those alone. Raise dataset.batch_size, or set task.d2_ratio nearer 0.5")

    def _in_fp32(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model the meta step differentiates, in fp32 whatever precision it trains in.

        Its finite differences move every parameter by about ``fd_eps / sqrt(#params)``, far
        below the resolution of fp16/bf16 weights (the moves would round away). A model trained in
        fp32 (or under --amp, whose weights are fp32) is used as it is; otherwise an fp32 replica,
        kept between meta steps and refreshed from the model's current values each time.
        """
        if all(p.dtype == torch.float32 for p in model.parameters()):
            return model
        if self._replica is None:
            self._replica = copy.deepcopy(model).float()
        with torch.no_grad():
            for mine, theirs in zip(self._replica.parameters(), model.parameters()):
                mine.copy_(theirs)
                mine.requires_grad_(theirs.requires_grad)
            for mine, theirs in zip(self._replica.buffers(), model.buffers()):
                mine.copy_(theirs)
        return self._replica.train(model.training)

    def to(self, device: torch.device) -> None:
        """Follow the model onto its device (the weights and their optimizer's state)."""
        if self.weights.logits.device == device:
            return
        self.weights.to(device)
        self._replica = None
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if torch.is_tensor(value) and key != "step":
                    state[key] = value.to(device)

    # ---- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"weights": self.weights.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict, reset_optimizer: bool = False) -> None:
        """The saved weights (their names must match); their optimizer state unless reset."""
        self.weights.load_state_dict(state["weights"])
        if not reset_optimizer:
            self.optimizer.load_state_dict(state["optimizer"])


def _no_autocast(device_type: str):
    """The meta step's passes in the weights' own precision, also inside an --amp training step."""
    return torch.autocast(device_type, enabled=False) if device_type in ("cuda", "cpu") else contextlib.nullcontext()
