"""Spearman's rank correlation (STS-B) as a fairseq meter.

Ranks need every prediction of the split, so they cannot come from summed statistics: the
criterion logs each batch's predictions and targets as lists (evaluation only), the task gathers
rather than sums them across workers, and this meter collects them over the whole validation.
"""
from typing import Dict, List, Sequence

from fairseq.logging import metrics
from fairseq.logging.meters import Meter
from scipy.stats import spearmanr


class SpearmanMeter(Meter):
    """100 x Spearman's rho between every prediction and target seen since the last reset."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.preds: List[float] = []
        self.targets: List[float] = []

    def update(self, preds: Sequence[float], targets: Sequence[float]) -> None:
        self.preds.extend(preds)
        self.targets.extend(targets)

    def state_dict(self) -> Dict[str, List[float]]:
        return {"preds": self.preds, "targets": self.targets}

    def load_state_dict(self, state_dict) -> None:
        self.preds, self.targets = list(state_dict["preds"]), list(state_dict["targets"])

    @property
    def smoothed_value(self) -> float:
        if len(self.preds) < 2:
            return 0.0
        rho = spearmanr(self.preds, self.targets).statistic
        return round(100.0 * float(rho), 2) if rho == rho else 0.0  # constant predictions: nan -> 0


def log_spearman(logging_outputs: Sequence[Dict], pred_key: str, name: str) -> None:
    """Feed the ``pred_key`` / ``target_values`` lists of the logging outputs into meter ``name``."""
    preds = [v for log in logging_outputs for v in log.get(pred_key, ())]
    targets = [v for log in logging_outputs if pred_key in log for v in log["target_values"]]
    if preds:
        metrics.log_custom(SpearmanMeter, name, preds, targets)
