"""Is the batched early exit really faster? Wall-clock against the plain full-depth forward
(``scripts/bench_speed.py`` is the command line).

A *plan* is the work of one measurement: batches of tokens, each with the policy that decides its
exits (:func:`synthetic_setup`: a random model with imposed exits; :func:`checkpoint_setup`: a
trained model on a real split under its own policy). Per batch size, :func:`measure` times the
variants of the same plan in one process:

* plain: fairseq's RoBERTa encoder at full depth, then the last exit's classifier
  (:func:`leebert_plugin.exits.evaluate.plain_forward`);
* early exit: the plugin's loop under the plan's policies;
* all exits: the plugin's loop at full depth with every exit evaluated (to price the heads);
* bound (models without skip gates): :func:`layers_only`, the same samples through the same layers
  with one exit head each and nothing else, its schedule worked out in advance: what no loop can
  beat, since fewer layers or heads would change the answers.

They take turns batch by batch (:func:`leebert_plugin.runtime.devices.interleaved_seconds`), so a slow
spell of the machine falls on all alike. The figures (:class:`SpeedRow`): the layer speed-up
``L / mean executed layers``; the wall-clock speed-up, ``layer x`` times the median over repeats of
``(plain / early) / layer x`` (each repeat's ratio is taken within the repeat, so its range over the
repeats is the measurement's noise); the exit heads' share of a plain forward; on the first batch
the median cost of one transformer layer and of one exit check (:func:`per_call_ms`); and the
bound's own ``wall / layer`` with what the loop adds to it. The bound is below 1 wherever a share
of the forward does not shrink with the layers (the embedding, a batch's fixed costs) or a smaller
batch runs its layers less efficiently: a target for ``wall / layer`` above the bound cannot be met
by any loop on that machine.
"""
import math
import statistics
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from leebert_plugin.data.synthetic import random_token_batch, word_dictionary
from leebert_plugin.runtime.devices import interleaved_seconds, ratios_per_repeat, seconds
from leebert_plugin.exits.evaluate import batches, load, plain_forward
from leebert_plugin.exits.policies import AssignedExit, ExitPolicy, build_policy
from leebert_plugin.errors import UsageError
from leebert_plugin.models.exit_roberta import ExitRobertaModel, random_exit_model
from leebert_plugin.modules.exit_loop import embed, normed, token_span

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


Setup = Tuple[ExitRobertaModel, str, Callable[[int], Plan], str]  # model, head, plan(bsz), what was measured


def synthetic_setup(layers: int, dim: int, ffn: int, heads: int, exit_head: str, samples: int, min_len: int,
                    max_len: int, exit_probs: Sequence[float], device: torch.device) -> Setup:
    """A random-weight model, random sentences and assigned exits (:func:`assigned_plan`), on ``device``."""
    model = random_model(layers, dim, ffn, heads, exit_head).to(device)
    plan = assigned_plan(model, samples, min_len, max_len, exit_probs, device)
    about = (f"random weights: {layers} layers, dim {dim}, ffn {ffn}, {exit_head} exits; "
             f"{samples} sentences of {min_len}-{max_len} tokens, assigned exits")
    return model, HEAD, plan, about


def checkpoint_setup(checkpoint: str, data: str, subset: str, samples: int, policy_name: str,
                     threshold: Optional[float], patience: int, device: torch.device) -> Setup:
    """A trained checkpoint, a real split's first batches in fairseq's order (whole batches, as many
    as cover ``samples`` sentences), and the model's own exit policy, on ``device``."""
    model, task = load(checkpoint, data, device)
    head = task.cfg.classification_head_name
    policy = build_policy(policy_name, model.exit_heads[head].num_classes, threshold, patience)

    def plan(bsz: int) -> Plan:
        split = batches(task, subset, bsz)[: math.ceil(samples / bsz)]
        return [(s["net_input"]["src_tokens"].to(device), policy) for s in split]

    task.load_dataset(subset)
    n = min(samples, len(task.dataset(subset)))
    about = (f"{checkpoint} ({model.num_layers} layers), {subset} of {data}, whole batches covering its first {n} "
             f"sentences; policy {policy_name} threshold {threshold} patience {patience}")
    if model.skip_gates is not None:
        about += "; skip gates: 'all exits' skips layers too, so 'heads %' is not the heads' cost alone"
    return model, head, plan, about


