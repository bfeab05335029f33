"""A threshold sweep on dev, one choice there, its report on test: what ``scripts/sweep_thresholds.py``
and the main job (``leebert_plugin.demo``) run.

Every point is a real batched early-exit pass (:func:`~leebert_plugin.exits.evaluate.run`, the code
fairseq-validate runs) with its metric, layer speed-up (L / mean executed layers), FLOPs speed-up
(plain model / what ran, per sample) and wall-clock speed-up: the plain full-depth forward of the
same model over the same batches, timed in the same run, divided by the pass's time. The oracle
that leaves at the earliest correct exit (the first exit when none is correct) gives the ceiling.

Selection uses dev only (:func:`choose`): with a target speed-up ``S``, the most accurate threshold
whose dev layer speed-up is at least ``S``; with a maximum drop ``D``, the fastest whose dev accuracy
is within ``D`` points of full depth. The chosen threshold is then measured on test, next to test's
full depth. With a confidence as well (:func:`certify`), the choice on dev holds the drop under D
with that confidence instead (:mod:`leebert_plugin.exits.risk_control`).
"""
import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from leebert_plugin.exits import risk_control
from leebert_plugin.exits.evaluate import batches, oracle_exits, pass_outcomes, plain_seconds, run, score, trace
from leebert_plugin.exits.pareto import best_at
from leebert_plugin.exits.plotting import new_axes, save_plot
from leebert_plugin.exits.policies import build_policy
from leebert_plugin.runtime.outputs import write_text

COLUMNS = ["split", "threshold", "accuracy", "f1", "mcc", "layer_speedup", "flops_speedup", "wall_speedup"]


@dataclass
class Sweep:
    policy: str
    rows: List[Dict]  # one per threshold, on dev
    full: Dict  # dev at full depth
    oracle: float  # the oracle's layer speed-up on dev
    chosen: Optional[Dict]  # the dev row chosen; None: no threshold met the target
    test_full: Optional[Dict] = None  # test at full depth
    test_row: Optional[Dict] = None  # test under the chosen threshold


def choose(rows: Sequence[Dict], full: Dict, target_speedup: Optional[float], max_drop: Optional[float]) -> Optional[Dict]:
    """The dev row chosen: the most accurate at ``target_speedup`` or faster (ties: the faster),
    else the fastest within ``max_drop`` accuracy points of full depth (ties: the more accurate)."""
    if target_speedup is not None:
        best = best_at(rows, target_speedup, "layer_speedup", "accuracy")
        return None if best is None else rows[best]
    ok = [r for r in rows if r["accuracy"] >= full["accuracy"] - max_drop]
    return max(ok, key=lambda r: (r["layer_speedup"], r["accuracy"])) if ok else None


def _timed(model, task, data, policy, split: str, plain: float, **extra) -> Dict:
    row = run(model, task, data, policy)
    row.update(split=split, wall_speedup=plain / row["seconds"], **extra)
    return row


def _full_depth(model, task, data, never, split: str) -> Tuple[Dict, float]:
    """The early-exit pass that never exits, then the plain forward's seconds on the same batches
    (the pass comes first: it also warms up threads and allocator for the timings)."""
    row = run(model, task, data, never)
    plain = plain_seconds(model, task, data)
    row.update(split=split, wall_speedup=plain / row["seconds"], threshold="full depth")
    return row, plain


def sweep(model, task, policy: str, thresholds: Sequence[float], patience: int = 1, dev: str = "valid",
          test: Optional[str] = "test", batch_size: int = 32, target_speedup: Optional[float] = None,
          max_drop: Optional[float] = 1.0) -> Sweep:
    """Sweep ``thresholds`` of ``policy`` on ``dev``, choose one, measure it on ``test``. Every
    policy is built (and so checked) before the first pass."""
    C = model.exit_heads[task.cfg.classification_head_name].num_classes
    policies = [build_policy(policy, C, t, patience) for t in thresholds]
    never = build_policy("none", C)
    dev_data = batches(task, dev, batch_size)
    test_data = batches(task, test, batch_size) if test else None
    full, dev_plain = _full_depth(model, task, dev_data, never, dev)
    steps = tqdm(list(zip(thresholds, policies)), desc=f"thresholds on {dev}", unit="threshold",
                 disable=None)  # a bar on a terminal, nothing in a log or a pipe
    rows = [_timed(model, task, dev_data, p, dev, dev_plain, threshold=t) for t, p in steps]
    dev_trace = trace(model, task, dev_data)
    oracle = score(dev_trace, oracle_exits(dev_trace))["layer_speedup"]
    result = Sweep(policy, rows, full, oracle, choose(rows, full, target_speedup, None if target_speedup else max_drop))
    if result.chosen is not None and test_data is not None:
        result.test_full, test_plain = _full_depth(model, task, test_data, never, test)
        result.test_row = _timed(model, task, test_data, build_policy(policy, C, result.chosen["threshold"], patience),
                                 test, test_plain, threshold=result.chosen["threshold"])
    return result


@dataclass
class CertifiedSweep:
    certified: risk_control.Certified  # the sequence tested on dev and its choice
    test_full: Optional[Dict] = None  # test at full depth
    test_row: Optional[Dict] = None  # test under the setting chosen


RISK_COLUMNS = ["value", "losses", "n", "risk", "bound", "p_value", "passed", "layer_speedup", "flops_speedup"]


