"""What a LeeBERT/CLO update costs against a plain multi_exit update (``scripts/bench_clo.py`` is
the command line).

Each variant (:class:`TrainStep`) runs the plugin's real training step, the task's ``train_step``
(forward, backward, and for clo the D1/D2 split and, every ``interval`` updates, the meta step),
plus the optimizer step, on one fixed random batch. :func:`interleaved_updates` runs the variants
in rounds, one after another within a round, so that a slow spell of the machine falls on each;
:func:`meta_split` separates clo's updates that carry a meta step from those that do not.
"""
import statistics
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
from fairseq.criterions import CRITERION_REGISTRY
from fairseq.data import Dictionary
from fairseq.optim.adam import FairseqAdam, FairseqAdamConfig
from omegaconf import OmegaConf

from leebert_plugin.criterions.leebert import LeeBertConfig
from leebert_plugin.criterions.multi_exit import MultiExitConfig
from leebert_plugin.runtime.devices import seconds, to_device
from leebert_plugin.optim.clo import CLOConfig, CLOOptimizer
from leebert_plugin.data.synthetic import word_dictionary
from leebert_plugin.models.exit_roberta import random_exit_model
from leebert_plugin.tasks.early_exit_sentence_prediction import (
    EarlyExitSentencePredictionConfig,
    EarlyExitSentencePredictionTask,
)


PLANNED_UPDATES = 20_935  # a run as long as configs/sst_2_leebert.yaml's, for clo's derived weights lr


@dataclass
class TrainStep:
    """One variant: what fairseq's trainer would hold for it."""

    task: EarlyExitSentencePredictionTask
    model: torch.nn.Module
    criterion: torch.nn.Module
    optimizer: object

    def seconds_per_update(self, sample: dict, first: int, n: int, device: torch.device) -> List[float]:
        """Seconds of updates ``first .. first + n - 1`` on ``sample``, one each."""

        def update(number: int) -> None:
            self.optimizer.zero_grad()
            self.task.train_step(sample, self.model, self.criterion, self.optimizer, number)
            self.optimizer.step()

        return [seconds(lambda: update(number), device) for number in range(first, first + n)]


def build_step(layers: int, dim: int, ffn: int, heads: int, criterion_cfg, optimizer: str, device: torch.device,
               mode: str = "clo", interval: int = 10, lr: float = 1e-4) -> TrainStep:
    """A random-weight model (:func:`~leebert_plugin.models.exit_roberta.random_exit_model`, seed
    0: every variant starts from the same weights) with the criterion of ``criterion_cfg`` and
    ``optimizer`` (``clo`` with ``mode`` and ``interval``, or ``adam``), on ``device``."""
    labels = Dictionary()
    for label in ("0", "1"):
        labels.add_symbol(label)
    common = dict(lr=[lr], tpu=False)
    clo_cfg = OmegaConf.structured(CLOConfig(_name="clo", mode=mode, w_update_interval=interval, **common))
    task_cfg = OmegaConf.structured(EarlyExitSentencePredictionConfig(data="unused", num_classes=2, seed=1))
    task_cfg.optimizer_settings = clo_cfg if optimizer == "clo" else None  # what fairseq's config interpolates
    task_cfg.max_update = PLANNED_UPDATES  # the run's length, which sets the weights' lr only (not the cost)
    model = random_exit_model(word_dictionary(1000), 2, encoder_layers=layers, encoder_embed_dim=dim,
                              encoder_ffn_embed_dim=ffn, encoder_attention_heads=heads, max_positions=512).train()
    task = EarlyExitSentencePredictionTask(task_cfg, model.encoder.dictionary, labels)
    model.to(device)  # before the optimizer takes the parameters, as fairseq's trainer does
    criterion = task.build_criterion(OmegaConf.structured(criterion_cfg)).to(device)
    if not isinstance(criterion, CRITERION_REGISTRY[criterion_cfg._name]):
        raise ValueError(f"criterion {criterion_cfg._name!r} built a {type(criterion).__name__}")
    if optimizer == "clo":
        opt = CLOOptimizer(clo_cfg, model.parameters())
    else:
        opt = FairseqAdam(OmegaConf.structured(FairseqAdamConfig(**common)), list(model.parameters()))
    return TrainStep(task, model, criterion, opt)


