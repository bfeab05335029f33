#!/usr/bin/env python3
"""Validate a checkpoint under an exit policy at several thresholds and print one table.

    python scripts/validate_thresholds.py CHECKPOINT DATA --policy normalized_entropy \
        --thresholds 0.3 0.6 [--subset valid] [--batch-size 32] [--exit-patience N] [--device cuda]

Each row is one real ``fairseq-validate`` run (batched early exit at the given batch size).
Columns: the accuracy under the policy, the mean number of executed layers, the layer speed-up
(L / mean layers), the share of samples leaving at each exit, and, last, the full-depth accuracy
of every exit (the same for all rows: it does not depend on the policy). fairseq-validate runs on
``--device`` (default: CUDA if available, else the CPU): ``--cpu`` for the CPU, only that GPU
visible for CUDA.
"""
import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch

from leebert_plugin import cli
from leebert_plugin.devices import add_device_argument, fairseq_device_args, fairseq_env, resolve_device
from leebert_plugin.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


def validate(ckpt: Path, data: Path, policy: str, threshold: Optional[float], subset: str,
             batch_size: int, patience: int, device: torch.device) -> Dict[str, str]:
    exe = shutil.which("fairseq-validate") or str(Path(sys.executable).parent / "fairseq-validate")
    cmd = [exe, str(data), "--path", str(ckpt), "--user-dir", str(ROOT / "user_dir"),
           "--task", "early_exit_sentence_prediction", "--exit-policy", policy,
           "--exit-patience", str(patience), "--valid-subset", subset, "--batch-size", str(batch_size),
           "--log-format", "json", *fairseq_device_args(device)]
    if threshold is not None:
        cmd += ["--exit-threshold", str(threshold)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=fairseq_env(device))
    if proc.returncode != 0:
        errors = [l for l in proc.stderr.splitlines() if "error" in l.lower()]
        sys.exit(errors[-1] if errors else proc.stderr[-2000:])
    for line in proc.stdout.splitlines():
        if f"| {subset} |" in line and "{" in line:
            return {k[len(subset) + 1:]: v for k, v in json.loads(line[line.index("{"):]).items()}
    sys.exit(f"error: fairseq-validate printed no stats for subset {subset!r}")


def table(rows: List[Dict[str, str]], thresholds: List[Optional[float]]) -> str:
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


def main() -> None:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("data", type=Path)
    p.add_argument("--policy", default="normalized_entropy")
    p.add_argument("--thresholds", type=cli.number(float), nargs="*", default=[])
    p.add_argument("--exit-patience", dest="patience", type=cli.number(int, low=1), default=1)
    p.add_argument("--subset", default="valid")
    p.add_argument("--batch-size", type=cli.number(int, low=1), default=32)
    add_device_argument(p)
    args = p.parse_args()
    device = resolve_device(args.device)
    if not args.checkpoint.is_file():
        raise UsageError(f"checkpoint {args.checkpoint} does not exist", "pass the path of a checkpoint_*.pt file")
    thresholds = args.thresholds or [None]
    rows = [validate(args.checkpoint, args.data, args.policy, t, args.subset, args.batch_size, args.patience, device)
            for t in thresholds]
    print(f"policy {args.policy} on '{args.subset}', batch size {args.batch_size}, device {device}")
    print(table(rows, thresholds))


if __name__ == "__main__":
    cli.run(main)
