#!/usr/bin/env python3
"""Validate a checkpoint under an exit policy at several thresholds and print one table.

    python scripts/validate_thresholds.py CHECKPOINT DATA --policy normalized_entropy \
        --thresholds 0.3 0.6 [--subset valid] [--batch-size 32] [--exit-patience N] [--device cuda]

Each row is one real ``fairseq-validate`` run; the columns and the logic:
:mod:`leebert_plugin.exits.validate_table`. ``--device``: default CUDA if available, else the CPU.
"""
import argparse
from pathlib import Path

from leebert_plugin import cli
from leebert_plugin.runtime.devices import add_device_argument, resolve_device
from leebert_plugin.exits.validate_table import threshold_table


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
    print(threshold_table(args.checkpoint, args.data, args.policy, args.thresholds, args.subset, args.batch_size,
                          args.patience, device))


if __name__ == "__main__":
    cli.run(main)
