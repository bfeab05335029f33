#!/usr/bin/env python3
"""Is the batched early exit really faster? Wall-clock against the plain full-depth forward.

    python scripts/bench_speed.py [--layers 6 --dim 384 --heads 6 --ffn 1536] [--batch-sizes 1 8 32 128]
                                  [--min-len 16 --max-len 64] [--repeats 5] [--threads 0]

The exit decisions come from a fixed assignment (each sample leaves at a layer drawn uniformly,
or as ``--exit-probs`` says), carried by a policy through the plugin's real layer loop: batch
shrinking, padding trimming, exit heads at every executed exit. So the numbers measure the
mechanism, not a model's confidence. Per batch size, in the same process, interleaved:

* plain: fairseq's RoBERTa encoder forward at full depth + one classification head;
* early exit: the plugin's loop under the assigned exits;
* all exits: the plugin's loop at full depth with every exit evaluated (to price the heads).

Reported: the layer speed-up (L / mean executed layers), the wall-clock speed-up (plain / early
exit, medians), their ratio, and the exit heads' cost as a share of the plain forward.
"""
import argparse
import statistics
import time

import torch
from fairseq.data import Dictionary

import leebert_plugin  # noqa: F401
from leebert_plugin.data.synthetic import random_token_batch
from leebert_plugin.exits.policies import ExitPolicy, build_policy
from leebert_plugin.models.exit_roberta import ExitRobertaModel, exit_base_architecture

HEAD = "sentence_classification_head"


class AssignedExit(ExitPolicy):
    """Each sample leaves at its pre-assigned exit (state: exits still to pass)."""

    name = "assigned"

    def __init__(self, exit_index):
        super().__init__(num_classes=2)
        self.exit_index = exit_index

    def init_state(self, batch_size, device):
        return {"left": self.exit_index.clone().to(device)}

    def step(self, logits, state):
        return state["left"] <= 0, {"left": state["left"] - 1}


class _Task:
    def __init__(self, d):
        self.source_dictionary = d


def build_model(args):
    d = Dictionary()
    for i in range(1000):
        d.add_symbol(f"w{i}")
    margs = argparse.Namespace(encoder_layers=args.layers, encoder_embed_dim=args.dim, encoder_ffn_embed_dim=args.ffn,
                               encoder_attention_heads=args.heads, max_positions=512, exit_head=args.exit_head)
    exit_base_architecture(margs)
    torch.manual_seed(0)
    model = ExitRobertaModel.build_model(margs, _Task(d))
    model.register_classification_head(HEAD, num_classes=2)
    # the plain model's own head, for the reference forward
    from fairseq.models.roberta.model import RobertaClassificationHead
    model.classification_heads["plain"] = RobertaClassificationHead(args.dim, args.dim, 2, "tanh", 0.0)
    return model.eval(), d


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--ffn", type=int, default=1536)
    p.add_argument("--exit-head", default="pabee")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 128])
    p.add_argument("--samples", type=int, default=256, help="sentences per measurement (split into batches)")
    p.add_argument("--min-len", type=int, default=16)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--exit-probs", type=float, nargs="*", default=[], help="probability of each exit (default uniform)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, d = build_model(args)
    L = args.layers
    probs = torch.tensor(args.exit_probs or [1.0 / L] * L)
    g = torch.Generator().manual_seed(1)
    print(f"model: {L} layers, dim {args.dim}, ffn {args.ffn}, {args.exit_head} exits; {args.samples} sentences of "
          f"{args.min_len}-{args.max_len} tokens per measurement; median of {args.repeats}; torch threads "
          f"{torch.get_num_threads()}")
    print(f"{'batch':>5} {'plain ms':>9} {'early ms':>9} {'all-exits ms':>12} {'layer x':>8} {'wall x':>7} "
          f"{'wall/layer':>10} {'heads %':>8}")
    with torch.no_grad():
        for bsz in args.batch_sizes:
            batches = [random_token_batch(d, bsz, args.min_len, args.max_len, seed) for seed in range(args.samples // bsz)]
            assigned = [torch.multinomial(probs, b.size(0), replacement=True, generator=g) for b in batches]
            policies = [AssignedExit(a) for a in assigned]
            never = build_policy("none", 2)

            def plain():
                for b in batches:
                    feats, _ = model.encoder.extract_features(b)
                    model.classification_heads["plain"](feats)

            def early():
                for b, pol in zip(batches, policies):
                    model(b, classification_head_name=HEAD, exit_policy=pol)

            def all_exits():
                for b in batches:
                    model(b, classification_head_name=HEAD, exit_policy=never)

            plain(), early(), all_exits()  # warm-up
            t = {"plain": [], "early": [], "all": []}
            for _ in range(args.repeats):  # interleaved, so that noise hits all three alike
                t["plain"] += timed(plain, 1)
                t["early"] += timed(early, 1)
                t["all"] += timed(all_exits, 1)
            med = {k: statistics.median(v) for k, v in t.items()}
            exit_layers = torch.cat(assigned) + 1
            layer_x = L / float(exit_layers.float().mean())
            wall_x = med["plain"] / med["early"]
            heads = (med["all"] - med["plain"]) / med["plain"] * 100
            print(f"{bsz:5d} {1000 * med['plain']:9.1f} {1000 * med['early']:9.1f} {1000 * med['all']:12.1f} "
                  f"{layer_x:8.2f} {wall_x:7.2f} {wall_x / layer_x:10.2f} {heads:8.1f}")


if __name__ == "__main__":
    main()
