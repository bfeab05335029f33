#!/usr/bin/env python3
"""Sweep an exit policy's threshold on dev, pick one there, report it on test; draw the Pareto plot.

    python scripts/sweep_thresholds.py CHECKPOINT DATA --policy entropy --thresholds 0.1 0.2 0.3 0.4 0.5 \
        [--dev valid --test test] [--target-speedup 2.0 | --max-drop 1.0] [--batch-size 32] [--out DIR] \
        [--device cuda]

Every point is a real batched early-exit pass of the plugin (the same code as fairseq-validate).
Per threshold and split: the metric (accuracy; F1 and MCC too for binary tasks), the layer
speed-up (L / mean executed layers), the FLOPs speed-up (plain model / what ran, per sample) and
the wall-clock speed-up (the plain full-depth forward of the same model over the same batches,
timed in the same run). The oracle that leaves at the earliest correct exit (the first exit when none is correct) gives
the ceiling.

Selection uses dev only: ``--target-speedup S`` takes the most accurate threshold whose dev layer
speed-up is at least S; ``--max-drop D`` the fastest whose dev accuracy is within D points of
full depth. The chosen threshold is then reported on test. Writes ``sweep.tsv`` and ``pareto.png``.
Runs on ``--device`` (default: CUDA if available, else the CPU); GPU timings are synchronised.
"""
import argparse
import csv
import sys
from pathlib import Path
from typing import Dict, List

import leebert_plugin  # noqa: F401
from leebert_plugin import cli
from leebert_plugin.devices import add_device_argument, resolve_device
from leebert_plugin.exits.evaluate import batches, load, oracle_exits, plain_seconds, run, score, trace
from leebert_plugin.exits.plotting import new_axes, save_plot
from leebert_plugin.exits.policies import build_policy


def choose(rows: List[Dict], full: Dict, target_speedup, max_drop):
    if target_speedup is not None:
        ok = [r for r in rows if r["layer_speedup"] >= target_speedup]
        return max(ok, key=lambda r: (r["accuracy"], r["layer_speedup"])) if ok else None
    ok = [r for r in rows if r["accuracy"] >= full["accuracy"] - max_drop]
    return max(ok, key=lambda r: (r["layer_speedup"], r["accuracy"])) if ok else None


def plot(rows, full, test_row, oracle, path: Path, policy: str) -> None:
    fig, ax = new_axes((6, 4))
    xs, ys = [r["layer_speedup"] for r in rows], [r["accuracy"] for r in rows]
    ax.plot(xs, ys, "o-", label=f"dev, {policy} thresholds")
    for r in rows:
        ax.annotate(f"{r['threshold']:g}", (r["layer_speedup"], r["accuracy"]), fontsize=7,
                    textcoords="offset points", xytext=(3, 3))
    ax.axhline(full["accuracy"], color="grey", ls=":", label="dev, full depth")
    ax.axvline(oracle, color="red", ls="--", label=f"oracle ceiling ({oracle:.2f}x)")
    if test_row is not None:
        ax.plot([test_row["layer_speedup"]], [test_row["accuracy"]], "s", color="black", label="test, chosen on dev")
    save_plot(fig, ax, "layer speed-up (L / mean executed layers)", "accuracy (%)", path)


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
    cli.refuse_existing([args.out / "sweep.tsv", args.out / "pareto.png"], args.overwrite)
    model, task = load(args.checkpoint, args.data, resolve_device(args.device))
    C = model.exit_heads[task.cfg.classification_head_name].num_classes
    policies = [build_policy(args.policy, C, t, args.exit_patience) for t in args.thresholds]  # all checked first
    dev, test = batches(task, args.dev, args.batch_size), batches(task, args.test, args.batch_size)
    never = build_policy("none", C)
    full = run(model, task, dev, never)
    dev_plain = plain_seconds(model, task, dev)
    rows = []
    for t, policy in zip(args.thresholds, policies):
        row = run(model, task, dev, policy)
        row.update(threshold=t, split=args.dev, wall_speedup=dev_plain / row["seconds"])
        rows.append(row)
    dev_trace = trace(model, task, dev)
    oracle = score(dev_trace, oracle_exits(dev_trace))["layer_speedup"]
    chosen = choose(rows, full, args.target_speedup, None if args.target_speedup else args.max_drop)
    test_row = None
    if chosen is not None:
        test_plain = plain_seconds(model, task, test)
        test_row = run(model, task, test, build_policy(args.policy, C, chosen["threshold"], args.exit_patience))
        test_row.update(threshold=chosen["threshold"], split=args.test, wall_speedup=test_plain / test_row["seconds"])
    args.out.mkdir(parents=True, exist_ok=True)
    columns = ["split", "threshold", "accuracy", "f1", "mcc", "layer_speedup", "flops_speedup", "wall_speedup"]
    with open(args.out / "sweep.tsv", "w", newline="") as f:
        w = csv.DictWriter(f, columns, delimiter="\t", extrasaction="ignore")
        w.writeheader()
        for r in rows + ([test_row] if test_row else []):
            w.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()})
    plot(rows, full, test_row, oracle, args.out / "pareto.png", args.policy)
    print(f"dev full depth: accuracy {full['accuracy']:.2f}; oracle layer speed-up {oracle:.2f}x; policy {args.policy}")
    print("\t".join(columns))
    for r in rows + ([test_row] if test_row else []):
        print("\t".join(f"{r.get(c, ''):.4g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns))
    if chosen is None:
        sys.exit("no threshold on dev meets the target: widen --thresholds or relax the target")
    print(f"chosen on {args.dev}: threshold {chosen['threshold']:g}; on {args.test}: accuracy "
          f"{test_row['accuracy']:.2f} at {test_row['layer_speedup']:.2f}x layers, {test_row['flops_speedup']:.2f}x "
          f"FLOPs, {test_row['wall_speedup']:.2f}x wall-clock (batch {args.batch_size})")
    print(f"wrote {args.out / 'sweep.tsv'} and {args.out / 'pareto.png'}")


if __name__ == "__main__":
    cli.run(main)
