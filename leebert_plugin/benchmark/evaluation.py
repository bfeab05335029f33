"""Every operating point of one trained run, on dev and test, with the test outcome of every example.

A run's operating points are its model at full depth (no exit policy) and every point of its
policy grid: for models without skip gates, PABEE's patience ``1 .. L-1`` and a normalised-entropy
grid (fixed thresholds, plus those calibrated on dev to run at the speed-ups of
:data:`CALIBRATED_SPEEDUPS`), each an exact replay of the exits' logits
(:func:`~leebert_plugin.exits.evaluate.replay`); for SmartBERT, real gated passes over an entropy
grid (a replay is not exact under gates, and calibrating one would take a dozen real passes per
speed-up). The grid is the whole tuning budget of a method, the same for every method of a kind:
thresholds are chosen on dev (:mod:`leebert_plugin.benchmark.choice`) and never on test. Models
without gates also get the points of the per-exit rule calibrated on dev (``per_exit_entropy``,
one point per level of :func:`alpha_levels`, its thresholds in ``thresholds``); the methods are
compared on the published rules, the per-exit rule against them
(:mod:`leebert_plugin.benchmark.report`).

Besides each point's figures (``points``), the test outcome of every example at every point is
kept (:class:`Outcomes`, ``outcomes.npz`` beside ``result.json``), ordered by the dataset's sample
id, so that two methods' points can be compared example by example (the paired bootstrap of
:mod:`leebert_plugin.benchmark.stats`).
"""
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from leebert_plugin.exits.calibrate import alpha_for_speedup, alpha_grid, per_exit_thresholds, threshold_for_speedup
from leebert_plugin.exits.evaluate import (
    ExitTrace, batches, flops_speedup, load, oracle_exits, pass_outcomes, predictions, replay, score, trace,
)
from leebert_plugin.exits.policies import build_policy

# Thresholds on the normalised entropy H(p) / ln C. Finer above 0.8: the exits of these small runs
# are unsure (every 2x point of the five-seed rotten-tomatoes matrix sat at 0.95-0.99), and with
# 0.97 -> 0.99 as the only step there, the point chosen for 2x on dev could run at 3x on test.
ENTROPY_GRID = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95,
                0.96, 0.97, 0.975, 0.98, 0.985, 0.99, 0.995)
# SmartBERT's own rule thresholds entropy in nats; its grid is these fractions of ln C (so 20 classes
# get the same budget as 2), shorter than ENTROPY_GRID because each point is a real gated pass.
GATED_GRID = (0.1, 0.2, 0.3, 0.45, 0.6, 0.7, 0.8, 0.85, 0.9, 0.94, 0.97, 0.99)
# Points calibrated on dev for these speed-ups ((axis, S): the smallest global threshold, and the
# highest per-exit level, at which dev runs at least S x), added to ENTROPY_GRID and to the per-exit
# levels: the point chosen at S x then runs at S x on dev, not at the next grid point's 2.2x, and
# exits too unsure for the fixed grid still reach the fast points. The same for every method without
# gates and for both rules, so none gets a point made for a compared speed-up that another lacks.
CALIBRATED_SPEEDUPS = tuple(("layers", s) for s in (1.25, 1.5, 1.75, 1.9, 2.0, 2.25, 2.5, 3.0, 4.0)) + tuple(
    ("flops", s) for s in (1.5, 2.0, 3.0))
SPLITS = {"dev": "valid", "test": "test"}
# result.json's "evaluation": 2 added the per-exit rule, 3 the finer grids, 4 the calibrated global
# thresholds, 5 the calibrated per-exit levels; runs scored by an older one are evaluated again
VERSION = 5
GATED_SINCE = 3  # the gated passes' grid last changed in evaluation 3: a gated run scored since is current


def required_version(result: Dict) -> int:
    """The oldest evaluation whose figures still stand for a run of ``result``'s kind: a change to
    the replayed grid does not redo SmartBERT's gated passes (a dozen real passes a run)."""
    return GATED_SINCE if result.get("gated") else VERSION


@dataclass
class Outcomes:
    """Test outcomes of a run's points: ``correct`` and ``layers`` are ``P x N`` (point x example,
    examples by increasing sample id ``ids``)."""

    ids: np.ndarray
    correct: np.ndarray
    layers: np.ndarray

    def save(self, path: Path) -> None:
        partial = path.with_name(path.name + ".part.npz")
        np.savez_compressed(partial, ids=self.ids, correct=self.correct, layers=self.layers)
        partial.replace(path)

    @classmethod
    def load(cls, path: Path) -> "Outcomes":
        with np.load(path) as z:
            return cls(z["ids"], z["correct"].astype(bool), z["layers"])


def point(policy: str, threshold: Optional[float], patience: int, rows: Dict[str, Dict],
          thresholds: Sequence[float] = ()) -> Dict:
    """One operating point's figures: ``dev_*`` and ``test_*`` metric, layer and FLOPs speed-up."""
    out = {"policy": policy, "threshold": threshold, "patience": patience, "thresholds": list(thresholds)}
    for prefix, row in rows.items():
        out.update({f"{prefix}_metric": row["accuracy"], f"{prefix}_speedup": row["layer_speedup"],
                    f"{prefix}_flops_speedup": row["flops_speedup"]})
    return out


