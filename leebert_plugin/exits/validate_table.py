"""A checkpoint validated under one exit policy at several thresholds, each a real ``fairseq-validate``.

``scripts/validate_thresholds.py`` prints :func:`threshold_table`; the ``--quick`` demo calls it too.
Each row is one ``fairseq-validate`` run (batched early exit at the given batch size, on the given
device: ``--cpu`` for the CPU, only that GPU visible for CUDA) rather than a replay of the exits'
logits (:mod:`leebert_plugin.exits.evaluate`): it is the check that what the plugin reports is what
fairseq measures. Columns: accuracy under the policy, mean executed layers, layer speed-up
(L / mean layers), the share of samples leaving at each exit, and, last, the full-depth accuracy of
every exit (the same for every row: it does not depend on the policy).
"""
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from leebert_plugin.runtime.devices import fairseq_device_args, fairseq_env
from leebert_plugin.errors import UsageError, usage_error_line
from leebert_plugin.exits.evaluate import trained_state
from leebert_plugin.runtime.launch import ROOT, json_records


def validate(ckpt: Path, data: Path, policy: str, threshold: Optional[float], subset: str,
             batch_size: int, patience: int, device: torch.device) -> Dict[str, str]:
    """fairseq-validate's stats for ``subset`` (keys without the subset prefix); a failed run
    raises :class:`UsageError` with its error line."""
    exe = shutil.which("fairseq-validate") or str(Path(sys.executable).parent / "fairseq-validate")
    cmd = [exe, str(data), "--path", str(ckpt), "--user-dir", str(ROOT / "user_dir"),
           "--task", "early_exit_sentence_prediction", "--exit-policy", policy,
           "--exit-patience", str(patience), "--valid-subset", subset, "--batch-size", str(batch_size),
           "--log-format", "json", *fairseq_device_args(device)]
    if threshold is not None:
        cmd += ["--exit-threshold", str(threshold)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=fairseq_env(device))
    if proc.returncode != 0:
        mine = usage_error_line(RuntimeError(proc.stderr))
        if mine is not None:  # the plugin's own one-line error: passed on as it is
            raise UsageError.from_line(mine)
        errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
        last = errors[-1] if errors else (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UsageError(f"fairseq-validate failed on {ckpt} ({last.strip()})",
                         "check the checkpoint, the data folder and the policy")
    records = json_records(proc.stdout, subset)
    if not records:
        raise UsageError(f"fairseq-validate printed no stats for subset {subset!r}",
                         f"pass a subset that {data} holds (valid, test)")
    return {k[len(subset) + 1:]: v for k, v in records[-1].items()}


def table(rows: Sequence[Dict[str, str]], thresholds: Sequence[Optional[float]]) -> str:
    """One line per threshold (``-``: none), then the full-depth accuracy of every exit."""
    exits = sorted((k for k in rows[0] if k.startswith("exit_L")), key=lambda k: int(k[6:]))
    accs = sorted((k for k in rows[0] if k.startswith("acc_L")), key=lambda k: int(k[5:]))
    head = ["threshold", "accuracy", "mean_layers", "speedup"] + [f"%{k[5:]}" for k in exits]
    lines = [" | ".join(f"{h:>9}" for h in head)]
    for t, r in zip(thresholds, rows):
        cells = ["-" if t is None else f"{t:g}", r["accuracy"], r["mean_layers"], r["speedup"]]
        cells += [r[k] for k in exits]
        lines.append(" | ".join(f"{c:>9}" for c in cells))
    lines.append("full-depth accuracy per exit: " + ", ".join(f"{k[4:]} {rows[0][k]}" for k in accs))
    return "\n".join(lines)


def threshold_table(ckpt: Path, data: Path, policy: str, thresholds: Sequence[Optional[float]], subset: str = "valid",
                    batch_size: int = 32, patience: int = 1, device: torch.device = torch.device("cpu")) -> str:
    """:func:`table` of ``ckpt`` validated at each of ``thresholds`` (empty: the policy's default),
    under a heading that names the policy, subset, batch size and device."""
    trained_state(ckpt)  # a missing file, a folder, or another task's checkpoint: one line before fairseq runs
    thresholds = list(thresholds) or [None]
    rows = [validate(ckpt, data, policy, t, subset, batch_size, patience, device) for t in thresholds]
    return f"policy {policy} on '{subset}', batch size {batch_size}, device {device}\n" + table(rows, thresholds)
