"""The benchmark's figures: each run's Pareto front (``pareto.png``), the per-exit rule against the
published ones (``rules.png``), the ablations, one panel per group, each variant beside its
method as the mean over seeds with its interval (``ablations.png``), and the learned loss weights'
trajectories, one panel per term group, seeds overlaid (``weights_<run>.png``)."""
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from leebert_plugin.benchmark.ablations import ABLATIONS, Variant
from leebert_plugin.benchmark.choice import FULL, PER_EXIT_POLICY, At
from leebert_plugin.benchmark.report import Run, mean_point
from leebert_plugin.exits.pareto import front
from leebert_plugin.exits.plotting import new_axes, save_figure, save_plot


def _rule_points(points: Sequence[Dict], per_exit: bool) -> List[Dict]:
    return [p for p in points if (p["policy"] == PER_EXIT_POLICY) == per_exit]


def _test_front(ax, points: Sequence[Dict], style: str, color: str, label: Optional[str]) -> None:
    pts = front(points)  # chosen on dev, drawn as measured on test
    ax.plot([p["test_speedup"] for p in pts], [p["test_metric"] for p in pts], style, ms=3, color=color,
            alpha=0.7, label=label)


def plot(runs: Dict[str, List[Run]], path: Path) -> None:
    """Each run's dev Pareto front over the published rules, as measured on test, with its oracle ceiling."""
    fig, ax = new_axes((7, 4.5))
    ceiling = 2.0
    for i, (method, rs) in enumerate(runs.items()):
        color = f"C{i}"
        for k, r in enumerate(rs):
            _test_front(ax, _rule_points(r.result["points"], False), "o-", color, method if k == 0 else None)
            ax.axvline(r.result["test_oracle"]["layer_speedup"], color=color, ls=":", lw=0.6)
            ceiling = max(ceiling, r.result["test_oracle"]["layer_speedup"])
    ax.set_xlim(0.9, ceiling * 1.1)  # beyond every oracle ceiling: only degenerate points
    save_plot(fig, ax, "layer speed-up on test (dev front; dotted: each run's oracle ceiling)",
              "test accuracy (%)", path)


def plot_rules(runs: Dict[str, List[Run]], path: Path) -> bool:
    """For each method with per-exit points, each run's front under the published rules (solid) and
    under the per-exit calibrated rule (dashed); False (nothing written) when no run has them."""
    calibrated = {method: [r for r in rs if _rule_points(r.result["points"], True)] for method, rs in runs.items()}
    if not any(calibrated.values()):
        return False
    fig, ax = new_axes((7, 4.5))
    for i, (method, rs) in enumerate(calibrated.items()):
        for k, r in enumerate(rs):
            published = _rule_points(r.result["points"], False)
            _test_front(ax, published, "o-", f"C{i}", f"{method} published" if k == 0 else None)
            _test_front(ax, published[:1] + _rule_points(r.result["points"], True), "s--", f"C{i}",
                        f"{method} per-exit" if k == 0 else None)
    save_plot(fig, ax, "layer speed-up on test (dev front)", "test accuracy (%)", path)
    return True


ABLATION_CURVE = (FULL, *(At("layers", s) for s in (1.25, 1.5, 1.75, 2.0, 2.5, 3.0)))


def _mean_curve(ax, runs: Sequence[Run], style: str, color: str, label: str) -> None:
    """The runs' seed-mean point at each speed-up of ``ABLATION_CURVE`` they all reach on dev
    (:func:`~leebert_plugin.benchmark.report.mean_point`), with the accuracy's 95% interval as a bar."""
    points = [p for p in (mean_point(runs, at) for at in ABLATION_CURVE) if p is not None]
    half = [0.0 if math.isnan(acc.low) else acc.high - acc.mean for _, acc in points]
    ax.errorbar([x for x, _ in points], [acc.mean for _, acc in points], yerr=half, fmt=style, ms=3, lw=1,
                capsize=2, color=color, label=label)


