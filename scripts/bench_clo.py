#!/usr/bin/env python3
"""Cost of a LeeBERT/CLO update against a plain multi_exit update, same batch, same process.

    python scripts/bench_clo.py [--layers 6 --dim 384 --heads 6 --ffn 1536] [--batch 16 --length 64]
                                [--updates 40] [--interval 10] [--mode clo] [--threads 2] [--device cuda]

Three variants (multi_exit + adam, LeeBERT with fixed weights + adam, LeeBERT + clo) train on one
fixed random batch, interleaved in rounds (``leebert_plugin.benchmark.clo_cost``); the mean and median
per-update time of each is reported, the ratios to multi_exit + adam, and clo's updates with a
meta step apart from those without.
Runs on ``--device`` (default: CUDA if available, else the CPU); each update's time is read after
the GPU's queued kernels finish (``leebert_plugin.runtime.devices.Stopwatch``).
"""
import argparse

import torch

import leebert_plugin  # noqa: F401
from leebert_plugin import cli
from leebert_plugin.benchmark.clo_cost import compare
from leebert_plugin.runtime.devices import add_device_argument, resolve_device


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
    print(compare(args.layers, args.dim, args.ffn, args.heads, args.batch, args.length, args.updates, args.rounds,
                  args.interval, args.mode, device))


if __name__ == "__main__":
    cli.run(main)