def _real_outcomes(model, task, data, cands, full, risk: str):
    """Skip gates make a replay inexact: per candidate, one real pass's losses and speed-ups."""
    C = model.exit_heads[task.cfg.classification_head_name].num_classes
    rows, speed, flops = [], [], []
    for c in cands:
        out = pass_outcomes(model, task, data, c.build(C))
        rows.append(risk_control.losses(out.pred, full.pred, full.target, risk))
        m = out.metrics()
        speed.append(m["layer_speedup"])
        flops.append(m["flops_speedup"])
    return torch.stack(rows), speed, flops


def certify(model, task, policy: str, values: Sequence[float], patience: int = 1, dev: str = "valid",
            test: Optional[str] = "test", batch_size: int = 32, max_drop: float = 1.0, confidence: float = 0.95,
            risk: str = "accuracy_drop") -> CertifiedSweep:
    """Choose on ``dev`` the fastest setting of ``policy`` whose ``risk`` is at most ``max_drop``
    accuracy points with ``confidence`` (:mod:`~leebert_plugin.exits.risk_control`: exact binomial
    bounds, fixed-sequence testing from the most conservative of ``values`` on; the default grid
    when empty), then measure it on ``test`` with a real pass, next to test's full depth. A model
    without skip gates is replayed from one trace of dev (exact); a gated one gets a real pass per
    setting."""
    risk_control.check_level(max_drop, confidence, "--max-drop", 100.0, "accuracy points, e.g. 1.0 for one point")
    level = max_drop / 100.0
    C = model.exit_heads[task.cfg.classification_head_name].num_classes
    kind = risk_control.knob(policy)
    gated = model.skip_gates is not None
    if not gated and kind != "level" and values:  # every value checked before the first pass
        risk_control.candidates(policy, values, C, patience)
    dev_data = batches(task, dev, batch_size)
    never = build_policy("none", C)
    if gated:
        if kind == "level":
            build_policy(policy, C, thresholds=[0.5] * (len(model.exit_layers) - 1)).check_model(
                len(model.exit_layers), True)
        cands = risk_control.candidates(policy, values or risk_control.default_values(
            policy, C, len(model.exit_layers))[4::5], C, patience)
        loss, speed, flops = _real_outcomes(model, task, dev_data, cands, pass_outcomes(model, task, dev_data, never),
                                            risk)
        certified = risk_control.choose(cands, loss, speed, level, confidence, risk, flops)
    else:
        certified = risk_control.certify_trace(trace(model, task, dev_data), policy, level, confidence, risk, values,
                                               patience)
    result = CertifiedSweep(certified)
    if certified.chosen is not None and test:
        test_data = batches(task, test, batch_size)
        result.test_full, test_plain = _full_depth(model, task, test_data, never, test)
        c = certified.chosen.candidate
        result.test_row = _timed(model, task, test_data, c.build(C), test, test_plain, threshold=c.value)
    return result


def write_risk_tsv(result: CertifiedSweep, path: Path) -> None:
    """The sequence as tested on dev, one row per setting, in test order (whole or not at all:
    :func:`~leebert_plugin.runtime.outputs.write_text`)."""
    text = io.StringIO(newline="")
    w = csv.writer(text, delimiter="\t")
    w.writerow(RISK_COLUMNS)
    for r in result.certified.rows:
        w.writerow([f"{r.candidate.value:.6g}", r.losses, r.n, f"{r.risk:.6g}", f"{r.bound:.6g}", f"{r.p_value:.4g}",
                    int(r.passed), f"{r.layer_speedup:.4g}",
                    "" if r.flops_speedup is None else f"{r.flops_speedup:.4g}"])
    write_text(path, text.getvalue())


def write_tsv(result: Sweep, path: Path) -> None:
    """The dev rows and the test row as ``path`` (whole or not at all: :func:`atomic_write`)."""
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, COLUMNS, delimiter="\t", extrasaction="ignore")
    w.writeheader()
    for r in result.rows + ([result.test_row] if result.test_row else []):
        w.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()})
    write_text(path, text.getvalue())


def plot(result: Sweep, path: Path) -> None:
    """Dev's accuracy against layer speed-up per threshold, full depth, the oracle, test's chosen point."""
    fig, ax = new_axes((6, 4))
    rows = result.rows
    ax.plot([r["layer_speedup"] for r in rows], [r["accuracy"] for r in rows], "o-", label=f"dev, {result.policy} thresholds")
    for r in rows:
        ax.annotate(f"{r['threshold']:g}", (r["layer_speedup"], r["accuracy"]), fontsize=7,
                    textcoords="offset points", xytext=(3, 3))
    ax.axhline(result.full["accuracy"], color="grey", ls=":", label="dev, full depth")
    ax.axvline(result.oracle, color="red", ls="--", label=f"oracle ceiling ({result.oracle:.2f}x)")
    if result.test_full is not None:
        ax.plot([1.0], [result.test_full["accuracy"]], "s", mfc="none", color="black", label="test, full depth")
    if result.test_row is not None:
        ax.plot([result.test_row["layer_speedup"]], [result.test_row["accuracy"]], "s", color="black",
                label="test, chosen on dev")
    save_plot(fig, ax, "layer speed-up (L / mean executed layers)", "accuracy (%)", path)


def table_lines(result: Sweep) -> List[str]:
    """Every dev row and the test row, tab-separated, under :data:`COLUMNS`."""
    lines = ["\t".join(COLUMNS)]
    for r in result.rows + ([result.test_row] if result.test_row else []):
        lines.append("\t".join(f"{r.get(c):.4g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in COLUMNS))
    return lines
