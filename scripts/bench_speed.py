#!/usr/bin/env python3
"""Is the batched early exit really faster? Wall-clock against the plain full-depth forward.

    python scripts/bench_speed.py [--layers 6 --dim 384 --heads 6 --ffn 1536] [--batch-sizes 1 8 32 128]
                                  [--min-len 16 --max-len 64] [--repeats 9] [--threads 0] [--device cuda]
    python scripts/bench_speed.py --checkpoint CKPT --data DATA --policy normalized_entropy --threshold 0.3
                                  [--subset test] [--samples 256] [--batch-sizes 1 8 32 128]

Without ``--checkpoint`` the model has random weights and the exit decisions come from a fixed
assignment (each sample leaves at a layer drawn uniformly, or as ``--exit-probs`` says), so the
numbers measure the mechanism, not a model's confidence. With ``--checkpoint`` a trained model's
own policy decides on a real split (the first ``--samples`` sentences, in fairseq's batch order).
Either way the plugin's real layer loop runs (batch shrinking, padding trimming, exit heads at every
executed exit). What is timed and reported per batch size: ``leebert_plugin.benchmark.speed``.
Everything runs on ``--device`` (default: CUDA if available, else the CPU); every clock read waits
for the GPU's queued kernels (``leebert_plugin.runtime.devices.Stopwatch``).
"""
import argparse

import torch

import leebert_plugin  # noqa: F401
from leebert_plugin import cli
from leebert_plugin.runtime.devices import add_device_argument, resolve_device
from leebert_plugin.benchmark.speed import SpeedRow, checkpoint_setup, measure, synthetic_setup


def main():
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=cli.number(int, 1), default=6)
    p.add_argument("--dim", type=cli.number(int, 1), default=384)
    p.add_argument("--heads", type=cli.number(int, 1), default=6)
    p.add_argument("--ffn", type=cli.number(int, 1), default=1536)
    p.add_argument("--exit-head", default="pabee")
    p.add_argument("--min-len", type=cli.number(int, 1), default=16)
    p.add_argument("--max-len", type=cli.number(int, 1), default=64)
    p.add_argument("--exit-probs", type=cli.number(float, 0), nargs="*", default=[],
                   help="without --checkpoint: the weight of each exit, one per layer (default: uniform)")
    p.add_argument("--checkpoint", help="a trained checkpoint: its own policy decides the exits on --data")
    p.add_argument("--data", help="the preprocessed data folder (with --checkpoint)")
    p.add_argument("--subset", default="test")
    p.add_argument("--policy", default="normalized_entropy")
    p.add_argument("--threshold", type=cli.number(float), default=None)
    p.add_argument("--exit-patience", type=cli.number(int, 1), default=1)
    p.add_argument("--batch-sizes", type=cli.number(int, 1), nargs="+", default=[1, 8, 32, 128])
    p.add_argument("--samples", type=cli.number(int, 1), default=256,
                   help="sentences per measurement: whole batches, at least one (a random batch, or the split's first)")
    p.add_argument("--repeats", type=cli.number(int, 1), default=9)
    p.add_argument("--threads", type=cli.number(int, 0), default=0)
    add_device_argument(p)
    args = p.parse_args()
    args.device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint and not args.data:
        p.error("--checkpoint needs --data (the preprocessed data folder)")
    if args.max_len < args.min_len:
        p.error(f"--max-len {args.max_len} is below --min-len {args.min_len}")
    if args.exit_probs and args.checkpoint:
        p.error("--exit-probs imposes exits on a random model; with --checkpoint the model's policy decides them")
    if args.checkpoint:
        model, head, plan, about = checkpoint_setup(args.checkpoint, args.data, args.subset, args.samples, args.policy,
                                                    args.threshold, args.exit_patience, args.device)
    else:
        model, head, plan, about = synthetic_setup(args.layers, args.dim, args.ffn, args.heads, args.exit_head,
                                                   args.samples, args.min_len, args.max_len, args.exit_probs,
                                                   args.device)
    print(f"{about}; median of {args.repeats}; device {args.device}; torch threads {torch.get_num_threads()}")
    print(SpeedRow.HEADER)
    for bsz in args.batch_sizes:
        print(measure(model, head, plan(bsz), args.repeats, args.device).line())


if __name__ == "__main__":
    cli.run(main)
