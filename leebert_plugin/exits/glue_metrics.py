"""GLUE's metrics from summable statistics, so that they survive multi-worker reduction.

Binary tasks log a confusion matrix (tp, fp, fn, tn) per exit; F1 (MRPC, QQP) and Matthews'
correlation (CoLA) follow from it. Regression (STS-B) logs the sums n, Σx, Σy, Σx², Σy², Σxy per
exit; Pearson's r follows. Spearman's rho needs every prediction's rank: regression also logs the
predictions themselves, as lists (``rank_meter``).

In validation fairseq reduces each batch on its own, so the statistics are summed in hidden meters
(``_tp_L3``, ...) over the whole split and every worker, and the metrics are derived from those
sums when fairseq reads them (``log_exact``): the figure is the split's, not a mean over batches.
"""
import functools
import math
from typing import Dict, Iterable

import torch
from fairseq.logging import metrics
from fairseq.logging.meters import SumMeter
from torch import Tensor

CONFUSION = ("tp", "fp", "fn", "tn")
MOMENTS = ("n", "sx", "sy", "sxx", "syy", "sxy")


def confusion(preds: Tensor, targets: Tensor, positive: int) -> Dict[str, Tensor]:
    p, t = preds == positive, targets == positive
    return {"tp": (p & t).sum(), "fp": (p & ~t).sum(), "fn": (~p & t).sum(), "tn": (~p & ~t).sum()}


def f1(c: Dict[str, float]) -> float:
    denom = 2 * c["tp"] + c["fp"] + c["fn"]
    return 100.0 * 2 * c["tp"] / denom if denom else 0.0


def mcc(c: Dict[str, float]) -> float:
    tp, fp, fn, tn = (float(c[k]) for k in CONFUSION)
    denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 100.0 * (tp * tn - fp * fn) / denom if denom else 0.0


def moments(pred: Tensor, target: Tensor) -> Dict[str, float]:
    x, y = pred.double().view(-1), target.double().view(-1)
    return {"n": float(x.numel()), "sx": float(x.sum()), "sy": float(y.sum()), "sxx": float((x * x).sum()),
            "syy": float((y * y).sum()), "sxy": float((x * y).sum())}


def pearson(m: Dict[str, float]) -> float:
    n = m["n"]
    if not n:
        return 0.0
    cov = m["sxy"] - m["sx"] * m["sy"] / n
    var = (m["sxx"] - m["sx"] ** 2 / n) * (m["syy"] - m["sy"] ** 2 / n)
    return 100.0 * cov / math.sqrt(var) if var > 0 else 0.0


def positive_class(label_dictionary) -> int:
    """The class index of label "1" (fairseq orders labels by frequency: the index is not the value)."""
    if label_dictionary is None or "1" not in label_dictionary.indices:
        return 1
    return label_dictionary.index("1") - label_dictionary.nspecial


def log_statistics(logging_output: Dict, suffix: str, logits: Tensor, targets: Tensor, regression: bool,
                   positive: int) -> None:
    """Add one exit's (or the policy's) statistics to a logging output, under ``<stat><suffix>``."""
    if regression:
        stats = moments(logits.view(-1), targets)
        stats["preds"] = logits.detach().view(-1).tolist()  # for Spearman; evaluation only
        logging_output["target_values"] = targets.view(-1).tolist()
    elif logits.size(-1) == 2:
        stats = confusion(logits.argmax(-1), targets, positive)
    else:
        return
    for k, v in stats.items():
        logging_output[f"{k}{suffix}"] = v


def derive(totals: Dict[str, float], suffix: str) -> Dict[str, float]:
    """Metric values for one suffix, from summed statistics (empty if none were logged)."""
    if f"tp{suffix}" in totals:
        c = {k: float(totals[f"{k}{suffix}"]) for k in CONFUSION}
        return {"f1": f1(c), "mcc": mcc(c)}
    if f"sxy{suffix}" in totals:
        return {"pearson": pearson({k: float(totals[f"{k}{suffix}"]) for k in MOMENTS})}
    return {}


def log_exact(totals: Dict[str, float], suffixes: Iterable[str]) -> None:
    """Add this batch's statistics to hidden sum meters and register F1/MCC/Pearson per suffix as
    derived from the sums of everything logged since the meters were last reset."""
    for key, value in totals.items():
        metrics.log_scalar_sum("_" + key, float(value))
    for suffix in suffixes:
        for name in derive(totals, suffix):
            metrics.log_derived(name + suffix, functools.partial(_from_sums, name=name, suffix=suffix))


def _from_sums(meters, name: str, suffix: str) -> float:
    sums = {key[1:]: meter.sum for key, meter in meters.items() if key.startswith("_") and isinstance(meter, SumMeter)}
    return round(derive(sums, suffix)[name], 2)
