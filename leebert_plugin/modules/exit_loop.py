"""The layer loop, in two passes: full depth (training: every sample, the exits it trains) and
early-exit inference, sharing the embedding, the output record and the batch compaction.

With no policy, every layer runs on the whole batch and every exit's logits are returned, which
is what the criteria train on. With a policy, the loop asks it after each exit which samples are
done; their logits are written to their slots in the output, and the remaining layers run on the
other samples only: the batch shrinks, and so does the padded length when the longest sentences
have left. Decisions are tensor operations on the batch, so they do not depend on batch size.

With SmartBERT's skip gates, each layer first asks its gate. In training the layer output is
mixed with its input, h' = (1 - g) layer(h) + g h, g soft or hard (straight-through). At inference
a sample whose gate says skip (g >= skip_threshold) keeps its state and gets no exit check at that
layer; the layer runs on the other samples only.
"""
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from leebert_plugin.exits.policies import ExitPolicy
from leebert_plugin.modules.skip_gate import straight_through

GATE_MODES = ("soft", "hard")


@dataclass
class ExitOutput:
    """What one pass of the loop produces.

    ``logits``: ``B x C``, the prediction each sample leaves with. ``exit_layer``: ``B``, the
    1-based layer whose exit produced it. ``layers_run``: ``B``, transformer layers computed for
    the sample; ``layers_skipped`` and ``gates_run`` count its skipped layers and evaluated gates.
    Without a policy (training, full depth) also, per exit: ``exit_logits`` and, if asked,
    ``exit_states`` (``T x B x C``, the exit's input); per layer with gates: ``gate_probs`` (soft,
    ``B``) and, if asked, ``layer_inputs``.
    """

    logits: Tensor
    exit_layer: Tensor
    layers_run: Tensor
    layers_skipped: Tensor
    gates_run: Tensor
    exits_run: Tensor
    skipped_per_layer: Optional[Tensor] = None  # ``L``: how many samples skipped each layer
    exit_logits: List[Optional[Tensor]] = field(default_factory=list)  # None: an exit the pass left out
    exit_states: List[Tensor] = field(default_factory=list)
    gate_probs: List[Tensor] = field(default_factory=list)
    layer_inputs: List[Tensor] = field(default_factory=list)
    # contrastive projections, computed inside the model's forward (DDP sees every parameter that
    # gets a gradient there): of every layer input, and of the trained exits' states (None: not asked)
    layer_projections: List[Tensor] = field(default_factory=list)
    exit_projections: List[Optional[Tensor]] = field(default_factory=list)
    padding_mask: Optional[Tensor] = None


def _mask_or_none(padding_mask: Tensor) -> Optional[Tensor]:
    return padding_mask if bool(padding_mask.any()) else None


def _mix(layer_out: Tensor, layer_in: Tensor, weight: Tensor) -> Tensor:
    """(1 - w) layer(h) + w h, with the per-sample weight broadcast over ``T x B x C``."""
    w = weight.view(1, -1, 1).to(layer_out.dtype)
    return (1 - w) * layer_out + w * layer_in


def _embed(encoder: nn.Module, src_tokens: Tensor):
    """Token embeddings (padding zeroed), ``T x B x C``, and the padding mask ``B x T``."""
    padding_mask = src_tokens.eq(encoder.padding_idx)
    x, _ = encoder.forward_embedding(src_tokens)
    return (x * (1 - padding_mask.unsqueeze(-1).type_as(x))).transpose(0, 1), padding_mask


def _normed(encoder: nn.Module, h: Tensor) -> Tensor:
    return encoder.layer_norm(h) if encoder.layer_norm is not None else h


def _new_output(x: Tensor, padding_mask: Tensor, num_layers: int) -> ExitOutput:
    bsz, device = padding_mask.size(0), padding_mask.device

    def counter(value: int) -> Tensor:
        return torch.full((bsz,), value, dtype=torch.long, device=device)

    return ExitOutput(logits=x.new_zeros(0), exit_layer=counter(num_layers), layers_run=counter(num_layers),
                      layers_skipped=counter(0), gates_run=counter(0), exits_run=counter(0), padding_mask=padding_mask,
                      skipped_per_layer=torch.zeros(num_layers, dtype=torch.long, device=device))