def _speedups(dev: ExitTrace, model, head: str) -> Dict[str, Optional[Callable[[torch.Tensor], float]]]:
    """How each axis of :data:`CALIBRATED_SPEEDUPS` measures a speed-up on ``dev`` (None: layers,
    the calibration's default)."""
    return {"layers": None, "flops": lambda exit_at: flops_speedup(dev, exit_at, model, head)}


def entropy_grid(dev: ExitTrace, model, head: str) -> List[float]:
    """:data:`ENTROPY_GRID` and the global thresholds calibrated on ``dev`` for
    :data:`CALIBRATED_SPEEDUPS` (those dev can reach), increasing, without repeats."""
    measure = _speedups(dev, model, head)
    calibrated = (threshold_for_speedup(dev, s, measure[axis]) for axis, s in CALIBRATED_SPEEDUPS)
    return sorted(set(ENTROPY_GRID) | {th for th in calibrated if th is not None})


def alpha_levels(dev: ExitTrace, model, head: str) -> List[float]:
    """The per-exit rule's levels: :func:`~leebert_plugin.exits.calibrate.alpha_grid` and the
    levels calibrated on ``dev`` for :data:`CALIBRATED_SPEEDUPS`, increasing, without repeats: the
    same calibrated speed-ups as the global threshold's, so neither rule has a point made for a
    compared speed-up that the other lacks."""
    measure = _speedups(dev, model, head)
    calibrated = (alpha_for_speedup(dev, s, measure[axis]) for axis, s in CALIBRATED_SPEEDUPS)
    return sorted(set(alpha_grid(dev)) | {a for a in calibrated if a is not None})


def _by_id(ids: torch.Tensor, *values: torch.Tensor) -> Tuple[np.ndarray, ...]:
    order = torch.argsort(ids)
    return (ids[order].numpy(),) + tuple(v[order].numpy() for v in values)


def evaluate(checkpoint: Path, data: Path, device, batch_size: int = 64) -> Tuple[Dict, Outcomes]:
    """The run's figures (``points``: full depth first, then the grid; oracle rows) and its test
    outcomes. Without skip gates, the full-depth point costs the plain model's FLOPs (only the last
    exit runs when deployed without a policy); with gates it is a real pass (gates still skip)."""
    model, task = load(checkpoint, data, device)
    head = task.cfg.classification_head_name
    loaded = {name: batches(task, subset, batch_size) for name, subset in SPLITS.items()}
    gated = model.skip_gates is not None
    classes = model.exit_heads[head].num_classes
    result: Dict = {"evaluation": VERSION, "layers": model.num_layers, "gated": gated, "points": []}
    correct: List[np.ndarray] = []
    layers: List[np.ndarray] = []
    ids = None

    def keep(test_ids, pred, target, ran) -> None:
        nonlocal ids
        sorted_ids, p, t, r = _by_id(test_ids, pred, target, ran)
        if ids is not None and not np.array_equal(ids, sorted_ids):
            raise RuntimeError("test sample ids differ between two passes over the same split")
        ids = sorted_ids
        correct.append(p == t)
        layers.append(r.astype(np.int16))

    traces = {name: trace(model, task, d) for name, d in loaded.items()}
    for name, t in traces.items():  # the earliest right exit: the ceiling no policy over these exits beats
        result[f"{name}_oracle"] = score(t, oracle_exits(t), model, head)
    if not gated:
        last = len(model.exit_layers) - 1
        grid = [("none", None, 0, ())]
        if last > 0:
            grid += [("patience", None, p, ()) for p in range(1, model.num_layers)]
            grid += [("normalized_entropy", th, 1, ()) for th in entropy_grid(traces["dev"], model, head)]
            grid += [("per_exit_entropy", a, 1, per_exit_thresholds(traces["dev"], a))
                     for a in alpha_levels(traces["dev"], model, head)]
        for name, th, patience, taus in grid:
            exits = {s: (torch.full((t.logits.size(1),), last) if name == "none"
                         else replay(build_policy(name, classes, None if taus else th, patience, taus), t))
                     for s, t in traces.items()}
            rows = {s: score(traces[s], e, model, head) for s, e in exits.items()}
            if name == "none":
                for row in rows.values():
                    row["flops_speedup"] = 1.0
            result["points"].append(point(name, th, patience, rows, taus))
            t = traces["test"]
            keep(t.ids, predictions(t, exits["test"]), t.targets, torch.tensor(t.exit_layers)[exits["test"]])
        return result, Outcomes(ids, np.stack(correct), np.stack(layers))
    for name, th in [("none", None)] + [("entropy", frac * math.log(classes)) for frac in GATED_GRID]:
        policy = build_policy(name, classes, th, 1)
        passes = {s: pass_outcomes(model, task, d, policy) for s, d in loaded.items()}
        result["points"].append(point(name, th, 1 if th is not None else 0,
                                      {s: o.metrics() for s, o in passes.items()}))
        o = passes["test"]
        keep(o.ids, o.pred, o.target, o.layers)
    return result, Outcomes(ids, np.stack(correct), np.stack(layers))
