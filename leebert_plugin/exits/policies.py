"""Exit policies: per-sample decisions on a batch, taken layer by layer.

A policy sees the logits of the samples still running at one exit and returns which of them are
done. Anything it must remember between exits (PABEE's patience counter) lives in a ``state`` dict
of batch-first tensors, which the layer loop compacts together with the batch. No policy looks at
Python truth values of per-sample tensors, so every decision is independent of the batch size.
"""
import math
from typing import Callable, Dict, Optional, Sequence, Tuple, Type

import torch
from torch import Tensor

from leebert_plugin.errors import UsageError

State = Dict[str, Tensor]
POLICY_REGISTRY: Dict[str, Type["ExitPolicy"]] = {}


def register_policy(name: str) -> Callable[[Type["ExitPolicy"]], Type["ExitPolicy"]]:
    """Class decorator: make a policy selectable by ``--exit-policy NAME``."""

    def wrap(cls: Type["ExitPolicy"]) -> Type["ExitPolicy"]:
        if name in POLICY_REGISTRY:
            raise ValueError(f"exit policy {name!r} is registered twice")
        cls.name = name
        POLICY_REGISTRY[name] = cls
        return cls

    return wrap


def entropy(logits: Tensor) -> Tensor:
    """Shannon entropy (natural log) of softmax(logits), per row, in float32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


class ExitPolicy:
    """Base class. ``threshold_range`` is ``None`` for policies that take no threshold."""

    name = "base"
    uses_patience = False
    uses_thresholds = False  # one threshold per exit (``thresholds``) instead of one for all
    # what the logits are: classes (B x C, C >= 2) or a regression value (B x 1); both for "none"
    targets = ("classification",)
    # a higher threshold lets more samples leave (entropy: exit below it); False where a lower one
    # does (max_prob: exit above it). Orders a calibration's thresholds from cautious to aggressive
    exits_more_as_threshold_grows = True

    def __init__(self, num_classes: int, threshold: Optional[float] = None, patience: int = 1,
                 thresholds: Sequence[float] = ()):
        self.num_classes = num_classes
        self.threshold = threshold
        self.patience = patience
        self.thresholds = tuple(thresholds)

    def threshold_range(self) -> Optional[Tuple[float, float]]:
        return None

    def check_model(self, num_exits: int, gated: bool) -> None:
        """Refuse (:class:`UsageError`) a model this policy cannot decide for; called once per forward,
        from Python values only."""

    def init_state(self, batch_size: int, device: torch.device) -> State:
        return {}

    def step(self, logits: Tensor, state: State) -> Tuple[Tensor, State]:
        """Return a bool mask of the rows of ``logits`` that exit here, and the updated state."""
        raise NotImplementedError


@register_policy("none")
class NeverExit(ExitPolicy):
    """Every sample runs to the last layer (the full-depth reference)."""

    targets = ("classification", "regression")

    def step(self, logits: Tensor, state: State) -> Tuple[Tensor, State]:
        return logits.new_zeros(logits.size(0), dtype=torch.bool), state


@register_policy("entropy")
class EntropyExit(ExitPolicy):
    """DeeBERT / SmartBERT: exit when H(p) < threshold (nats; at most ln C)."""

    def threshold_range(self) -> Tuple[float, float]:
        return 0.0, math.log(self.num_classes)

    def step(self, logits: Tensor, state: State) -> Tuple[Tensor, State]:
        return entropy(logits) < self.threshold, state


@register_policy("normalized_entropy")
class NormalizedEntropyExit(ExitPolicy):
    """FastBERT's "speed": exit when H(p) / ln C < threshold."""

    def threshold_range(self) -> Tuple[float, float]:
        return 0.0, 1.0

    def step(self, logits: Tensor, state: State) -> Tuple[Tensor, State]:
        return entropy(logits) / math.log(self.num_classes) < self.threshold, state


@register_policy("max_prob")
class MaxProbExit(ExitPolicy):
    """Shallow-Deep / RightTool: exit when max_c p_c >= threshold."""

    exits_more_as_threshold_grows = False

    def threshold_range(self) -> Tuple[float, float]:
        return 0.0, 1.0

    def step(self, logits: Tensor, state: State) -> Tuple[Tensor, State]:
        return torch.softmax(logits.float(), dim=-1).amax(-1) >= self.threshold, state


