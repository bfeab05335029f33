#!/usr/bin/env python3
"""Cost of a LeeBERT/CLO update against a plain multi_exit update, same batch, same process.

    python scripts/bench_clo.py [--layers 6 --dim 384 --heads 6 --ffn 1536] [--batch 16 --length 64]
                                [--updates 40] [--interval 10] [--mode clo] [--threads 2] [--device cuda]

Each variant runs the plugin's real training step (the task's ``train_step``: forward, backward,
and for clo the D1/D2 split and, every ``--interval`` updates, the meta step) plus the optimizer
step, on one fixed random batch. The variants are interleaved in rounds so that machine noise hits
them alike; the median per-update time of each is reported, and the ratios to multi_exit + adam.
Runs on ``--device`` (default: CUDA if available, else the CPU); each update's time is read after
the GPU's queued kernels finish (``leebert_plugin.devices.Stopwatch``).
"""
import argparse
import statistics

import torch
from fairseq.data import Dictionary
from fairseq.optim.adam import FairseqAdam, FairseqAdamConfig
from omegaconf import OmegaConf

import leebert_plugin  # noqa: F401
from leebert_plugin import cli
from leebert_plugin.criterions.leebert import LeeBertConfig, LeeBertCriterion
from leebert_plugin.criterions.multi_exit import MultiExitConfig, MultiExitCriterion
from leebert_plugin.devices import add_device_argument, model_device, resolve_device, seconds, to_device
from leebert_plugin.models.exit_roberta import ExitRobertaModel, exit_base_architecture
from leebert_plugin.optim.clo import CLOConfig, CLOOptimizer
from leebert_plugin.tasks.early_exit_sentence_prediction import (
    EarlyExitSentencePredictionConfig,
    EarlyExitSentencePredictionTask,
)

HEAD = "sentence_classification_head"


def build(args, criterion_cls, criterion_cfg, optimizer: str):
    torch.manual_seed(0)
    d = Dictionary()
    for i in range(1000):
        d.add_symbol(f"w{i}")
    labels = Dictionary()
    for lab in ("0", "1"):
        labels.add_symbol(lab)
    common = dict(lr=[1e-4], tpu=False)
    clo_cfg = OmegaConf.structured(CLOConfig(_name="clo", mode=args.mode, w_update_interval=args.interval, **common))
    task_cfg = OmegaConf.structured(EarlyExitSentencePredictionConfig(data="unused", num_classes=2, seed=1))
    task_cfg.optimizer_settings = clo_cfg if optimizer == "clo" else None  # what fairseq's config interpolates
    task = EarlyExitSentencePredictionTask(task_cfg, d, labels)
    margs = argparse.Namespace(encoder_layers=args.layers, encoder_embed_dim=args.dim,
                               encoder_ffn_embed_dim=args.ffn, encoder_attention_heads=args.heads,
                               max_positions=512)
    exit_base_architecture(margs)
    model = ExitRobertaModel.build_model(margs, task)
    model.register_classification_head(HEAD, num_classes=2)
    model.to(args.device)  # before the optimizer takes the parameters, as fairseq's trainer does
    criterion = task.build_criterion(OmegaConf.structured(criterion_cfg)).to(args.device)
    assert isinstance(criterion, criterion_cls)
    if optimizer == "clo":
        opt = CLOOptimizer(clo_cfg, model.parameters())
    else:
        opt = FairseqAdam(OmegaConf.structured(FairseqAdamConfig(**common)), list(model.parameters()))
    return task, model, criterion, opt


def batch(args):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, 1000, (args.batch, args.length), generator=g)
    tokens[:, 0] = 0
    sample = {"id": torch.arange(args.batch), "nsentences": args.batch, "ntokens": tokens.numel(),
              "net_input": {"src_tokens": tokens, "src_lengths": torch.full((args.batch,), args.length)},
              "target": torch.randint(0, 2, (args.batch,), generator=g)}
    return to_device(sample, args.device)


def run_updates(variant, sample, start: int, n: int) -> list:
    task, model, criterion, opt = variant

    def update(number: int) -> None:
        opt.zero_grad()
        task.train_step(sample, model, criterion, opt, number)
        opt.step()

    return [seconds(lambda: update(number), model_device(model)) for number in range(start, start + n)]


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
    args.device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    sample = batch(args)
    variants = {
        "multi_exit + adam": build(args, MultiExitCriterion, MultiExitConfig(_name="multi_exit"), "adam"),
        "leebert (fixed weights) + adam": build(args, LeeBertCriterion, LeeBertConfig(_name="leebert", learn_weights=False), "adam"),
        f"leebert + clo ({args.mode}, every {args.interval})": build(args, LeeBertCriterion, LeeBertConfig(_name="leebert"), "clo"),
    }
    per_round = max(args.interval, args.updates // args.rounds // args.interval * args.interval)
    times = {name: [] for name in variants}
    for name, v in variants.items():  # warm-up
        run_updates(v, sample, 1, 2)
    for r in range(args.rounds):
        for name, v in variants.items():
            times[name] += run_updates(v, sample, r * per_round, per_round)
    base = statistics.mean(times["multi_exit + adam"])
    print(f"model: {args.layers} layers, dim {args.dim}, ffn {args.ffn}; batch {args.batch} x {args.length} tokens; "
          f"{len(next(iter(times.values())))} updates per variant; device {args.device}; "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'variant':44} {'mean ms/update':>15} {'median ms':>10} {'ratio (mean)':>13}")
    for name, t in times.items():
        mean = statistics.mean(t)
        print(f"{name:44} {1000 * mean:15.1f} {1000 * statistics.median(t):10.1f} {mean / base:13.2f}")
    clo = times[f"leebert + clo ({args.mode}, every {args.interval})"]
    meta = [t for i, t in enumerate(clo) if i % per_round % args.interval == 0]
    rest = [t for i, t in enumerate(clo) if i % per_round % args.interval != 0]
    without = f"{1000 * statistics.mean(rest):.1f} ms" if rest else "none (--interval 1: every update has one)"
    print(f"clo updates with a meta step: {1000 * statistics.mean(meta):.1f} ms; without: {without}; "
          f"an update with a meta step costs {statistics.mean(meta) / base:.2f} plain updates")


if __name__ == "__main__":
    cli.run(main)
