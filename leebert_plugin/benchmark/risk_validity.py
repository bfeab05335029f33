"""Does the guarantee hold on real exits? Random dev/held-out splits of the benchmark's recorded traces.

For every recorded run without skip gates (``traces.npz``: every exit's logits over dev and test),
dev and test are pooled (N examples) and split at random ``splits`` times into a calibration part
(``calibration_fraction`` of N) and a held-out part. On each split two rules choose a setting on
the calibration part alone:

- **guaranteed**: :mod:`leebert_plugin.exits.risk_control` at ``(D, confidence)``: exact binomial
  p-values, fixed-sequence test from the most conservative setting, the fastest passed (full depth
  when none passes);
- **point estimate**: today's ``--max-drop D``: the fastest setting whose calibration accuracy is
  within D of full depth (full depth when none is).

The held-out part then gives each choice's realised accuracy drop (``acc_full - acc_exit``) and
layer speed-up. Reported per data set, policy, risk, D and confidence: how often the realised drop
exceeded D (the guarantee promises at most ``delta = 1 - confidence``, about the drop in
expectation on new data; the held-out part is finite, so its drop also carries sampling noise of
its own, which can only push this rate up), over all runs and for the worst run, and the held-out
speed-up each rule reaches: what the guarantee costs.

Everything a split needs is precomputed once per run: per setting, each pooled example's loss,
correctness and layers run (one replay of the pooled trace per setting), so a split is a few
matrix products of ``settings x N`` by ``N x splits``. The per-exit rule is fitted per split on
half of the calibration part (:func:`~leebert_plugin.exits.risk_control.split_fit_test`'s rule) and
tested on the other half (its point-estimate counterpart, as the benchmark's per-exit rule, is fitted
and chosen on the whole calibration part); its replay over the pooled normalised entropies
(:func:`per_exit_exits`) is the policy's decision (tests check it against
:func:`~leebert_plugin.exits.evaluate.replay`). Refitting every level three times per split makes
it the slow part, so it may run on the first ``per_exit_splits`` splits only.
"""
import argparse
import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from leebert_plugin.errors import UsageError
from leebert_plugin.exits import risk_control as rc
from leebert_plugin.exits.calibrate import exit_scores, thresholds_for_levels
from leebert_plugin.exits.evaluate import ExitTrace, load_traces, replay
from leebert_plugin.exits.plotting import new_axes

POLICIES = ("normalized_entropy", "patience", "per_exit_entropy")
METHODS = ("pabee", "deebert", "leebert")  # the early-exit methods whose runs keep their traces
COLUMNS = ["data", "policy", "risk", "max_drop", "confidence", "runs", "splits", "exceed_guaranteed",
           "exceed_guaranteed_worst", "exceed_point", "exceed_point_worst", "speedup_guaranteed", "speedup_point",
           "full_depth_share"]


def pooled(path: Path) -> ExitTrace:
    """A run's dev and test traces as one pool (examples of dev, then of test)."""
    traces = load_traces(path)
    parts = [traces[s] for s in ("dev", "test")]
    a = parts[0]
    cat = lambda name: None if getattr(a, name) is None else torch.cat([getattr(p, name) for p in parts])  # noqa: E731
    return ExitTrace(torch.cat([p.logits for p in parts], 1), cat("targets"), cat("lengths"), a.exit_layers,
                     a.num_layers, a.positive, a.gated, cat("ids"), cat("layer_flops"), cat("exit_flops"))


def runs(records: Path, methods: Sequence[str] = METHODS) -> Iterator[Tuple[str, Path]]:
    """``(method/seed, traces.npz)`` of every run of ``methods`` under ``records`` that kept its traces."""
    for method in methods:
        for path in sorted((records / method).glob("seed*/traces.npz")):
            yield f"{method}/{path.parent.name}", path


@dataclass
class Outcomes:
    """Per setting (rows) and pooled example (columns): the loss under each risk, whether the
    answer is right, the layers run; and whether full depth is right."""

    loss: Dict[str, np.ndarray]
    correct: np.ndarray
    layers: np.ndarray
    correct_full: np.ndarray
    num_layers: int


