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
executed exit). Per batch size, in the same process:

* plain: fairseq's RoBERTa encoder forward at full depth, then the last exit's classifier;
* early exit: the plugin's loop under the policy;
* all exits: the plugin's loop at full depth with every exit evaluated (to price the heads).

The three take turns batch by batch (``leebert_plugin.devices.interleaved_seconds``), so that a
slow spell of the machine falls on all three alike. Reported: the layer speed-up (L / mean
executed layers), the wall-clock speed-up (the median over repeats of plain / early exit), its
ratio to the layer speed-up with the range over repeats (the noise a verdict must clear), the exit
heads' cost as a share of the plain forward, and, on the
first batch, the median cost of one transformer layer and of one exit check (head + policy step).
Everything runs on ``--device`` (default: CUDA if available, else the CPU); every clock read waits
for the GPU's queued kernels (``leebert_plugin.devices.Stopwatch``).
"""
import argparse
import math
import statistics
from typing import Callable, List, Tuple

import torch
from fairseq.data import Dictionary
from torch import Tensor

import leebert_plugin  # noqa: F401
from leebert_plugin import cli
from leebert_plugin.data.synthetic import random_token_batch
from leebert_plugin.devices import add_device_argument, interleaved_seconds, ratios_per_repeat, resolve_device, seconds
from leebert_plugin.exits.evaluate import batches, load, plain_forward
from leebert_plugin.exits.policies import AssignedExit, ExitPolicy, build_policy
from leebert_plugin.models.exit_roberta import ExitRobertaModel, exit_base_architecture

HEAD = "sentence_classification_head"
Plan = List[Tuple[Tensor, ExitPolicy]]  # (tokens, the policy that decides their exits) per batch


class _Task:
    def __init__(self, d):
        self.source_dictionary = d


def synthetic(args) -> Tuple[torch.nn.Module, str, Callable[[int], Plan], str]:
    """A random-weight model, random sentences and assigned exits, on ``args.device``."""
    d = Dictionary()
    for i in range(1000):
        d.add_symbol(f"w{i}")
    margs = argparse.Namespace(encoder_layers=args.layers, encoder_embed_dim=args.dim, encoder_ffn_embed_dim=args.ffn,
                               encoder_attention_heads=args.heads, max_positions=512, exit_head=args.exit_head)
    exit_base_architecture(margs)
    torch.manual_seed(0)
    model = ExitRobertaModel.build_model(margs, _Task(d))
    model.register_classification_head(HEAD, num_classes=2)
    probs = torch.tensor(args.exit_probs or [1.0 / args.layers] * args.layers)
    g = torch.Generator().manual_seed(1)

    def plan(bsz: int) -> Plan:
        tokens = [random_token_batch(d, bsz, args.min_len, args.max_len, seed) for seed in range(args.samples // bsz)]
        return [(t.to(args.device), AssignedExit(torch.multinomial(probs, t.size(0), replacement=True, generator=g)))
                for t in tokens]

    about = (f"random weights: {args.layers} layers, dim {args.dim}, ffn {args.ffn}, {args.exit_head} exits; "
             f"{args.samples} sentences of {args.min_len}-{args.max_len} tokens, assigned exits")
    return model.eval().to(args.device), HEAD, plan, about


def trained(args) -> Tuple[torch.nn.Module, str, Callable[[int], Plan], str]:
    """A trained checkpoint, a real split and the model's own exit policy, on ``args.device``."""
    model, task = load(args.checkpoint, args.data, args.device)
    head = task.cfg.classification_head_name
    policy = build_policy(args.policy, model.exit_heads[head].num_classes, args.threshold, args.exit_patience)

    def plan(bsz: int) -> Plan:
        data = batches(task, args.subset, bsz)[: math.ceil(args.samples / bsz)]
        return [(s["net_input"]["src_tokens"].to(args.device), policy) for s in data]

    task.load_dataset(args.subset)
    n = min(args.samples, len(task.dataset(args.subset)))
    about = (f"{args.checkpoint} ({model.num_layers} layers), {args.subset} of {args.data}, first {n} "
             f"sentences; policy {args.policy} threshold {args.threshold} patience {args.exit_patience}")
    if model.skip_gates is not None:
        about += "; skip gates: 'all exits' skips layers too, so 'heads %' is not the heads' cost alone"
    return model, head, plan, about


