#!/usr/bin/env python3
"""Cost of a LeeBERT/CLO update against a plain multi_exit update, same batch, same process.

    python scripts/bench_clo.py [--layers 6 --dim 384 --heads 6 --ffn 1536] [--batch 16 --length 64]
                                [--updates 40] [--interval 10] [--mode clo] [--threads 2] [--device cuda]

Three variants (multi_exit + adam, LeeBERT with fixed weights + adam, LeeBERT + clo) train on one
fixed random batch, interleaved in rounds (``leebert_plugin.clo_bench``); the mean and median
per-update time of each is reported, the ratios to multi_exit + adam, and clo's updates with a
meta step apart from those without.
Runs on ``--device`` (default: CUDA if available, else the CPU); each update's time is read after
the GPU's queued kernels finish (``leebert_plugin.devices.Stopwatch``).
"""
import argparse
import statistics

import torch

import leebert_plugin  # noqa: F401
from leebert_plugin import cli
from leebert_plugin.clo_bench import build_step, fixed_batch, interleaved_updates, meta_split
from leebert_plugin.criterions.leebert import LeeBertConfig
from leebert_plugin.criterions.multi_exit import MultiExitConfig
from leebert_plugin.devices import add_device_argument, resolve_device


def main() -> None:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=cli.number(int, 1), default=6)
    p.add_argument("--dim", type=cli.number(int, 1), default=384)
    p.add_argument("--heads", type=cli.number(int, 1), default=6)
    p.add_argument("--ffn", type=cli.number(int, 1), default=1536)
    p.add_argument("--batch", type=cli.number(int, 1), default=16)
    p.add_argument("--length", type=cli.number(int, 1), default=64)
    p.add_argument("--updates", type=cli.number(int, 1), default=40, help="updates per variant (a multiple of --interval)")
    p.add_argument("--rounds", type=cli.number(int, 1), default=4, help="interleaved rounds the updates are spread over")
    p.add_argument("--interval", type=cli.number(int, 1), default=10, help="w_update_interval of clo")
    p.add_argument("--mode", default="clo", choices=["clo", "darts2", "darts1"])
    p.add_argument("--threads", type=cli.number(int, 0), default=0, help="torch threads (0: torch's default)")
    add_device_argument(p)
    args = p.parse_args()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = dict(layers=args.layers, dim=args.dim, ffn=args.ffn, heads=args.heads, device=device)
    clo_name = f"leebert + clo ({args.mode}, every {args.interval})"
    steps = {
        "multi_exit + adam": build_step(criterion_cfg=MultiExitConfig(_name="multi_exit"), optimizer="adam", **size),
        "leebert (fixed weights) + adam": build_step(
            criterion_cfg=LeeBertConfig(_name="leebert", learn_weights=False), optimizer="adam", **size),
        clo_name: build_step(criterion_cfg=LeeBertConfig(_name="leebert"), optimizer="clo", mode=args.mode,
                             interval=args.interval, **size),
    }
    per_round = max(args.interval, args.updates // args.rounds // args.interval * args.interval)
    sample = fixed_batch(steps[clo_name].model.encoder.dictionary, args.batch, args.length, device)
    times = interleaved_updates(steps, sample, args.rounds, per_round, device)
    base = statistics.mean(times["multi_exit + adam"])
    print(f"model: {args.layers} layers, dim {args.dim}, ffn {args.ffn}; batch {args.batch} x {args.length} tokens; "
          f"{len(times[clo_name])} updates per variant; device {device}; torch threads {torch.get_num_threads()}")
    print(f"{'variant':44} {'mean ms/update':>15} {'median ms':>10} {'ratio (mean)':>13}")
    for name, t in times.items():
        mean = statistics.mean(t)
        print(f"{name:44} {1000 * mean:15.1f} {1000 * statistics.median(t):10.1f} {mean / base:13.2f}")
    meta, rest = meta_split(times[clo_name], per_round, args.interval)
    without = f"{1000 * statistics.mean(rest):.1f} ms" if rest else "none (--interval 1: every update has one)"
    print(f"clo updates with a meta step: {1000 * statistics.mean(meta):.1f} ms; without: {without}; "
          f"an update with a meta step costs {statistics.mean(meta) / base:.2f} plain updates")


if __name__ == "__main__":
    cli.run(main)