@register_policy("patience")
class PatienceExit(ExitPolicy):
    """PABEE: exit once the argmax has stayed the same for ``patience`` consecutive exits."""

    uses_patience = True

    def init_state(self, batch_size: int, device: torch.device) -> State:
        return {
            "count": torch.zeros(batch_size, dtype=torch.long, device=device),
            "prev": torch.full((batch_size,), -1, dtype=torch.long, device=device),
        }

    def step(self, logits: Tensor, state: State) -> Tuple[Tensor, State]:
        pred = logits.argmax(-1)
        count = torch.where(pred == state["prev"], state["count"] + 1, torch.zeros_like(state["count"]))
        return count >= self.patience, {"count": count, "prev": pred}


@register_policy("pcee")
class PatientConfidenceExit(ExitPolicy):
    """PCEE-BERT: exit once ``patience`` consecutive exits each have H(p) / ln C < threshold."""

    uses_patience = True

    def threshold_range(self) -> Tuple[float, float]:
        return 0.0, 1.0

    def init_state(self, batch_size: int, device: torch.device) -> State:
        return {"count": torch.zeros(batch_size, dtype=torch.long, device=device)}

    def step(self, logits: Tensor, state: State) -> Tuple[Tensor, State]:
        confident = entropy(logits) / math.log(self.num_classes) < self.threshold
        count = torch.where(confident, state["count"] + 1, torch.zeros_like(state["count"]))
        return count >= self.patience, {"count": count}


@register_policy("regression_patience")
class RegressionPatienceExit(ExitPolicy):
    """PABEE for regression: exit once ``patience`` consecutive exits each moved the prediction by
    less than ``threshold`` (|y_i - y_{i-1}| < threshold, in the target's units)."""

    uses_patience = True
    targets = ("regression",)

    def threshold_range(self) -> Tuple[float, float]:
        return 0.0, math.inf

    def init_state(self, batch_size: int, device: torch.device) -> State:
        return {
            "count": torch.zeros(batch_size, dtype=torch.long, device=device),
            "prev": torch.full((batch_size,), math.nan, device=device),
        }

    def step(self, logits: Tensor, state: State) -> Tuple[Tensor, State]:
        pred = logits.float().view(-1)
        steady = (pred - state["prev"]).abs() < self.threshold  # nan at the first exit: never steady
        count = torch.where(steady, state["count"] + 1, torch.zeros_like(state["count"]))
        return count >= self.patience, {"count": count, "prev": pred}


@register_policy("per_exit_entropy")
class PerExitEntropyExit(ExitPolicy):
    """Normalised entropy with a threshold per exit: exit ``k`` lets a sample go when
    H(p_k) / ln C < tau_k. The thresholds come from a calibration on dev
    (:func:`leebert_plugin.exits.calibrate.per_exit_thresholds`): one global threshold asks the same
    confidence of a shallow exit, whose confident answers are wrong more often, as of a deep one.

    The exit index is a per-sample counter in ``state`` and the thresholds a ``B x E`` table there,
    so the layer loop compacts them with the batch. Under skip gates a sample passes fewer exits
    than the layer count says, so the counter would not be the exit index: gated models are refused.
    """

    uses_thresholds = True

    def threshold_range(self) -> Tuple[float, float]:
        return 0.0, 1.0

    def check_model(self, num_exits: int, gated: bool) -> None:
        if gated:
            raise UsageError(f"exit policy {self.name!r} needs every exit checked, and skip gates skip some",
                             "use entropy or normalized_entropy with a skip-gated (SmartBERT) model")
        if len(self.thresholds) != num_exits - 1:
            raise UsageError(f"{len(self.thresholds)} exit thresholds for a model with {num_exits} exits",
                             f"pass {num_exits - 1}, one per exit but the last (--exit-thresholds / task.exit_thresholds)")

    def init_state(self, batch_size: int, device: torch.device) -> State:
        table = torch.tensor(self.thresholds, dtype=torch.float32, device=device)
        return {"exit": torch.zeros(batch_size, dtype=torch.long, device=device),
                "tau": table.unsqueeze(0).expand(batch_size, -1)}

    def step(self, logits: Tensor, state: State) -> Tuple[Tensor, State]:
        tau = state["tau"].gather(1, state["exit"].unsqueeze(1)).squeeze(1)
        leaves = (entropy(logits) / math.log(self.num_classes) < tau) | (tau >= 1.0)  # 1: everyone, uniform too
        return leaves, {"exit": state["exit"] + 1, "tau": state["tau"]}


