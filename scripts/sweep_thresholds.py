#!/usr/bin/env python3
"""Sweep an exit policy's threshold on dev, pick one there, report it on test; draw the Pareto plot.

    python scripts/sweep_thresholds.py CHECKPOINT DATA --policy entropy --thresholds 0.1 0.2 0.3 0.4 0.5 \
        [--dev valid --test test] [--target-speedup 2.0 | --max-drop 1.0] [--batch-size 32] [--out DIR] \
        [--device cuda]

Every point is a real batched early-exit pass of the plugin (the same code as fairseq-validate).
Per threshold and split: the metric (accuracy; F1 and MCC too for binary tasks), the layer,
FLOPs and wall-clock speed-ups, and the oracle's ceiling (the logic: ``leebert_plugin/exits/sweep.py``).

Selection uses dev only: ``--target-speedup S`` takes the most accurate threshold whose dev layer
speed-up is at least S; ``--max-drop D`` the fastest whose dev accuracy is within D points of
full depth. The chosen threshold is then reported on test. Writes ``sweep.tsv`` and ``pareto.png``.
Runs on ``--device`` (default: CUDA if available, else the CPU); GPU timings are synchronised.
"""

import argparse
import sys
from pathlib import Path

import leebert_plugin  # noqa: F401
from leebert_plugin import cli
from leebert_plugin.runtime.devices import add_device_argument, resolve_device
from leebert_plugin.exits.evaluate import load
from leebert_plugin.exits.sweep import plot, sweep, table_lines, write_tsv
from leebert_plugin.runtime.outputs import check_folder, files_of


def main() -> None:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("data")
    p.add_argument("--policy", default="entropy")
    p.add_argument("--thresholds", type=cli.number(float), nargs="+", required=True)
    p.add_argument("--exit-patience", type=cli.number(int, low=1), default=1)
    p.add_argument("--dev", default="valid")
    p.add_argument("--test", default="test")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--target-speedup", type=cli.number(float, low=1))
    group.add_argument("--max-drop", type=cli.number(float, low=0), default=1.0)
    p.add_argument("--batch-size", type=cli.number(int, low=1), default=32)
    p.add_argument("--out", type=Path, default=Path("."))
    p.add_argument("--overwrite", action="store_true", help="replace an earlier sweep's sweep.tsv and pareto.png in --out")
    add_device_argument(p)
    args = p.parse_args()
    check_folder(args.out, "--out", beside=False)  # before the sweep, not after it
    cli.refuse_existing([args.out / "sweep.tsv", args.out / "pareto.png"], args.overwrite)
    with files_of(args.out, "sweep.tsv"):  # one sweep at a time into --out; each file whole, old or new
        model, task = load(args.checkpoint, args.data, resolve_device(args.device))
        result = sweep(model, task, args.policy, args.thresholds, args.exit_patience, args.dev, args.test,
                       args.batch_size, args.target_speedup, args.max_drop)
        write_tsv(result, args.out / "sweep.tsv")
        plot(result, args.out / "pareto.png")
    print(f"dev full depth: accuracy {result.full['accuracy']:.2f}; oracle layer speed-up {result.oracle:.2f}x; "
          f"policy {args.policy}")
    print("\n".join(table_lines(result)))
    if result.chosen is None:
        sys.exit("no threshold on dev meets the target: widen --thresholds or relax the target")
    t = result.test_row
    print(f"chosen on {args.dev}: threshold {result.chosen['threshold']:g}; on {args.test}: accuracy "
          f"{t['accuracy']:.2f} at {t['layer_speedup']:.2f}x layers, {t['flops_speedup']:.2f}x "
          f"FLOPs, {t['wall_speedup']:.2f}x wall-clock (batch {args.batch_size})")
    print(f"wrote {args.out / 'sweep.tsv'} and {args.out / 'pareto.png'}")


if __name__ == "__main__":
    cli.run(main)