def outcomes(t: ExitTrace, exit_at: torch.Tensor, exit_pred: Optional[torch.Tensor] = None) -> Outcomes:
    """The outcomes of settings whose exits are the rows of ``exit_at`` (settings x N);
    ``exit_pred``: every exit's answers (E x N) when already computed."""
    exit_pred = t.logits.argmax(-1) if exit_pred is None else exit_pred
    full = exit_pred[-1]
    pred = exit_pred.gather(0, exit_at)
    layers = torch.tensor(t.exit_layers)[exit_at].float()
    return Outcomes({r: rc.losses(pred, full, t.targets, r).numpy() for r in rc.RISKS}, (pred == t.targets).numpy(),
                    layers.numpy(), (full == t.targets).numpy(), t.num_layers)


def global_outcomes(t: ExitTrace, policy: str) -> Outcomes:
    """Every setting of the default grid of ``policy`` (most conservative first), replayed once."""
    C, E = t.logits.size(-1), t.logits.size(0)
    cands = rc.candidates(policy, rc.default_values(policy, C, E), C)
    return outcomes(t, torch.stack([replay(c.build(C), t) for c in cands]))


def normalized_entropies(t: ExitTrace) -> torch.Tensor:
    """``H(p_k) / ln C`` of every exit and example (E x N), as the per-exit policy computes it."""
    return exit_scores(t)[0]


def per_exit_exits(h: torch.Tensor, taus: torch.Tensor) -> torch.Tensor:
    """The exit of each example (columns of ``h``, E x N) under each row of per-exit thresholds
    ``taus`` (settings x E-1): the first exit ``k`` with ``h_k < tau_k`` or ``tau_k >= 1``, else the
    last: ``per_exit_entropy``'s decision, for many settings at once."""
    hh, tt = h.numpy(), np.asarray(taus, dtype=np.float32)
    leaves = (hh[None, :-1] < tt[:, :, None]) | (tt[:, :, None] >= 1.0)  # S x E-1 x N
    leaves = np.concatenate([leaves, np.ones((len(tt), 1, hh.shape[1]), dtype=bool)], 1)
    return torch.from_numpy(leaves.argmax(1))  # the first True


@dataclass
class Sums:
    """Sums over each split's calibration part (settings x splits; ``full``: per split) and over its
    held-out part, of the :class:`Outcomes` of every setting."""

    n: int  # calibration examples per split
    m: int  # held-out examples per split
    loss: Dict[str, np.ndarray]
    correct: np.ndarray
    layers: np.ndarray
    full: np.ndarray
    held_correct: np.ndarray
    held_layers: np.ndarray
    held_full: np.ndarray
    num_layers: int


def sums(o: Outcomes, part: np.ndarray, held: Optional[np.ndarray] = None) -> Sums:
    """The sums of ``o`` over the calibration parts ``part`` (splits x N, 0/1 float32) and the held-out
    parts ``held`` (default: the rest of the pool, from the totals, no second product). The
    float32 products are exact: every sum is an integer below 2^24 (layers: at most 24 x N)."""
    prod = lambda x, mask: x.astype(np.float32) @ mask.T  # noqa: E731
    n, m = part.sum(1), (1.0 - part).sum(1) if held is None else held.sum(1)
    if not (np.all(n == n[0]) and np.all(m == m[0])):
        raise ValueError("every split's parts must have the same sizes")
    loss = {r: np.rint(prod(v, part)).astype(np.int64) for r, v in o.loss.items()}
    correct, layers, full = prod(o.correct, part), prod(o.layers, part), prod(o.correct_full[None, :], part)[0]
    if held is None:
        held_correct = o.correct.sum(1, dtype=np.float64)[:, None] - correct
        held_layers = o.layers.sum(1, dtype=np.float64)[:, None] - layers
        held_full = float(o.correct_full.sum()) - full
    else:
        held_correct, held_layers, held_full = prod(o.correct, held), prod(o.layers, held), prod(o.correct_full[None, :], held)[0]
    return Sums(int(n[0]), int(m[0]), loss, correct, layers, full, held_correct, held_layers, held_full, o.num_layers)


def _fastest(ok: np.ndarray, speed: np.ndarray) -> np.ndarray:
    """Per column, the row of ``ok`` with the highest ``speed`` (the first of equals); -1 if none."""
    best = np.where(ok, speed, -np.inf).argmax(0)
    return np.where(ok.any(0), best, -1)