@dataclass
class _Stage:
    """One layer of :func:`layers_only`: ``keep`` (rows of the previous layer's batch that run this
    one; None: all, no trimming), ``length`` (their padded length), ``pad`` (their padding mask,
    None where they have none), ``leave`` (rows of this layer's batch that leave after it, with
    ``leave_pad`` and ``exit_k``, their exit among the model's; None: nobody leaves) and ``slots``
    (the leaving rows' indices in the batch)."""

    keep: Optional[Tensor]
    length: int
    pad: Optional[Tensor]
    leave: Optional[Tensor] = None
    leave_pad: Optional[Tensor] = None
    exit_k: int = -1
    slots: Optional[Tensor] = None


def bound_schedule(model: ExitRobertaModel, tokens: Tensor, exit_layer: Tensor) -> List[_Stage]:
    """What the layers must do for samples that leave at ``exit_layer`` (1-based, per sample, as an
    early-exit pass reported): per layer, the rows still running (trimmed to their longest, like the
    loop, when some have left) and those that leave after it. Worked out in advance, host syncs
    and all, so that :func:`layers_only` pays for none of it."""
    encoder = model.encoder.sentence_encoder
    pad = tokens.eq(encoder.padding_idx)
    lengths = token_span(pad)[0]  # one past each row's last real token (any padding, as the loop trims)
    exit_index = {layer: k for k, layer in enumerate(model.exit_layers)}
    stages: List[_Stage] = []
    previous = torch.arange(tokens.size(0), device=tokens.device)
    length = tokens.size(1)
    for i in range(model.num_layers):
        rows = (exit_layer > i).nonzero().squeeze(1)  # batch indices that run layer i
        if rows.numel() == 0:
            break
        keep = None
        if rows.numel() < previous.numel():
            keep = torch.searchsorted(previous, rows)  # their places in the previous layer's batch
            length = int(lengths.index_select(0, rows).max())
        row_pad = pad.index_select(0, rows)[:, :length]
        stage = _Stage(keep=keep, length=length, pad=row_pad if bool(row_pad.any()) else None)
        leaving = (exit_layer.index_select(0, rows) == i + 1).nonzero().squeeze(1)
        if leaving.numel():
            stage.leave, stage.exit_k, stage.slots = leaving, exit_index[i + 1], rows.index_select(0, leaving)
            stage.leave_pad = None if stage.pad is None else stage.pad.index_select(0, leaving)
        stages.append(stage)
        previous = rows
    return stages