def parse_thresholds(text: str) -> Tuple[float, ...]:
    """``"0.1,0.2,0.3"`` -> (0.1, 0.2, 0.3); ``""`` -> (); a non-number is a :class:`UsageError`."""
    try:
        return tuple(float(v) for v in text.split(",")) if text.strip() else ()
    except ValueError:
        raise UsageError(f"exit thresholds {text!r} are not comma-separated numbers",
                         "pass e.g. --exit-thresholds 0.1,0.2,0.3 (task.exit_thresholds)") from None


class AssignedExit(ExitPolicy):
    """Each sample leaves at a pre-assigned exit (0-based among the exits; state: exits still to
    pass). Not registered: it decides nothing from the logits, so it measures the loop itself
    (``scripts/bench_speed.py`` without a checkpoint, the host-sync tests)."""

    name = "assigned"

    def __init__(self, exit_index: Tensor, num_classes: int = 2):
        super().__init__(num_classes)
        self.exit_index = exit_index

    def init_state(self, batch_size: int, device: torch.device) -> State:
        return {"left": self.exit_index.clone().to(device)}

    def step(self, logits: Tensor, state: State) -> Tuple[Tensor, State]:
        return state["left"] <= 0, {"left": state["left"] - 1}


def build_policy(
    name: str, num_classes: int, threshold: Optional[float] = None, patience: int = 1,
    thresholds: Sequence[float] = (),
) -> ExitPolicy:
    """Check the settings and build the policy; a :class:`UsageError` names what is wrong."""
    if name not in POLICY_REGISTRY:
        raise UsageError(
            f"unknown exit policy {name!r}",
            f"use one of {', '.join(sorted(POLICY_REGISTRY))} (--exit-policy or task.exit_policy; the scripts' --policy; exit_policy= in Python)",
        )
    if patience < 1:
        raise UsageError(f"patience={patience} is below 1", "set --exit-patience or task.exit_patience (patience= in Python) to 1 or more")
    target = "regression" if num_classes < 2 else "classification"
    if target not in POLICY_REGISTRY[name].targets:
        fits = sorted(n for n, cls in POLICY_REGISTRY.items() if target in cls.targets)
        raise UsageError(
            f"exit policy {name!r} does not apply to a {target} task (num_classes={num_classes})",
            f"use one of {', '.join(fits)} for {target} (--exit-policy or task.exit_policy; the scripts' --policy; exit_policy= in Python)",
        )
    policy = POLICY_REGISTRY[name](num_classes, threshold, patience, thresholds)
    low_high = policy.threshold_range()
    if policy.uses_thresholds:
        low, high = low_high
        if not thresholds:
            raise UsageError(f"exit policy {name!r} needs one threshold per exit but the last",
                             f"pass --exit-thresholds t1,t2,... (task.exit_thresholds), each in [{low:g}, {high:g}]")
        bad = [t for t in thresholds if not low <= t <= high]
        if bad:
            raise UsageError(f"exit threshold {bad[0]:g} is out of range for policy {name!r}",
                             f"use values in [{low:g}, {high:g}]")
    elif thresholds:
        raise UsageError(f"exit policy {name!r} takes one threshold, not one per exit",
                         "use --exit-threshold, or --exit-policy per_exit_entropy with --exit-thresholds")
    elif low_high is not None:
        low, high = low_high
        if threshold is None:
            raise UsageError(
                f"exit policy {name!r} needs a threshold",
                f"pass a threshold in [{low:g}, {high:.4g}] (--exit-threshold or task.exit_threshold; the scripts' "
                f"--threshold or --thresholds; threshold= in Python)",
            )
        if not (low <= threshold <= high) or math.isnan(threshold):
            raise UsageError(
                f"exit threshold {threshold:g} is out of range for policy {name!r}",
                f"use a value in [{low:g}, {high:.4g}]",
            )
    return policy