def _speed(s: Sums) -> np.ndarray:
    return s.num_layers * s.n / np.maximum(s.layers, 1e-9)


def choose_guaranteed(s: Sums, risk: str, level: float, confidence: float) -> np.ndarray:
    """Per split, the setting :mod:`~leebert_plugin.exits.risk_control` chooses (-1: full depth)."""
    passed = rc.fixed_sequence(rc.p_values(s.loss[risk], s.n, level).T, 1.0 - confidence)
    return _fastest(np.arange(len(s.correct))[:, None] < passed[None, :], _speed(s))


def choose_point(s: Sums, level: float) -> np.ndarray:
    """Per split, the point-estimate choice: the fastest within ``level`` of full depth's accuracy."""
    return _fastest((s.full[None, :] - s.correct) / s.n <= level + 1e-12, _speed(s))


def held_out(s: Sums, chosen: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The realised accuracy drop and layer speed-up of each split's choice on its held-out part
    (full depth for -1: no drop, 1x)."""
    cols = np.arange(len(chosen))
    pick = np.maximum(chosen, 0)
    drop = (s.held_full - s.held_correct[pick, cols]) / s.m
    speed = s.num_layers * s.m / s.held_layers[pick, cols]
    return np.where(chosen >= 0, drop, 0.0), np.where(chosen >= 0, speed, 1.0)


def split_masks(n: int, splits: int, fraction: float, seed: int) -> np.ndarray:
    """``splits`` random calibration masks (splits x n, 0/1 float32) of ``round(n fraction)`` examples."""
    rng = np.random.default_rng(seed)
    cut = int(round(n * fraction))
    masks = np.zeros((splits, n), dtype=np.float32)
    for s in range(splits):
        masks[s, rng.permutation(n)[:cut]] = 1.0
    return masks


@dataclass
class Cell:
    """One run's figures for one (policy, risk, D, confidence), over its splits."""

    exceed_guaranteed: float
    exceed_point: float
    speedup_guaranteed: float
    speedup_point: float
    full_depth_share: float


def _cell(guaranteed: Tuple[np.ndarray, np.ndarray, np.ndarray], point: Tuple[np.ndarray, np.ndarray], level: float) -> Cell:
    (g_drop, g_speed, g_full), (p_drop, p_speed) = guaranteed, point
    return Cell(float(np.mean(g_drop > level + 1e-12)), float(np.mean(p_drop > level + 1e-12)), float(np.mean(g_speed)),
                float(np.mean(p_speed)), float(np.mean(g_full)))


def run_cells(t: ExitTrace, policies: Sequence[str], levels: Sequence[float], confidences: Sequence[float],
              splits: int, fraction: float, seed: int, risks: Sequence[str] = rc.RISKS,
              per_exit_splits: Optional[int] = None) -> Dict[Tuple, Cell]:
    """All cells of one run: ``(policy, risk, D, confidence) -> Cell``. The per-exit rule is refitted
    on every split (three fits of every level), so it may take the first ``per_exit_splits`` only."""
    cal = split_masks(t.logits.size(1), splits, fraction, seed)
    out: Dict[Tuple, Cell] = {}
    for policy in policies:
        if policy == rc.PER_EXIT:
            out.update(_per_exit_cells(t, cal[:per_exit_splits], levels, confidences, risks, seed))
            continue
        s = sums(global_outcomes(t, policy), cal)
        for level in levels:
            point = held_out(s, choose_point(s, level))
            for risk in risks:
                for confidence in confidences:
                    chosen = choose_guaranteed(s, risk, level, confidence)
                    out[(policy, risk, level, confidence)] = _cell((*held_out(s, chosen), chosen < 0), point, level)
    return out


def _per_exit_cells(t: ExitTrace, cal: np.ndarray, levels: Sequence[float], confidences: Sequence[float],
                    risks: Sequence[str], seed: int) -> Dict[Tuple, Cell]:
    """The per-exit rule, split by split. Guaranteed: fitted (to the risk's targets) on half of the
    calibration part, tested on the other half. Point estimate, as the benchmark's per-exit rule:
    fitted to the labels on the whole calibration part and chosen there."""
    h, right = exit_scores(t)
    pred = t.logits.argmax(-1)
    agree = pred == pred[-1].unsqueeze(0)
    rng = np.random.default_rng(seed + 1)
    N = cal.shape[1]

    def settings(fit: torch.Tensor, hits: torch.Tensor) -> Outcomes:
        rate = float(hits[-1, fit].double().mean())
        return outcomes(t, per_exit_exits(h, thresholds_for_levels(h[:, fit], hits[:, fit], rc.levels_from_rate(rate))), pred)

    def mask(index) -> np.ndarray:
        out = np.zeros((1, N), dtype=np.float32)
        out[0, index] = 1.0
        return out

    found: Dict[Tuple, List] = {}
    for row in cal:
        idx = np.flatnonzero(row)
        held = 1.0 - row[None, :]
        idx = idx[rng.permutation(len(idx))]
        fit, test = idx[: len(idx) // 2], idx[len(idx) // 2:]
        s_point = sums(settings(torch.from_numpy(idx), right), mask(idx), held)
        points = {level: held_out(s_point, choose_point(s_point, level)) for level in levels}
        for risk in risks:
            s = sums(settings(torch.from_numpy(fit), right if risk == "accuracy_drop" else agree), mask(test), held)
            for level in levels:
                for confidence in confidences:
                    chosen = choose_guaranteed(s, risk, level, confidence)
                    found.setdefault((rc.PER_EXIT, risk, level, confidence), []).append(
                        ((*held_out(s, chosen), chosen < 0), points[level]))
    out = {}
    for key, per_split in found.items():
        g = tuple(np.concatenate([x[0][i] for x in per_split]) for i in range(3))
        p = tuple(np.concatenate([x[1][i] for x in per_split]) for i in range(2))
        out[key] = _cell(g, p, key[2])
    return out


def summarise(data: str, per_run: Dict[str, Dict[Tuple, Cell]], splits: int, per_exit_splits: Optional[int] = None) -> List[Dict]:
    """One row per (policy, risk, D, confidence): means over the runs, and the worst run's exceedance."""
    keys = next(iter(per_run.values())).keys()
    rows = []
    for key in keys:
        cells = [cells[key] for cells in per_run.values()]
        policy, risk, level, confidence = key
        rows.append({"data": data, "policy": policy, "risk": risk, "max_drop": 100 * level, "confidence": confidence,
                     "runs": len(cells), "splits": min(splits, per_exit_splits or splits) if policy == rc.PER_EXIT else splits,
                     "exceed_guaranteed": np.mean([c.exceed_guaranteed for c in cells]),
                     "exceed_guaranteed_worst": max(c.exceed_guaranteed for c in cells),
                     "exceed_point": np.mean([c.exceed_point for c in cells]),
                     "exceed_point_worst": max(c.exceed_point for c in cells),
                     "speedup_guaranteed": np.mean([c.speedup_guaranteed for c in cells]),
                     "speedup_point": np.mean([c.speedup_point for c in cells]),
                     "full_depth_share": np.mean([c.full_depth_share for c in cells])})
    return rows


def write_tsv(rows: Sequence[Dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS, delimiter="\t")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4g}" if isinstance(v, (float, np.floating)) else v) for k, v in r.items()})


def markdown(rows: Sequence[Dict]) -> str:
    """The validity table: exceedance (all runs; worst run) against delta, held-out speed-ups."""
    lines = ["| data | policy | risk | D (points) | confidence | delta | runs x splits | realised drop > D, guaranteed (mean; worst run) "
             "| realised drop > D, point estimate (mean; worst run) | held-out speed-up, guaranteed | point estimate "
             "| speed-up given up | splits at full depth |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['data']} | {r['policy']} | {r['risk']} | {r['max_drop']:g} | {r['confidence']:g} | {1 - r['confidence']:.2f} "
            f"| {r['runs']} x {r['splits']} "
            f"| {r['exceed_guaranteed']:.3f}; {r['exceed_guaranteed_worst']:.3f} | {r['exceed_point']:.3f}; "
            f"{r['exceed_point_worst']:.3f} | {r['speedup_guaranteed']:.2f}x | {r['speedup_point']:.2f}x "
            f"| {r['speedup_point'] - r['speedup_guaranteed']:.2f}x | {100 * r['full_depth_share']:.0f}% |")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[Dict], path: Path, policy: str = "normalized_entropy") -> None:
    """Per data set: the exceedance rate against D (each confidence's guaranteed rule, its delta as a
    dotted line, and the point estimate), and the held-out speed-ups of both rules."""
    datas = sorted({r["data"] for r in rows})
    risks = [r for r in rc.RISKS if any(x["risk"] == r for x in rows)]
    fig, axes = new_axes((11, 3.6 * len(datas)), (len(datas), 2))
    axes = np.atleast_2d(axes)
    for i, data in enumerate(datas):
        ax_e, ax_s = axes[i]
        for j, risk in enumerate(risks):
            sel = [r for r in rows if r["data"] == data and r["policy"] == policy and r["risk"] == risk]
            style = "-" if j == 0 else "--"
            confs = sorted({r["confidence"] for r in sel})
            for k, conf in enumerate(confs):
                pts = sorted((r["max_drop"], r["exceed_guaranteed"], r["speedup_guaranteed"]) for r in sel if r["confidence"] == conf)
                ax_e.plot([p[0] for p in pts], [p[1] for p in pts], style + "o", color=f"C{k}", ms=4,
                          label=f"guaranteed, {risk}, conf {conf:g}")
                ax_s.plot([p[0] for p in pts], [p[2] for p in pts], style + "o", color=f"C{k}", ms=4,
                          label=f"guaranteed, {risk}, conf {conf:g}")
                if j == 0:
                    ax_e.axhline(1 - conf, color=f"C{k}", ls=":", lw=1)
            if j == 0 and sel:
                pts = sorted({(r["max_drop"], r["exceed_point"], r["speedup_point"]) for r in sel})
                ax_e.plot([p[0] for p in pts], [p[1] for p in pts], "s-", color="grey", ms=4, label="point estimate (today's --max-drop)")
                ax_s.plot([p[0] for p in pts], [p[2] for p in pts], "s-", color="grey", ms=4, label="point estimate")
        ax_e.set_title(f"{data}: how often the held-out drop exceeded D ({policy})", fontsize=9)
        ax_e.set_xlabel("D (accuracy points)")
        ax_e.set_ylabel("share of splits")
        ax_s.set_title(f"{data}: held-out layer speed-up", fontsize=9)
        ax_s.set_xlabel("D (accuracy points)")
        ax_s.set_ylabel("speed-up (x)")
        for ax in (ax_e, ax_s):
            ax.legend(fontsize=6)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def records_argument(text: str) -> Tuple[str, Path]:
    """``NAME=FOLDER`` -> ``(NAME, FOLDER)``; a folder without traces is refused by :func:`validity`."""
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:  # argparse's own type error: one line naming --records
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=FOLDER (e.g. rt=benchmarks/records/rt-all)")
    return name, Path(folder)


def validity(records: Dict[str, Path], policies: Sequence[str] = POLICIES, max_drops: Sequence[float] = (1, 2, 5),
             confidences: Sequence[float] = (0.9, 0.95), splits: int = 1000, fraction: float = 0.5, seed: int = 0,
             methods: Sequence[str] = METHODS, risks: Sequence[str] = rc.RISKS,
             progress: Optional[Callable[[str], None]] = None, per_exit_splits: Optional[int] = None) -> List[Dict]:
    """The summary rows for every data set of ``records`` (name -> record folder); ``max_drops`` in
    points. Runs on one thread: every step is many small array operations, which a thread pool
    only slows down on a shared machine."""
    for p in policies:
        rc.knob(p)
    for d in max_drops:
        rc.check_level(d, 0.5, "--max-drops", 100.0, "accuracy points, e.g. 1 2 5")
    for c in confidences:
        rc.check_level(0.5, c)
    found = {data: list(runs(folder, methods)) for data, folder in records.items()}
    for data, rs in found.items():
        if not rs:
            raise UsageError(f"no traces.npz of {', '.join(methods)} under {records[data]}",
                             "pass a benchmark record folder such as benchmarks/records/rt-all")
    levels = [d / 100.0 for d in max_drops]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = []
        for data, rs in found.items():
            per_run = {}
            for i, (name, path) in enumerate(rs):
                per_run[name] = run_cells(pooled(path), policies, levels, confidences, splits, fraction, seed + i, risks,
                                          per_exit_splits)
                if progress:
                    progress(f"{data} {name}: done")
            rows += summarise(data, per_run, splits, per_exit_splits)
        return rows
    finally:
        torch.set_num_threads(threads)
