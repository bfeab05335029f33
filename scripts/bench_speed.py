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
executed exit). What is timed and reported per batch size: ``leebert_plugin.speed_bench``.
Everything runs on ``--device`` (default: CUDA if available, else the CPU); every clock read waits
for the GPU's queued kernels (``leebert_plugin.devices.Stopwatch``).
"""
import argparse
import math

import torch

import leebert_plugin  # noqa: F401
from leebert_plugin import cli
from leebert_plugin.devices import add_device_argument, resolve_device
from leebert_plugin.exits.evaluate import batches, load
from leebert_plugin.exits.policies import build_policy
from leebert_plugin.speed_bench import HEAD, SpeedRow, assigned_plan, measure, random_model


def synthetic(args):
    """A random-weight model, random sentences and assigned exits, on ``args.device``."""
    model = random_model(args.layers, args.dim, args.ffn, args.heads, args.exit_head).to(args.device)
    plan = assigned_plan(model, args.samples, args.min_len, args.max_len, args.exit_probs, args.device)
    about = (f"random weights: {args.layers} layers, dim {args.dim}, ffn {args.ffn}, {args.exit_head} exits; "
             f"{args.samples} sentences of {args.min_len}-{args.max_len} tokens, assigned exits")
    return model, HEAD, plan, about


def trained(args):
    """A trained checkpoint, a real split and the model's own exit policy, on ``args.device``."""
    model, task = load(args.checkpoint, args.data, args.device)
    head = task.cfg.classification_head_name
    policy = build_policy(args.policy, model.exit_heads[head].num_classes, args.threshold, args.exit_patience)

    def plan(bsz: int):
        data = batches(task, args.subset, bsz)[: math.ceil(args.samples / bsz)]
        return [(s["net_input"]["src_tokens"].to(args.device), policy) for s in data]

    task.load_dataset(args.subset)
    n = min(args.samples, len(task.dataset(args.subset)))
    about = (f"{args.checkpoint} ({model.num_layers} layers), {args.subset} of {args.data}, first {n} "
             f"sentences; policy {args.policy} threshold {args.threshold} patience {args.exit_patience}")
    if model.skip_gates is not None:
        about += "; skip gates: 'all exits' skips layers too, so 'heads %' is not the heads' cost alone"
    return model, head, plan, about


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
    model, head, plan, about = trained(args) if args.checkpoint else synthetic(args)
    print(f"{about}; median of {args.repeats}; device {args.device}; torch threads {torch.get_num_threads()}")
    print(SpeedRow.HEADER)
    for bsz in args.batch_sizes:
        print(measure(model, head, plan(bsz), args.repeats, args.device).line())


if __name__ == "__main__":
    cli.run(main)
