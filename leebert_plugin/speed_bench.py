"""Is the batched early exit really faster? Wall-clock against the plain full-depth forward
(``scripts/bench_speed.py`` is the command line).

A *plan* is the work of one measurement: batches of tokens, each with the policy that decides its
exits. Per batch size, :func:`measure` times three variants of the same plan in one process:

* plain: fairseq's RoBERTa encoder at full depth, then the last exit's classifier
  (:func:`leebert_plugin.exits.evaluate.plain_forward`);
* early exit: the plugin's loop under the plan's policies;
* all exits: the plugin's loop at full depth with every exit evaluated (to price the heads).

They take turns batch by batch (:func:`leebert_plugin.devices.interleaved_seconds`), so a slow
spell of the machine falls on all three alike. The figures (:class:`SpeedRow`): the layer speed-up
``L / mean executed layers``; the wall-clock speed-up, ``layer x`` times the median over repeats of
``(plain / early) / layer x`` (each repeat's ratio is taken within the repeat, so its range over the
repeats is the measurement's noise); the exit heads' share of a plain forward; and on the first
batch the median cost of one transformer layer and of one exit check (:func:`per_call_ms`).
"""
import statistics
from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

import torch
from torch import Tensor

from leebert_plugin.data.synthetic import random_token_batch, word_dictionary
from leebert_plugin.devices import interleaved_seconds, ratios_per_repeat, seconds
from leebert_plugin.exits.evaluate import plain_forward
from leebert_plugin.exits.policies import AssignedExit, ExitPolicy, build_policy
from leebert_plugin.errors import UsageError
from leebert_plugin.models.exit_roberta import ExitRobertaModel, random_exit_model

HEAD = "sentence_classification_head"
Plan = List[Tuple[Tensor, ExitPolicy]]  # (tokens, the policy that decides their exits) per batch


def random_model(layers: int, dim: int, ffn: int, heads: int, exit_head: str = "pabee", num_classes: int = 2,
                 seed: int = 0) -> ExitRobertaModel:
    """The benchmarks' model without a checkpoint: random weights over
    :func:`~leebert_plugin.data.synthetic.word_dictionary`'s 1,000 words, an exit at every layer,
    :data:`HEAD` registered, in eval mode, on the CPU."""
    return random_exit_model(word_dictionary(1000), num_classes, seed=seed, head=HEAD, encoder_layers=layers,
                             encoder_embed_dim=dim, encoder_ffn_embed_dim=ffn, encoder_attention_heads=heads,
                             max_positions=512, exit_head=exit_head)


