"""Per-sample FLOPs of an exit pass, from a formula over sequence length (issue 4/7's accounting).

FLOPs = 2 x multiply-adds of the matrix products (what ``torch.utils.flop_counter`` counts; a
test checks the formula against it). Element-wise work (softmax, LayerNorm, GELU, residuals) and
embedding lookups are not counted. Each sample is charged at its own length: what it costs run
alone; padding in a batch is extra work this number leaves out.

Multiply-adds (MACs) per sample, which the FLOPs double:

  transformer layer:  4 T d^2 (Q, K, V, output) + 2 T^2 d (scores, mixing) + 2 T d f (FFN)
  exit head, gate:    their ``macs(T)``, once per evaluation
"""
from typing import Tuple

from torch import Tensor


def layer_macs(length: Tensor, dim: int, ffn_dim: int) -> Tensor:
    """Multiply-adds (not FLOPs) of one transformer layer over ``length`` tokens, per sample:
    ``4 T d^2 + 2 T^2 d + 2 T d f``."""
    return 4 * length * dim * dim + 2 * length * length * dim + 2 * length * dim * ffn_dim


def unit_flops(model, head_name: str, lengths: Tensor) -> Tuple[Tensor, Tensor]:
    """FLOPs per sample of one transformer layer and of one evaluation of an exit: the units every
    count below is made of (a trace keeps them, so a replay needs no model to count FLOPs)."""
    args = model.args
    lengths = lengths.long()
    return (2 * layer_macs(lengths, args.encoder_embed_dim, args.encoder_ffn_embed_dim),
            2 * model.exit_heads[head_name].macs(lengths))


def sample_flops(model, head_name: str, lengths: Tensor, layers_run: Tensor, exits_run: Tensor,
                 gates_run: Tensor) -> Tensor:
    """FLOPs per sample of what actually ran: executed layers, evaluated exits and gates."""
    layer, exit_ = unit_flops(model, head_name, lengths.to(layers_run.device))
    flops = spent_flops(layer, exit_, layers_run, exits_run)
    if model.skip_gates is not None:
        flops = flops + gates_run * 2 * model.skip_gates.macs(lengths.to(layers_run.device).long())
    return flops


def full_model_flops(model, head_name: str, lengths: Tensor) -> Tensor:
    """The plain model's FLOPs per sample: every layer and the final classifier, no gates."""
    layer, exit_ = unit_flops(model, head_name, lengths)
    return plain_flops(layer, exit_, model.num_layers)


def spent_flops(layer: Tensor, exit_: Tensor, layers_run: Tensor, exits_run: Tensor) -> Tensor:
    """Per sample, from the units of :func:`unit_flops`: ``l_i f_layer + e_i f_exit`` for the
    ``l_i`` layers it ran and the ``e_i`` exits it evaluated (gates are the caller's)."""
    return layers_run * layer + exits_run * exit_


def plain_flops(layer: Tensor, exit_: Tensor, num_layers: int) -> Tensor:
    """Per sample, the plain model: ``L f_layer + f_exit`` (every layer, one classifier)."""
    return num_layers * layer + exit_