def per_call_ms(model, head: str, tokens: Tensor, policy: ExitPolicy, repeats: int) -> Tuple[float, float]:
    """Median milliseconds of one transformer layer and of one exit check (the exit's head plus the
    policy's step) on ``tokens``: what each executed layer and each evaluated exit cost. Each check
    is timed right after a layer, as in the loop: the layer's weights have then pushed the head's
    out of the caches, and at batch 1 reading them back is most of the check's cost (a check timed
    after another check costs a fraction of it)."""
    encoder = model.encoder.sentence_encoder
    pad = tokens.eq(encoder.padding_idx)
    x = encoder.forward_embedding(tokens)[0].transpose(0, 1)
    heads, state = model.exit_heads[head], policy.init_state(tokens.size(0), tokens.device)
    layer, check = [], []
    for _ in range(repeats):
        layer.append(seconds(lambda: encoder.layers[0](x, encoder_padding_mask=pad), tokens.device))
        check.append(seconds(lambda: policy.step(heads(0, x, pad), state), tokens.device))
    return 1000 * statistics.median(layer), 1000 * statistics.median(check)


def main():
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--ffn", type=int, default=1536)
    p.add_argument("--exit-head", default="pabee")
    p.add_argument("--min-len", type=int, default=16)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--exit-probs", type=float, nargs="*", default=[], help="probability of each exit (default uniform)")
    p.add_argument("--checkpoint", help="a trained checkpoint: its own policy decides the exits on --data")
    p.add_argument("--data", help="the preprocessed data folder (with --checkpoint)")
    p.add_argument("--subset", default="test")
    p.add_argument("--policy", default="normalized_entropy")
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--exit-patience", type=int, default=1)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 128])
    p.add_argument("--samples", type=int, default=256, help="sentences per measurement (split into batches)")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=0)
    add_device_argument(p)
    args = p.parse_args()
    args.device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint and not args.data:
        p.error("--checkpoint needs --data (the preprocessed data folder)")
    model, head, plan, about = trained(args) if args.checkpoint else synthetic(args)
    print(f"{about}; median of {args.repeats}; device {args.device}; torch threads {torch.get_num_threads()}")
    print(f"{'batch':>5} {'plain ms':>9} {'early ms':>9} {'all-exits ms':>12} {'layer x':>8} {'wall x':>7} "
          f"{'wall/layer':>10} {'(range)':>11} {'heads %':>8} {'1 layer ms':>10} {'1 exit ms':>9}")
    never = build_policy("none", model.exit_heads[head].num_classes)
    with torch.no_grad():
        for bsz in args.batch_sizes:
            work = plan(bsz)
            layers: List[Tensor] = [torch.zeros(0)] * len(work)

            def plain(j: int):
                plain_forward(model, head, work[j][0])

            def early(j: int):
                tokens, policy = work[j]
                _, extra = model(tokens, classification_head_name=head, exit_policy=policy)
                layers[j] = extra["exits"].layers_run

            def all_exits(j: int):
                model(work[j][0], classification_head_name=head, exit_policy=never)

            variants = {"plain": plain, "early": early, "all": all_exits}
            interleaved_seconds(variants, len(work), 1, args.device)  # warm-up
            t = interleaved_seconds(variants, len(work), args.repeats, args.device)
            med = {k: statistics.median(v) for k, v in t.items()}
            layer_x = model.num_layers / float(torch.cat(layers).float().mean())
            paired = [r / layer_x for r in ratios_per_repeat(t, "plain", "early")]  # wall / layer, repeat by repeat
            wall_x = statistics.median(paired) * layer_x
            heads = 100 * (statistics.median(ratios_per_repeat(t, "all", "plain")) - 1)
            layer_ms, exit_ms = per_call_ms(model, head, work[0][0], work[0][1], 5 * args.repeats)
            print(f"{bsz:5d} {1000 * med['plain']:9.1f} {1000 * med['early']:9.1f} {1000 * med['all']:12.1f} "
                  f"{layer_x:8.2f} {wall_x:7.2f} {wall_x / layer_x:10.2f} {min(paired):5.2f}-{max(paired):<5.2f} {heads:8.1f} {layer_ms:10.3f} {exit_ms:9.3f}")


if __name__ == "__main__":
    cli.run(main)