def layers_only(model: ExitRobertaModel, head: str, tokens: Tensor, stages: Sequence[_Stage]) -> Tensor:
    """The lower bound of an early-exit pass over ``tokens``: the embedding, each layer on exactly
    the rows :func:`bound_schedule` says run it, and one exit head per sample, at the exit it leaves
    by; no policy, no other exit checks, no decisions. Returns the logits (``B x C``, batch order),
    which equal the early-exit pass's: the same computation, without the loop's own costs."""
    encoder, heads = model.encoder.sentence_encoder, model.exit_heads[head]
    x, _ = embed(encoder, tokens)
    out: Optional[Tensor] = None
    for i, st in enumerate(stages):
        if st.keep is not None:
            x = x[: st.length].index_select(1, st.keep)
        x = encoder.layers[i](x, encoder_padding_mask=st.pad)
        if st.leave is not None:
            logits = heads(st.exit_k, normed(encoder, x.index_select(1, st.leave)), st.leave_pad)
            if out is None:
                out = logits.new_zeros(tokens.size(0), logits.size(-1))
            out.index_copy_(0, st.slots, logits)
    return out


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
    # layers_only (no gates): median over repeats of (plain / layers_only) / layer_x, the best any
    # loop could reach on these batches, and of early / layers_only - 1 (%), what the loop adds
    bound_per_layer: Optional[float] = None
    loop_pct: Optional[float] = None

    HEADER = (f"{'batch':>5} {'plain ms':>9} {'early ms':>9} {'all-exits ms':>12} {'layer x':>8} {'wall x':>7} "
              f"{'wall/layer':>10} {'(range)':>11} {'heads %':>8} {'1 layer ms':>10} {'1 exit ms':>9} "
              f"{'bound/layer':>11} {'loop %':>7}")

    def line(self) -> str:
        low, mid, high = self.wall_per_layer
        bound = "-" if self.bound_per_layer is None else f"{self.bound_per_layer:.2f}"
        loop = "-" if self.loop_pct is None else f"{self.loop_pct:.1f}"
        return (f"{self.batch_size:5d} {self.plain_ms:9.1f} {self.early_ms:9.1f} {self.all_exits_ms:12.1f} "
                f"{self.layer_x:8.2f} {self.wall_x:7.2f} {mid:10.2f} {low:5.2f}-{high:<5.2f} {self.heads_pct:8.1f} "
                f"{self.layer_ms:10.3f} {self.exit_ms:9.3f} {bound:>11} {loop:>7}")


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
    """:class:`SpeedRow` of ``work`` (one plan at one batch size). One untimed early-exit pass gives
    each sample's exit (and, without gates, :func:`bound_schedule`) and is the early-exit pass's
    warm-up; then one warm-up repeat of the other variants and ``repeats`` timed ones of every
    variant, interleaved."""
    never = build_policy("none", model.exit_heads[head].num_classes)
    gated = model.skip_gates is not None

    def early_pass(j: int):
        tokens, policy = work[j]
        return model(tokens, classification_head_name=head, exit_policy=policy)[1]["exits"]

    def plain(j: int):
        plain_forward(model, head, work[j][0])

    def early(j: int):
        early_pass(j)

    def all_exits(j: int):
        model(work[j][0], classification_head_name=head, exit_policy=never)

    with torch.no_grad():
        passes = [early_pass(j) for j in range(len(work))]
        layer_x = model.num_layers / float(torch.cat([p.layers_run for p in passes]).float().mean())
        variants = {"plain": plain, "early": early, "all": all_exits}
        if not gated:
            stages = [bound_schedule(model, t, p.exit_layer) for (t, _), p in zip(work, passes)]
            variants["bound"] = lambda j: layers_only(model, head, work[j][0], stages[j])
        interleaved_seconds({k: f for k, f in variants.items() if k != "early"}, len(work), 1, device)  # warm-up
        t = interleaved_seconds(variants, len(work), repeats, device)
        paired = [r / layer_x for r in ratios_per_repeat(t, "plain", "early")]  # wall / layer, repeat by repeat
        mid = statistics.median(paired)
        layer_ms, exit_ms = per_call_ms(model, head, work[0][0], work[0][1], 5 * repeats)
    med = {k: 1000 * statistics.median(v) for k, v in t.items()}
    row = SpeedRow(batch_size=int(work[0][0].size(0)), plain_ms=med["plain"], early_ms=med["early"],
                   all_exits_ms=med["all"], layer_x=layer_x, wall_x=mid * layer_x,
                   wall_per_layer=(min(paired), mid, max(paired)),
                   heads_pct=100 * (statistics.median(ratios_per_repeat(t, "all", "plain")) - 1),
                   layer_ms=layer_ms, exit_ms=exit_ms)
    if not gated:
        row.bound_per_layer = statistics.median(ratios_per_repeat(t, "plain", "bound")) / layer_x
        row.loop_pct = 100 * (statistics.median(ratios_per_repeat(t, "early", "bound")) - 1)
    return row
