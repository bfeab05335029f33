"""The one layer loop: training (every exit on every sample) and early-exit inference.

With no policy, every layer runs on the whole batch and every exit's logits are returned, which
is what the criteria train on. With a policy, the loop asks it after each exit which samples are
done; their logits are written to their slots in the output, and the remaining layers run on the
other samples only: the batch shrinks, and so does the padded length when the longest sentences
have left. Decisions are tensor operations on the batch, so they do not depend on batch size.
"""
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from leebert_plugin.exits.policies import ExitPolicy


@dataclass
class ExitOutput:
    """What one pass of the loop produces.

    ``logits``: ``B x C``, the prediction each sample leaves with. ``exit_layer``: ``B``, the
    1-based layer whose exit produced it. ``layers_run``: ``B``, transformer layers computed for
    the sample. ``exit_logits`` / ``exit_states``: per exit, full batch; filled only without a policy.
    """

    logits: Tensor
    exit_layer: Tensor
    layers_run: Tensor
    exit_logits: List[Tensor] = field(default_factory=list)
    exit_states: List[Tensor] = field(default_factory=list)
    padding_mask: Optional[Tensor] = None


def _mask_or_none(padding_mask: Tensor) -> Optional[Tensor]:
    return padding_mask if bool(padding_mask.any()) else None


def run_exit_loop(
    encoder: nn.Module,
    heads: nn.Module,
    exit_layers: Sequence[int],
    src_tokens: Tensor,
    policy: Optional[ExitPolicy] = None,
    return_states: bool = False,
) -> ExitOutput:
    """Run ``encoder`` (a fairseq ``TransformerEncoder``) layer by layer with exits.

    ``exit_layers`` are 1-based and must end with the last layer; ``heads(k, x, pad)`` gives the
    logits of the k-th exit. ``return_states`` keeps each exit's ``T x B x C`` input (for losses
    on hidden states); it needs ``policy=None``.
    """
    num_layers = len(encoder.layers)
    exit_index = {layer: k for k, layer in enumerate(exit_layers)}
    padding_mask = src_tokens.eq(encoder.padding_idx)
    x, _ = encoder.forward_embedding(src_tokens)
    x = (x * (1 - padding_mask.unsqueeze(-1).type_as(x))).transpose(0, 1)
    bsz = src_tokens.size(0)
    device = src_tokens.device

    out = ExitOutput(
        logits=x.new_zeros(0),
        exit_layer=torch.full((bsz,), num_layers, dtype=torch.long, device=device),
        layers_run=torch.full((bsz,), num_layers, dtype=torch.long, device=device),
        padding_mask=padding_mask,
    )
    active = torch.arange(bsz, device=device)  # original slot of every sample still running
    state = policy.init_state(bsz, device) if policy is not None else {}
    pad = padding_mask
    pad_arg = _mask_or_none(pad)

    for layer_no in range(1, num_layers + 1):
        # index, not iterate: a LayerDropModuleList would silently drop layers when iterated
        x = encoder.layers[layer_no - 1](x, encoder_padding_mask=pad_arg)
        k = exit_index.get(layer_no)
        if k is None:
            continue
        h = encoder.layer_norm(x) if encoder.layer_norm is not None else x
        logits = heads(k, h, pad_arg)
        if policy is None:
            out.exit_logits.append(logits)
            if return_states:
                out.exit_states.append(h)
            continue
        if layer_no == num_layers:
            done = torch.ones_like(active, dtype=torch.bool)
        else:
            done, state = policy.step(logits, state)
        if not out.logits.numel():
            out.logits = logits.new_zeros(bsz, logits.size(-1))
        if bool(done.any()):
            slots = active[done]
            out.logits[slots] = logits[done]
            out.exit_layer[slots] = layer_no
            out.layers_run[slots] = layer_no
            keep = ~done
            if not bool(keep.any()):
                break
            active, x, pad = active[keep], x[:, keep], pad[keep]
            state = {name: value[keep] for name, value in state.items()}
            # drop trailing columns that only padding fills (right padding, as fairseq batches)
            length = int((~pad).any(0).nonzero()[-1]) + 1
            x, pad = x[:length], pad[:, :length]
            pad_arg = _mask_or_none(pad)

    if policy is None:
        out.logits = out.exit_logits[-1]
    return out
