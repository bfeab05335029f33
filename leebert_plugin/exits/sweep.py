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
full depth.
"""
import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

from leebert_plugin.exits.evaluate import batches, oracle_exits, plain_seconds, run, score, trace
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