def full_depth_pass(
    encoder: nn.Module,
    heads: nn.Module,
    exit_layers: Sequence[int],
    src_tokens: Tensor,
    return_states: bool = False,
    gates: Optional[nn.Module] = None,
    gate_mode: str = "hard",
    skip_threshold: float = 0.5,
    exits_used: Optional[Sequence[int]] = None,
) -> ExitOutput:
    """Training and full-depth evaluation: every sample, every layer, the exits in ``exits_used``
    (1-based layers; None: all). ``encoder`` is a fairseq ``TransformerEncoder``; ``exit_layers``
    are 1-based and end with the last layer; ``heads(k, x, pad)`` gives the logits of the k-th
    exit, ``gates(i, x, pad)`` the skip probability before layer i (0-based).

    An exit outside ``exits_used`` is not evaluated and its ``exit_logits`` entry is None: under
    DDP every parameter reachable from the outputs must get a gradient, so an exit whose loss a
    training stage does not use (DeeBERT's and SmartBERT's stage 1) must not be computed at all.
    Gates mix ``(1 - g) layer(h) + g h``, ``g`` soft or straight-through hard (``gate_mode``).
    """
    num_layers = len(encoder.layers)
    exit_index = {layer: k for k, layer in enumerate(exit_layers)}
    used = set(exit_layers if exits_used is None else exits_used)
    x, padding_mask = _embed(encoder, src_tokens)
    out = _new_output(x, padding_mask, num_layers)
    pad_arg = _mask_or_none(padding_mask)
    for i in range(num_layers):  # index, not iterate: a LayerDropModuleList would drop layers
        u = encoder.layers[i](x, encoder_padding_mask=pad_arg)
        if gates is not None:
            g = gates(i, x, pad_arg)
            out.gate_probs.append(g)
            if return_states:
                out.layer_inputs.append(x)
            x = _mix(u, x, straight_through(g, skip_threshold) if gate_mode == "hard" else g)
        else:
            x = u
        k = exit_index.get(i + 1)
        if k is None:
            continue
        h = _normed(encoder, u if i + 1 < num_layers else x)  # exits read the layer's own output; the last, the final state
        out.exit_logits.append(heads(k, h, pad_arg) if i + 1 in used else None)
        if return_states:
            out.exit_states.append(h)
    out.exits_run.fill_(len(used))
    if gates is not None:
        out.gates_run.fill_(num_layers)
        skipped = torch.stack([p.detach() >= skip_threshold for p in out.gate_probs])  # L x B
        out.layers_skipped, out.skipped_per_layer = skipped.sum(0), skipped.sum(1)
        out.layers_run = num_layers - out.layers_skipped
    out.logits = out.exit_logits[-1] if out.exit_logits[-1] is not None else x.new_zeros(0)
    return out


def _compact(keep: Tensor, active: Tensor, x: Tensor, pad: Tensor, state: dict):
    """The samples still running (``keep``), with the trailing columns only padding fills dropped
    (right padding, as fairseq batches): the batch shrinks, and so does its padded length."""
    active, x, pad = active[keep], x[:, keep], pad[keep]
    state = {name: value[keep] for name, value in state.items()}
    length = int((~pad).any(0).nonzero()[-1]) + 1
    return active, x[:length], pad[:, :length], state


def early_exit_pass(
    encoder: nn.Module,
    heads: nn.Module,
    exit_layers: Sequence[int],
    src_tokens: Tensor,
    policy: ExitPolicy,
    gates: Optional[nn.Module] = None,
    skip_threshold: float = 0.5,
) -> ExitOutput:
    """Inference: after each exit the policy marks the confident samples done; their logits go to
    their slots and the remaining layers run on the other samples only. A sample whose gate says
    skip keeps its state and gets no exit check at that layer."""
    num_layers = len(encoder.layers)
    exit_index = {layer: k for k, layer in enumerate(exit_layers)}
    x, padding_mask = _embed(encoder, src_tokens)
    bsz = src_tokens.size(0)
    out = _new_output(x, padding_mask, num_layers)
    active = torch.arange(bsz, device=src_tokens.device)  # original slot of every sample still running
    state = policy.init_state(bsz, src_tokens.device)
    pad = padding_mask
    pad_arg = _mask_or_none(pad)
    out.layers_run.zero_()
    for i in range(num_layers):
        layer_no = i + 1
        ran = None  # indices of the active samples that run this layer; None: all of them
        if gates is not None:
            run = gates(i, x, pad_arg) < skip_threshold
            out.gates_run[active] += 1
            out.layers_skipped[active[~run]] += 1
            out.skipped_per_layer[i] = (~run).sum()
            if not bool(run.all()):
                ran = run.nonzero().squeeze(1)
        if ran is None:
            x = encoder.layers[i](x, encoder_padding_mask=pad_arg)
            out.layers_run[active] += 1
        elif ran.numel():
            x = x.index_copy(1, ran, encoder.layers[i](x[:, ran], encoder_padding_mask=_mask_or_none(pad[ran])))
            out.layers_run[active[ran]] += 1
        k = exit_index.get(layer_no)
        if k is None:
            continue
        if layer_no == num_layers:  # everyone left leaves here, skipped or not
            logits = heads(k, _normed(encoder, x), pad_arg)
            done = torch.ones_like(active, dtype=torch.bool)
            out.exits_run[active] += 1
        elif ran is None:
            logits = heads(k, _normed(encoder, x), pad_arg)
            out.exits_run[active] += 1
            done, state = policy.step(logits, state)
        elif ran.numel():  # only the samples that ran this layer get an exit check
            sub_logits = heads(k, _normed(encoder, x[:, ran]), _mask_or_none(pad[ran]))
            out.exits_run[active[ran]] += 1
            sub_done, sub_state = policy.step(sub_logits, {n: v[ran] for n, v in state.items()})
            state = {n: v.index_copy(0, ran, sub_state[n]) for n, v in state.items()}
            logits = sub_logits.new_zeros(active.numel(), sub_logits.size(-1)).index_copy(0, ran, sub_logits)
            done = torch.zeros_like(active, dtype=torch.bool).index_copy(0, ran, sub_done)
        else:
            continue
        if not out.logits.numel():
            out.logits = logits.new_zeros(bsz, logits.size(-1))
        if bool(done.any()):
            slots = active[done]
            out.logits[slots] = logits[done]
            out.exit_layer[slots] = layer_no
            keep = ~done
            if not bool(keep.any()):
                break
            active, x, pad, state = _compact(keep, active, x, pad, state)
            pad_arg = _mask_or_none(pad)
    return out
