"""The matplotlib boilerplate of the Pareto plots (headless, quiet)."""
import logging
from pathlib import Path
from typing import Tuple


def new_axes(figsize: Tuple[float, float], grid: Tuple[int, int] = (1, 1)):
    """A figure and its axes on the Agg backend (no display needed), matplotlib's debug logs muted:
    one axes, or an array of ``grid`` (rows, columns)."""
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*grid, figsize=figsize)


def save_plot(fig, ax, xlabel: str, ylabel: str, path: Path) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    """``fig`` to ``path`` (its format from the extension), whole or not at all (:func:`atomic_write`)."""
    from leebert_plugin.runtime.outputs import atomic_write

    atomic_write(path, lambda f: fig.savefig(f, dpi=120, format=Path(path).suffix.lstrip(".") or "png"))
