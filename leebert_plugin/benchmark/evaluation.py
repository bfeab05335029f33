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
:mod:`leebert_plugin.benchmark.stats`). A run without gates also keeps its dev and test traces
(``traces.npz``: every exit's logits and each example's FLOPs units), from which
:func:`score_traces` scores it again, without the model, when the evaluation changes.
"""
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from leebert_plugin.exits.calibrate import alpha_for_speedup, alpha_grid, per_exit_thresholds, threshold_for_speedup
from leebert_plugin.exits.evaluate import (
    ExitTrace, batches, flops_speedup, load, oracle_exits, pass_outcomes, predictions, replay, save_traces, score,
    trace,
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

    def same_as(self, other: "Outcomes") -> bool:
        """Every array equal, shape and values (dtypes aside: ``layers`` is stored as int16)."""
        return all(np.array_equal(a, b) for a, b in ((self.ids, other.ids), (self.correct, other.correct),
                                                     (self.layers, other.layers)))

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


def _speedups(dev: ExitTrace) -> Dict[str, Optional[Callable[[torch.Tensor], float]]]:
    """How each axis of :data:`CALIBRATED_SPEEDUPS` measures a speed-up on ``dev`` (None: layers,
    the calibration's default)."""
    return {"layers": None, "flops": lambda exit_at: flops_speedup(dev, exit_at)}


def entropy_grid(dev: ExitTrace) -> List[float]:
    """:data:`ENTROPY_GRID` and the global thresholds calibrated on ``dev`` for
    :data:`CALIBRATED_SPEEDUPS` (those dev can reach), increasing, without repeats."""
    measure = _speedups(dev)
    calibrated = (threshold_for_speedup(dev, s, measure[axis]) for axis, s in CALIBRATED_SPEEDUPS)
    return sorted(set(ENTROPY_GRID) | {th for th in calibrated if th is not None})


def alpha_levels(dev: ExitTrace) -> List[float]:
    """The per-exit rule's levels: :func:`~leebert_plugin.exits.calibrate.alpha_grid` and the
    levels calibrated on ``dev`` for :data:`CALIBRATED_SPEEDUPS`, increasing, without repeats: the
    same calibrated speed-ups as the global threshold's, so neither rule has a point made for a
    compared speed-up that the other lacks."""
    measure = _speedups(dev)
    calibrated = (alpha_for_speedup(dev, s, measure[axis]) for axis, s in CALIBRATED_SPEEDUPS)
    return sorted(set(alpha_grid(dev)) | {a for a in calibrated if a is not None})


def _by_id(ids: torch.Tensor, *values: torch.Tensor) -> Tuple[np.ndarray, ...]:
    order = torch.argsort(ids)
    return (ids[order].numpy(),) + tuple(v[order].numpy() for v in values)


class _Kept:
    """The test outcomes of a run's points, gathered point by point (examples by sample id)."""

    def __init__(self):
        self.ids: Optional[np.ndarray] = None
        self.correct: List[np.ndarray] = []
        self.layers: List[np.ndarray] = []

    def add(self, test_ids, pred, target, ran) -> None:
        sorted_ids, p, t, r = _by_id(test_ids, pred, target, ran)
        if self.ids is not None and not np.array_equal(self.ids, sorted_ids):
            raise RuntimeError("test sample ids differ between two passes over the same split")
        self.ids = sorted_ids
        self.correct.append(p == t)
        self.layers.append(r.astype(np.int16))

    def outcomes(self) -> Outcomes:
        return Outcomes(self.ids, np.stack(self.correct), np.stack(self.layers))


def _new_result(traces: Dict[str, ExitTrace], gated: bool) -> Dict:
    """The head of a run's figures, with each split's oracle row (the earliest right exit: the
    ceiling no policy over these exits beats)."""
    result: Dict = {"evaluation": VERSION, "layers": traces["test"].num_layers, "gated": gated, "points": []}
    for name, t in traces.items():
        result[f"{name}_oracle"] = score(t, oracle_exits(t))
    return result


def score_traces(traces: Dict[str, ExitTrace]) -> Tuple[Dict, Outcomes]:
    """The figures and test outcomes of a run without skip gates, from its dev and test traces
    alone (``evaluate`` made them; :func:`~leebert_plugin.exits.evaluate.load_traces` reads them
    back): every point is a replay, so no model is needed. The full-depth point costs the plain
    model's FLOPs (only the last exit runs when deployed without a policy)."""
    dev, test = traces["dev"], traces["test"]
    if test.gated:
        raise ValueError("a run with skip gates is scored by real passes (evaluate), not from its traces")
    if any(t.layer_flops is None or t.exit_flops is None for t in traces.values()):
        raise ValueError("these traces have no FLOPs units (layer_flops, exit_flops): make them with trace()")
    result, kept = _new_result(traces, gated=False), _Kept()
    classes, last = test.logits.size(-1), len(test.exit_layers) - 1
    grid = [("none", None, 0, ())]
    if last > 0:
        grid += [("patience", None, p, ()) for p in range(1, test.num_layers)]
        grid += [("normalized_entropy", th, 1, ()) for th in entropy_grid(dev)]
        grid += [("per_exit_entropy", a, 1, per_exit_thresholds(dev, a)) for a in alpha_levels(dev)]
    for name, th, patience, taus in grid:
        exits = {s: (torch.full((t.logits.size(1),), last) if name == "none"
                     else replay(build_policy(name, classes, None if taus else th, patience, taus), t))
                 for s, t in traces.items()}
        rows = {s: score(traces[s], e) for s, e in exits.items()}
        if name == "none":
            for row in rows.values():
                row["flops_speedup"] = 1.0
        result["points"].append(point(name, th, patience, rows, taus))
        kept.add(test.ids, predictions(test, exits["test"]), test.targets, torch.tensor(test.exit_layers)[exits["test"]])
    return result, kept.outcomes()


def _traced(checkpoint: Path, data: Path, device, batch_size: int):
    """The run's model and task, its dev and test batches, and every exit's logits over them."""
    model, task = load(checkpoint, data, device)
    loaded = {name: batches(task, subset, batch_size) for name, subset in SPLITS.items()}
    return model, task, loaded, {name: trace(model, task, d) for name, d in loaded.items()}


def traces_of(checkpoint: Path, data: Path, device, batch_size: int = 64) -> Optional[Dict[str, ExitTrace]]:
    """The dev and test traces :func:`evaluate` would write for this run (None with skip gates:
    such a run is scored by real passes): for a record written before runs kept their traces."""
    model, _, _, traces = _traced(checkpoint, data, device, batch_size)
    return traces if model.skip_gates is None else None


def evaluate(checkpoint: Path, data: Path, device, batch_size: int = 64,
             traces_path: Optional[Path] = None) -> Tuple[Dict, Outcomes]:
    """The run's figures (``points``: full depth first, then the grid; oracle rows) and its test
    outcomes. Without skip gates, every point is a replay of the dev and test traces
    (:func:`score_traces`), which are written to ``traces_path`` when given, so that a later
    evaluation can score the run again without its checkpoint; with gates every point is a real
    pass (gates still skip at full depth)."""
    model, task, loaded, traces = _traced(checkpoint, data, device, batch_size)
    if model.skip_gates is None:
        if traces_path is not None:
            save_traces(traces_path, traces)
        return score_traces(traces)
    if traces_path is not None:  # a gated run is not scored from traces: none of an earlier run's may stay
        Path(traces_path).unlink(missing_ok=True)
    result, kept = _new_result(traces, gated=True), _Kept()
    classes = model.exit_heads[task.cfg.classification_head_name].num_classes
    for name, th in [("none", None)] + [("entropy", frac * math.log(classes)) for frac in GATED_GRID]:
        policy = build_policy(name, classes, th, 1)
        passes = {s: pass_outcomes(model, task, d, policy) for s, d in loaded.items()}
        result["points"].append(point(name, th, 1 if th is not None else 0,
                                      {s: o.metrics() for s, o in passes.items()}))
        o = passes["test"]
        kept.add(o.ids, o.pred, o.target, o.layers)
    return result, kept.outcomes()
