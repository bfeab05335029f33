"""The learned loss weights of a benchmark run: their trajectory over updates, kept beside its record.

A run whose criterion learns its term weights (LeeBERT and its variants under ``clo``) saves them,
with the trajectory the meta steps recorded (:mod:`leebert_plugin.optim.bilevel`), in its
checkpoint's ``task_state``. After training, :func:`write_weights` copies that record into
``weights.json`` beside ``result.json`` (the checkpoint is not committed; the record is): the term
names and groups, the start, the updates with the weights after each recorded meta step, the
final weights, their distance from uniform per group (KL to uniform and max/min ratio,
:func:`~leebert_plugin.modules.loss_weights.spread`), the weights' lr and the planned updates.
Runs with fixed weights have no such file. :func:`spread_table` summarises the distances over
seeds; ``plots.plot_weights`` draws the trajectories.
"""
import json
import statistics
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from fairseq import checkpoint_utils

from leebert_plugin.runtime.outputs import atomic_write
from leebert_plugin.optim.bilevel import trajectory_of

WEIGHTS = "weights.json"


def weights_record(checkpoint: Path) -> Optional[Dict]:
    """The learned weights' record (:func:`~leebert_plugin.optim.bilevel.trajectory_of`) of a
    checkpoint, or None when it has none (fixed weights, another method)."""
    state = checkpoint_utils.load_checkpoint_to_cpu(str(checkpoint))
    bilevel = (state.get("task_state") or {}).get("bilevel")
    return None if bilevel is None else trajectory_of(bilevel)


def write_weights(checkpoint: Path, path: Path) -> bool:
    """Write ``checkpoint``'s learned-weights record to ``path`` (``weights.json``); False (nothing
    written) when it has none."""
    record = weights_record(checkpoint)
    if record is None:
        return False
    atomic_write(str(path), lambda f: f.write(json.dumps(record, indent=1).encode()))
    return True


def read_weights(save: Path) -> Optional[Dict]:
    """The record of the run in ``save`` (None without ``weights.json``)."""
    path = Path(save) / WEIGHTS
    return json.loads(path.read_text()) if path.is_file() else None


def spread_table(records: Mapping[str, Sequence[Tuple[int, Dict]]]) -> str:
    """A markdown table: for each run name and term group, the final weights' KL to uniform and
    max/min ratio, mean over the seeds that have a record (min-max in brackets). Empty without records."""
    rows: List[str] = []
    for name, seeded in records.items():
        groups = list(dict.fromkeys(g for _, r in seeded for g in r["spread"]))
        for group in groups:
            kl = [r["spread"][group]["kl_uniform"] for _, r in seeded if group in r["spread"]]
            ratio = [r["spread"][group]["max_min_ratio"] for _, r in seeded if group in r["spread"]]
            rows.append(f"| {name} | {group} | {len(kl)} | {statistics.mean(kl):.4f} [{min(kl):.4f}, {max(kl):.4f}] | "
                        f"{statistics.mean(ratio):.2f} [{min(ratio):.2f}, {max(ratio):.2f}] |")
    if not rows:
        return ""
    return "\n".join(["| run | term group | seeds | KL to uniform, mean [min, max] | max/min weight, mean [min, max] |",
                      "|---|---|---|---|---|", *rows]) + "\n"


def write_weight_figures(records: Mapping[str, Sequence[Tuple[int, Dict]]], out: Path) -> List[str]:
    """``weights_<name>.png`` (:func:`~leebert_plugin.benchmark.plots.plot_weights`) in ``out`` for
    every run name with records; the files' names."""
    from leebert_plugin.benchmark.plots import plot_weights

    written = []
    for name, seeded in records.items():
        path = Path(out) / f"weights_{name}.png"
        plot_weights(seeded, path, f"{name}: learned loss weights over updates")
        written.append(path.name)
    return written
