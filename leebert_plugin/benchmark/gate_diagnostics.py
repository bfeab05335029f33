"""SmartBERT's gates, epoch by epoch of stage 1, from a run's training log, for its record.

After every stage-1 epoch the task validates with its gates on dev and logs (``valid`` records of
``train.log``) the share of sentences that skip each layer (``skip_L<i>``, %), the mean and
spread of the gate logits (``gate_logit_mean`` / ``_std``), and the last exit's accuracy with the
gates on and off (``last_acc_gates_on`` / ``_off``); at the switch, the stage-1 epoch the dev
selection kept (``stage 2: restored ... (kept stage-1 epoch K)``). :func:`stage1_diagnostics`
gathers them into ``result.json`` (``gates``), so a collapse (every layer skipped, the gates-on
accuracy at chance while the gates-off one is not) reads off the record.
"""
import re
import statistics
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from leebert_plugin.runtime.launch import json_records

FIGURES = ("gate_logit_mean", "gate_logit_std", "last_acc_gates_on", "last_acc_gates_off", "mean_skipped")
KEPT = re.compile(r"stage 2: restored .* \(kept stage-1 epoch ([0-9]+)")  # mid-epoch: ", after N of its batches"


def stage1_diagnostics(log: str) -> Optional[Dict]:
    """``{"epochs": [{"epoch", FIGURES..., "skip_per_layer": [%...]}...], "kept_epoch": K}`` from a
    training log (None: a run without gate diagnostics). A resumed run logs an epoch again after its
    restart: the last record of each epoch is kept."""
    epochs: Dict[int, Dict] = {}
    for record in json_records(log, "valid"):
        if "valid_gate_logit_mean" not in record:
            continue
        epoch = int(record["epoch"])
        layers = sorted((int(k[len("valid_skip_L"):]), float(v)) for k, v in record.items()
                        if k.startswith("valid_skip_L"))
        epochs[epoch] = {"epoch": epoch, **{k: float(record[f"valid_{k}"]) for k in FIGURES if f"valid_{k}" in record},
                         "skip_per_layer": [v for _, v in layers]}
    if not epochs:
        return None
    kept: List[int] = [int(m.group(1)) for m in KEPT.finditer(log)]
    return {"epochs": [epochs[e] for e in sorted(epochs)], "kept_epoch": kept[-1] if kept else None}


def gate_table(records: Mapping[str, Sequence[Tuple[int, Optional[Dict]]]]) -> str:
    """A markdown table of the stage-1 gate diagnostics (:func:`stage1_diagnostics`, each run's
    ``result.json`` ``gates``) of every run name: per stage-1 epoch, the mean over the seeds that
    logged it of the layers skipped per sentence, the skip share of each layer (%), the gate
    logits' mean and spread, and the last exit's dev accuracy with the gates on and off; then the
    epoch the dev selection kept, seed by seed. Empty when no run has diagnostics."""
    rows: List[str] = []
    kept_lines: List[str] = []
    for name, seeded in records.items():
        seeded = [(seed, gates) for seed, gates in seeded if gates]
        if not seeded:
            continue
        numbers = sorted({e["epoch"] for _, gates in seeded for e in gates.get("epochs", [])})
        for number in numbers:
            rows_of = [e for _, gates in seeded for e in gates.get("epochs", []) if e["epoch"] == number]

            def mean(key: str) -> str:
                values = [e[key] for e in rows_of if key in e]
                return f"{statistics.mean(values):.2f}" if values else "-"

            depths = {len(e.get("skip_per_layer", [])) for e in rows_of} - {0}
            # one depth per run name (its seeds share the arch); should two differ, the layers are
            # not averaged by position but left out
            skip = (" / ".join(f"{statistics.mean(e['skip_per_layer'][i] for e in rows_of if e.get('skip_per_layer')):.0f}"
                               for i in range(depths.pop())) if len(depths) == 1 else "-")
            rows.append(f"| {name} | {number} | {len(rows_of)} | {mean('mean_skipped')} | {skip} | "
                        f"{mean('gate_logit_mean')} ± {mean('gate_logit_std')} | {mean('last_acc_gates_on')} | "
                        f"{mean('last_acc_gates_off')} |")
        kept_lines.append(f"- {name}: the dev selection kept stage-1 epoch " + ", ".join(
            f"{gates.get('kept_epoch') if gates.get('kept_epoch') is not None else '-'} (seed {seed})"
            for seed, gates in seeded))
    if not rows:
        return ""
    return "\n".join(["| run | stage-1 epoch | seeds | layers skipped per sentence | skip share per layer, % (layer 1 / 2 / ...) "
                      "| gate logit mean ± spread | last exit's dev acc, gates on | gates off |",
                      "|---|---|---|---|---|---|---|---|", *rows, "", *kept_lines]) + "\n"