def assigned_plan(model: ExitRobertaModel, samples: int, min_len: int, max_len: int, exit_probs: Sequence[float],
                  device: torch.device, seed: int = 1) -> Callable[[int], Plan]:
    """Random sentences whose exits are imposed: the loop's cost, not a model's confidence.

    ``plan(bsz)`` gives ``samples // bsz`` batches (at least one) of ``bsz`` sentences of
    ``min_len``..``max_len`` tokens; each sentence's exit is drawn from ``exit_probs`` (one weight
    per exit of ``model``, not necessarily normalised; empty: uniform) and imposed by
    :class:`~leebert_plugin.exits.policies.AssignedExit`. The draws come from one generator shared
    by every ``plan`` call, so they depend on the order of the batch sizes asked for."""
    num_exits = len(model.exit_layers)
    probs = torch.tensor([float(p) for p in exit_probs] or [1.0] * num_exits)
    if probs.numel() != num_exits:
        raise UsageError(f"{probs.numel()} exit probabilities for a model with {num_exits} exits",
                         f"give one non-negative weight per exit ({num_exits}), or none for uniform exits")
    if not bool(torch.isfinite(probs).all()) or bool((probs < 0).any()) or float(probs.sum()) <= 0:
        raise UsageError(f"exit probabilities {list(exit_probs)} are not weights",
                         "give finite non-negative weights with a positive sum")
    g = torch.Generator().manual_seed(seed)
    dictionary = model.encoder.dictionary

    def plan(bsz: int) -> Plan:
        tokens = [random_token_batch(dictionary, bsz, min_len, max_len, s) for s in range(max(1, samples // bsz))]
        return [(t.to(device), AssignedExit(torch.multinomial(probs, t.size(0), replacement=True, generator=g)))
                for t in tokens]

    return plan


@dataclass
class SpeedRow:
    """One batch size's figures (times in ms, medians over repeats). ``batch_size`` is the first
    batch's real size: a split smaller than the size asked for gives one smaller batch."""

    batch_size: int
    plain_ms: float
    early_ms: float
    all_exits_ms: float
    layer_x: float  # L / mean executed layers
    wall_x: float  # layer_x * median of the per-repeat (plain / early) / layer_x
    wall_per_layer: Tuple[float, float, float]  # (low, median, high) over the repeats
    heads_pct: float  # all exits against plain, minus 1, in percent (median over repeats)
    layer_ms: float  # one transformer layer on the first batch
    exit_ms: float  # one exit check (head + policy step) right after a layer, first batch

    HEADER = (f"{'batch':>5} {'plain ms':>9} {'early ms':>9} {'all-exits ms':>12} {'layer x':>8} {'wall x':>7} "
              f"{'wall/layer':>10} {'(range)':>11} {'heads %':>8} {'1 layer ms':>10} {'1 exit ms':>9}")

    def line(self) -> str:
        low, mid, high = self.wall_per_layer
        return (f"{self.batch_size:5d} {self.plain_ms:9.1f} {self.early_ms:9.1f} {self.all_exits_ms:12.1f} "
                f"{self.layer_x:8.2f} {self.wall_x:7.2f} {mid:10.2f} {low:5.2f}-{high:<5.2f} {self.heads_pct:8.1f} "
                f"{self.layer_ms:10.3f} {self.exit_ms:9.3f}")


def per_call_ms(model: ExitRobertaModel, head: str, tokens: Tensor, policy: ExitPolicy,
                repeats: int) -> Tuple[float, float]:
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


def measure(model: ExitRobertaModel, head: str, work: Plan, repeats: int, device: torch.device) -> SpeedRow:
    """:class:`SpeedRow` of ``work`` (one plan at one batch size), after one warm-up repeat."""
    never = build_policy("none", model.exit_heads[head].num_classes)
    layers: List[Tensor] = [torch.zeros(0)] * len(work)

    def plain(j: int):
        plain_forward(model, head, work[j][0])

    def early(j: int):
        tokens, policy = work[j]
        _, extra = model(tokens, classification_head_name=head, exit_policy=policy)
        layers[j] = extra["exits"].layers_run

    def all_exits(j: int):
        model(work[j][0], classification_head_name=head, exit_policy=never)

    with torch.no_grad():
        variants = {"plain": plain, "early": early, "all": all_exits}
        interleaved_seconds(variants, len(work), 1, device)  # warm-up
        t = interleaved_seconds(variants, len(work), repeats, device)
        layer_x = model.num_layers / float(torch.cat(layers).float().mean())
        paired = [r / layer_x for r in ratios_per_repeat(t, "plain", "early")]  # wall / layer, repeat by repeat
        mid = statistics.median(paired)
        layer_ms, exit_ms = per_call_ms(model, head, work[0][0], work[0][1], 5 * repeats)
    med = {k: 1000 * statistics.median(v) for k, v in t.items()}
    return SpeedRow(batch_size=int(work[0][0].size(0)), plain_ms=med["plain"], early_ms=med["early"],
                    all_exits_ms=med["all"], layer_x=layer_x, wall_x=mid * layer_x,
                    wall_per_layer=(min(paired), mid, max(paired)),
                    heads_pct=100 * (statistics.median(ratios_per_repeat(t, "all", "plain")) - 1),
                    layer_ms=layer_ms, exit_ms=exit_ms)
