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

**How far the weights can move.** Adam moves a logit by about its learning rate per step at most
(less where the hypergradient's sign varies). At a fixed ``w_lr`` the reach of the weights thus
depends on the run's length: 3e-3 over the 6 to 64 meta steps of a short run is at most 0.02 to
0.2 in logit space, so no weight could leave its uniform start whatever the hypergradient said
(issue 38). The default therefore derives the rate from the run (:func:`weights_lr`):

    w_lr = w_travel / M,     M = ceil(planned updates / w_update_interval)   (the meta steps to come)

so a weight whose hypergradient keeps its sign can travel ``w_travel`` (3) logits over any run,
and one pulled both ways proportionally less. Why this and not the alternatives: a meta step every
update would cost about 4 plain updates each (two crossed hypergradients), far above the 1.5x
target, and a cheaper hypergradient (heads and top layers only) would change what is learned; a
schedule without the run's length cannot give the same reach to 64 and to 20,000 updates. A
constant rate keeps every meta step equally weighted. An explicit ``optimizer.w_lr`` wins; a
resumed run uses its own configuration's rate, never the checkpoint's (a longer resumed run gets
the rate of its new length; the moments are restored).

**Per unit of virtual step.** The hypergradient is proportional to the virtual step ``xi``, the
model's current lr by default, which fairseq's schedules take from near 0 (warm-up) to a peak and
back to 0. Adam is invariant to a constant scale of its gradient, not to one that changes from
step to step: its second moment (beta2 0.999, a memory of about 1000 steps) would make the meta
steps at a low lr nearly vanish, and ``xi`` near 1e-8 puts the hypergradient at Adam's epsilon.
The meta step therefore hands Adam ``g / xi`` (the same direction at every lr).

**The trajectory.** Every meta step that moves the weights is recorded (its update number and all
weights), thinned to at most ``TRAJECTORY_POINTS`` by keeping every 2nd point whenever full, and
saved with the weights; the benchmark writes it beside each run's record.
"""
import ast
import contextlib
import copy
import logging
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from fairseq.distributed import utils as distributed_utils
from torch import Tensor

from leebert_plugin.data.bilevel_split import in_d2, subset_sample
from leebert_plugin.errors import UsageError
from leebert_plugin.modules.loss_weights import LossWeights, spread, term_group
from leebert_plugin.runtime.option_checks import check_options
from leebert_plugin.optim.hypergradient import hypergradient

logger = logging.getLogger(__name__)
MODES = ("clo", "darts2", "darts1")
SHARE_WINDOW = 20  # meta steps between two looks at the share that had both D1 and D2 examples
LOW_SHARE = 0.5  # below it, the weights learn from too few meta steps: one warning
UNKNOWN_LENGTH = 1000  # updates assumed when the run's length is unknown (no max_update, no max_epoch)
TRAJECTORY_POINTS = 256  # at most this many recorded points (thinned by 2 whenever full)


def meta_steps(updates: int, interval: int) -> int:
    """Meta steps of a run of ``updates`` updates numbered 0 .. updates - 1, one at every multiple of ``interval``."""
    return max(1, math.ceil(updates / interval))


def weights_lr(cfg, planned_updates: Optional[int]) -> float:
    """The loss weights' learning rate: ``cfg.w_lr`` when set, else ``w_travel / M`` with M the meta
    steps of ``planned_updates`` updates (:data:`UNKNOWN_LENGTH` when None; see the module's docstring)."""
    if cfg.w_lr is not None:
        return float(cfg.w_lr)
    return cfg.w_travel / meta_steps(planned_updates or UNKNOWN_LENGTH, cfg.w_update_interval)


class BilevelTraining:
    """The learned loss weights, their optimizer and the meta step (settings: ``CLOConfig``)."""

    def __init__(self, cfg, names: Sequence[str], parametrization: str, group_scales: Dict[str, float],
                 d2_ratio: float, seed: int, device: torch.device, planned_updates: Optional[int] = None):
        """``planned_updates``: the updates the run will take (None: unknown), from which the
        weights' learning rate is derived unless ``cfg.w_lr`` is set (:func:`weights_lr`)."""
        if cfg.mode not in MODES:
            raise UsageError(f"unknown clo mode {cfg.mode!r}", f"set optimizer.mode to one of {', '.join(MODES)}")
        check_options("optimizer", cfg)
        self.cfg = cfg
        self.d2_ratio, self.seed = d2_ratio, seed
        self.planned_updates = planned_updates
        self.w_lr = weights_lr(cfg, planned_updates)
        if cfg.w_lr is None:
            if planned_updates is None:
                logger.warning(f"clo: the run's length is unknown (no optimization.max_update or max_epoch): the loss "
                               f"weights' lr assumes {UNKNOWN_LENGTH} updates ({self.w_lr:.3g}); set optimizer.w_lr")
            logger.info(f"clo: loss weights' lr {self.w_lr:.3g} = w_travel {cfg.w_travel} / "
                        f"{meta_steps(planned_updates or UNKNOWN_LENGTH, cfg.w_update_interval)} meta steps")
        self.weights = LossWeights(names, parametrization, group_scales).to(device=device, dtype=torch.float32)
        # decoupled weight decay: L2 folded into the gradient would compete with the hypergradient
        self.optimizer = torch.optim.AdamW(self.weights.parameters(), lr=self.w_lr, betas=ast.literal_eval(cfg.w_betas),
                                           weight_decay=cfg.w_weight_decay)
        self.trajectory = {"start": self._values(), "updates": [], "weights": [], "stride": 1, "moved": 0, "last": None}
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
        xi = self.cfg.xi if self.cfg.xi > 0 else lr
        if b1 is not None and b2 is not None and xi > 0:  # xi = 0 (an lr of 0): no virtual step, nothing learned
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
        torch.autograd.backward(self.weights.weights(), g / xi)  # per unit of virtual step (module docstring)
        self.optimizer.step()
        self._record(update_num)
        return {"meta_steps": 1, "meta_with_both": 1, "hypergrad_norm": float(g.norm())}

    def _values(self) -> List[float]:
        return self.weights.weights().detach().cpu().tolist()

    def _record(self, update_num: int) -> None:
        """Note the weights after the meta step of update ``update_num`` in the trajectory: every
        ``stride``-th moving meta step, the stride doubling (every other point dropped) whenever
        :data:`TRAJECTORY_POINTS` are held; the latest always, as ``last``."""
        t = self.trajectory
        values = self._values()
        t["last"] = [update_num, values]
        k, t["moved"] = t["moved"], t["moved"] + 1
        if k % t["stride"]:
            return
        t["updates"].append(update_num)
        t["weights"].append(values)
        if len(t["updates"]) >= TRAJECTORY_POINTS:
            t["updates"], t["weights"], t["stride"] = t["updates"][::2], t["weights"][::2], 2 * t["stride"]

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
        return {"weights": self.weights.state_dict(), "optimizer": self.optimizer.state_dict(),
                "trajectory": copy.deepcopy(self.trajectory), "w_lr": self.w_lr, "planned_updates": self.planned_updates}

    def load_state_dict(self, state: dict, reset_optimizer: bool = False) -> None:
        """The saved weights (their names must match) and trajectory; their optimizer's moments
        unless reset. The learning rate stays this run's (:func:`weights_lr`), not the saved one's."""
        self.weights.load_state_dict(state["weights"])
        if "trajectory" in state:  # checkpoints before issue 38 have none: recorded from here on
            self.trajectory = copy.deepcopy(state["trajectory"])
        if not reset_optimizer:
            self.optimizer.load_state_dict(state["optimizer"])
            for group in self.optimizer.param_groups:
                if group["lr"] != self.w_lr:
                    logger.info(f"clo: the checkpoint's loss weights trained at lr {group['lr']:.3g}; "
                                f"this run goes on at {self.w_lr:.3g}")
                group["lr"] = self.w_lr


def trajectory_of(state: dict) -> Dict:
    """The learned weights' record from a saved bi-level state (``task_state['bilevel']``): the term
    names and groups, the start, the recorded updates with the weights after each (the last meta
    step's included), the final weights by name, their distance from uniform per group
    (:func:`~leebert_plugin.modules.loss_weights.spread`), and the lr and planned updates (absent in
    checkpoints older than issue 38)."""
    weights = LossWeights.from_state(state["weights"])
    final = weights.weights().detach().cpu().tolist()
    t = state.get("trajectory") or {"start": None, "updates": [], "weights": [], "last": None}
    updates, rows = list(t["updates"]), [list(r) for r in t["weights"]]
    if t.get("last") is not None and (not updates or updates[-1] != t["last"][0]):
        updates.append(t["last"][0])
        rows.append(list(t["last"][1]))
    by_name = dict(zip(weights.names, final))
    return {"names": list(weights.names), "groups": [term_group(n) for n in weights.names],
            "start": t["start"], "updates": updates, "weights": rows, "final": by_name, "spread": spread(by_name),
            "w_lr": state.get("w_lr"), "planned_updates": state.get("planned_updates")}


def _no_autocast(device_type: str):
    """The meta step's passes in the weights' own precision, also inside an --amp training step."""
    return torch.autocast(device_type, enabled=False) if device_type in ("cuda", "cpu") else contextlib.nullcontext()