def fixed_batch(dictionary: Dictionary, batch: int, length: int, device: torch.device, seed: int = 0) -> dict:
    """A fairseq sample of ``batch`` random sentences of ``length`` words of ``dictionary`` (first
    ``<s>``, no padding), random binary targets, on ``device``."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(dictionary.nspecial, len(dictionary), (batch, length), generator=g)
    tokens[:, 0] = dictionary.bos()
    sample = {"id": torch.arange(batch), "nsentences": batch, "ntokens": tokens.numel(),
              "net_input": {"src_tokens": tokens, "src_lengths": torch.full((batch,), length)},
              "target": torch.randint(0, 2, (batch,), generator=g)}
    return to_device(sample, device)


def interleaved_updates(steps: Dict[str, TrainStep], sample: dict, rounds: int, per_round: int,
                        device: torch.device) -> Dict[str, List[float]]:
    """Seconds of each update of each variant: two warm-up updates each, then ``rounds`` rounds in
    which every variant runs ``per_round`` updates, numbered 0, 1, ... on from round to round, so
    that clo's meta steps fall where :func:`meta_split` looks for them. The warm-up updates are
    numbered after the timed ones: the bi-level object runs at most one meta step per update
    number, so a warm-up meta step at a number the rounds use would take that update's."""
    for step in steps.values():
        step.seconds_per_update(sample, rounds * per_round, 2, device)
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for r in range(rounds):
        for name, step in steps.items():
            times[name] += step.seconds_per_update(sample, r * per_round, per_round, device)
    return times


def meta_split(times: Sequence[float], per_round: int, interval: int) -> Tuple[List[float], List[float]]:
    """clo's update times of :func:`interleaved_updates` split into those with a meta step (update
    numbers divisible by ``interval``; each round starts at a multiple of ``per_round``, itself a
    multiple of ``interval``) and those without."""
    meta = [t for i, t in enumerate(times) if i % per_round % interval == 0]
    rest = [t for i, t in enumerate(times) if i % per_round % interval != 0]
    return meta, rest


def compare(layers: int, dim: int, ffn: int, heads: int, batch: int, length: int, updates: int, rounds: int,
            interval: int, mode: str, device: torch.device) -> str:
    """``scripts/bench_clo.py``'s report: multi_exit + adam, LeeBERT with fixed weights + adam and
    LeeBERT + clo (``mode``, a meta step every ``interval`` updates) on one fixed batch, about
    ``updates`` each in ``rounds`` interleaved rounds (whole meta intervals per round); the mean and
    median ms per update, the ratio of means to multi_exit + adam, and clo's updates with a meta
    step apart from those without."""
    size = dict(layers=layers, dim=dim, ffn=ffn, heads=heads, device=device)
    clo_name = f"leebert + clo ({mode}, every {interval})"
    steps = {
        "multi_exit + adam": build_step(criterion_cfg=MultiExitConfig(_name="multi_exit"), optimizer="adam", **size),
        "leebert (fixed weights) + adam": build_step(
            criterion_cfg=LeeBertConfig(_name="leebert", learn_weights=False), optimizer="adam", **size),
        clo_name: build_step(criterion_cfg=LeeBertConfig(_name="leebert"), optimizer="clo", mode=mode,
                             interval=interval, **size),
    }
    per_round = max(interval, updates // rounds // interval * interval)
    sample = fixed_batch(steps[clo_name].model.encoder.dictionary, batch, length, device)
    times = interleaved_updates(steps, sample, rounds, per_round, device)
    base = statistics.mean(times["multi_exit + adam"])
    lines = [f"model: {layers} layers, dim {dim}, ffn {ffn}; batch {batch} x {length} tokens; "
             f"{len(times[clo_name])} updates per variant; device {device}; torch threads {torch.get_num_threads()}",
             f"{'variant':44} {'mean ms/update':>15} {'median ms':>10} {'ratio (mean)':>13}"]
    for name, t in times.items():
        mean = statistics.mean(t)
        lines.append(f"{name:44} {1000 * mean:15.1f} {1000 * statistics.median(t):10.1f} {mean / base:13.2f}")
    meta, rest = meta_split(times[clo_name], per_round, interval)
    without = f"{1000 * statistics.mean(rest):.1f} ms" if rest else "none (--interval 1: every update has one)"
    lines.append(f"clo updates with a meta step: {1000 * statistics.mean(meta):.1f} ms; without: {without}; "
                 f"an update with a meta step costs {statistics.mean(meta) / base:.2f} plain updates")
    return "\n".join(lines)