def plot_ablations(runs: Dict[str, List[Run]], variants: Sequence[Variant], path: Path) -> List[str]:
    """One panel per ablation group with a variant among ``runs`` (``ABLATIONS``' order): the group's
    variants (dashed) beside their methods (solid), each as its seeds' mean at every speed-up of
    ``ABLATION_CURVE``, chosen on dev, read on test, with the 95% interval over seeds. Why means
    and not each run's front, as ``pareto.png`` draws them: with five seeds a variant, a panel of
    every run's front is unreadable, and the tables compare means too. The panels' titles, in
    order (nothing written when there are none)."""
    shown = {v.name for v in variants if runs.get(v.name) and runs.get(v.method)}
    groups = [(g, [v for v in vs if v.name in shown]) for g, vs in ABLATIONS.items()]
    groups = [(g, vs) for g, vs in groups if vs]
    if not groups:
        return []
    cols = min(3, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig, axes = new_axes((4.2 * cols, 3.2 * rows), (rows, cols))
    flat = list(axes.flat) if hasattr(axes, "flat") else [axes]
    for ax, (group, vs) in zip(flat, groups):
        for i, method in enumerate(dict.fromkeys(v.method for v in vs)):
            _mean_curve(ax, runs[method], "o-", ("black", "dimgray", "darkgray")[i % 3], method)
        for i, v in enumerate(vs):
            _mean_curve(ax, runs[v.name], "s--", f"C{i}", v.name)
        ax.set_title(group, fontsize=9)
        ax.legend(fontsize=7)
    for ax in flat[len(groups):]:
        ax.set_visible(False)
    fig.supxlabel("layer speed-up on test (mean over seeds; chosen on dev)")
    fig.supylabel("test accuracy (%), 95% interval over seeds")
    fig.tight_layout()
    save_figure(fig, path)
    return [g for g, _ in groups]


def plot_weights(records: Sequence[Tuple[int, Dict]], path: Path, title: str) -> List[str]:
    """The learned loss weights over updates (``weights.json`` records of one method, by seed): one
    panel per term group, every term of a seed as a thin line in the seed's colour (all seeds
    overlaid), the uniform start dashed, on a log axis (a weight halved or doubled moves as far
    either way); each panel's title gives the group's final KL to uniform and max/min ratio, mean
    over the seeds. The panels' groups, in order (nothing written without records)."""
    if not records:
        return []
    groups = list(dict.fromkeys(g for _, r in records for g in r["groups"]))
    cols = min(3, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig, axes = new_axes((4.8 * cols, 3.4 * rows), (rows, cols))
    flat = list(axes.flat) if hasattr(axes, "flat") else [axes]
    for ax, group in zip(flat, groups):
        for i, (seed, r) in enumerate(records):
            terms = [k for k, g in enumerate(r["groups"]) if g == group]
            start = r["start"] or [r["weights"][0][k] for k in range(len(r["names"]))]
            updates = [0] + list(r["updates"])
            for j, k in enumerate(terms):
                ax.plot(updates, [start[k]] + [row[k] for row in r["weights"]], "-", lw=0.6, alpha=0.5, color=f"C{i}",
                        label=f"seed {seed}" if j == 0 else None)
            for level in sorted({round(start[k], 9) for k in terms}):
                ax.axhline(level, color="black", ls="--", lw=0.7)
        kl = [r["spread"][group]["kl_uniform"] for _, r in records if group in r["spread"]]
        ratio = [r["spread"][group]["max_min_ratio"] for _, r in records if group in r["spread"]]
        ax.set_yscale("log")
        ax.set_title(f"{group}: KL to uniform {sum(kl) / len(kl):.3f}, max/min {sum(ratio) / len(ratio):.2f}",
                     fontsize=9)
        ax.legend(fontsize=7)
    for ax in flat[len(groups):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.supxlabel("update")
    fig.supylabel("loss-term weight (dashed: uniform start)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return groups
