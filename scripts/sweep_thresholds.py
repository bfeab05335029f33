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

With a guarantee: ``--max-drop D --confidence 0.95`` takes the fastest setting whose drop is at most
D points with 95% confidence over the draw of dev (exact binomial bounds, tested in a fixed sequence
from the most conservative setting on: ``leebert_plugin/exits/risk_control.py``). ``--risk``:
``accuracy_drop`` (answers lost against full depth; the default, dev has labels) or
``disagreement`` (any change of the full-depth answer). ``--thresholds`` is then optional (a
fine default grid; patiences for ``patience``, levels for ``per_exit_entropy``). Writes
``risk.tsv`` (every setting tested: losses, bound, passed, speed-ups) and reports the choice on test.
Runs on ``--device`` (default: CUDA if available, else the CPU); GPU timings are synchronised.
"""

import argparse
import sys
from pathlib import Path

import leebert_plugin  # noqa: F401
from leebert_plugin import cli
from leebert_plugin.runtime.devices import add_device_argument, resolve_device
from leebert_plugin.exits.evaluate import load
from leebert_plugin.errors import UsageError
from leebert_plugin.exits.risk_control import RISKS
from leebert_plugin.exits.sweep import certify, plot, sweep, table_lines, write_risk_tsv, write_tsv
from leebert_plugin.runtime.outputs import check_folder, files_of


def main() -> None:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("data")
    p.add_argument("--policy", default="entropy")
    p.add_argument("--thresholds", type=cli.number(float), nargs="+", default=(),
                   help="the settings to sweep (required without --confidence)")
    p.add_argument("--exit-patience", type=cli.number(int, low=1), default=1)
    p.add_argument("--dev", default="valid")
    p.add_argument("--test", default="test")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--target-speedup", type=cli.number(float, low=1))
    group.add_argument("--max-drop", type=cli.number(float, low=0), default=1.0, help="accuracy points")
    p.add_argument("--confidence", type=cli.number(float, low=0, high=1, low_open=True),
                   help="with --max-drop: hold the drop under it with this confidence (e.g. 0.95)")
    p.add_argument("--risk", choices=RISKS, default="accuracy_drop", help="with --confidence: what is bounded")
    p.add_argument("--batch-size", type=cli.number(int, low=1), default=32)
    p.add_argument("--out", type=Path, default=Path("."))
    p.add_argument("--overwrite", action="store_true", help="replace an earlier sweep's sweep.tsv and pareto.png in --out")
    add_device_argument(p)
    args = p.parse_args()
    check_folder(args.out, "--out", beside=False)  # before the sweep, not after it
    if args.confidence is not None:
        return certified(args)
    if not args.thresholds:
        raise UsageError("no --thresholds to sweep", "pass --thresholds t1 t2 ..., or --confidence for the default grid")
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


def certified(args) -> None:
    if args.target_speedup is not None:
        raise UsageError("--confidence bounds a drop, not a speed-up", "pass --max-drop D with --confidence")
    cli.refuse_existing([args.out / "risk.tsv"], args.overwrite)
    with files_of(args.out, "risk.tsv"):  # one sweep at a time into --out; the file whole, old or new
        model, task = load(args.checkpoint, args.data, resolve_device(args.device))
        result = certify(model, task, args.policy, args.thresholds, args.exit_patience, args.dev, args.test,
                         args.batch_size, args.max_drop, args.confidence, args.risk)
        write_risk_tsv(result, args.out / "risk.tsv")
    print(f"on {args.dev}: {result.certified.message}")
    if result.certified.chosen is None:
        sys.exit(f"wrote {args.out / 'risk.tsv'}; no setting certified: serve at full depth")
    t, full = result.test_row, result.test_full
    print(f"on {args.test}: accuracy {t['accuracy']:.2f} (full depth {full['accuracy']:.2f}, drop "
          f"{full['accuracy'] - t['accuracy']:.2f} points) at {t['layer_speedup']:.2f}x layers, "
          f"{t['flops_speedup']:.2f}x FLOPs, {t['wall_speedup']:.2f}x wall-clock (batch {args.batch_size})")
    print(f"wrote {args.out / 'risk.tsv'}")


if __name__ == "__main__":
    cli.run(main)
