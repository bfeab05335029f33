"""SmartBERT's skip gate and the straight-through hard weight (Hu et al., IJCAI 2023; methods.md §3.2-3.3).

A gate reads the *input* of its layer and gives, per sample, the probability of skipping the layer:
g = sigmoid(w . ClsAttention(h)), 128 wide, 2 heads. Training mixes h' = (1 - g) layer(h) + g h; with
hard weights the forward pass uses 1[g >= tau_s] while the gradient flows through the soft g.
"""
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from leebert_plugin.modules.cls_attention import ClsAttention


def straight_through(g: Tensor, threshold: float) -> Tensor:
    """Forward: 1[g >= threshold] (0 or 1); backward: the identity, i.e. the gradient of the soft g."""
    return g + ((g >= threshold).to(g.dtype) - g).detach()


class SkipGate(nn.Module):
    def __init__(self, input_dim: int, dim: int = 128, heads: int = 2, dropout: float = 0.1,
                 init_bias: Optional[float] = None):
        super().__init__()
        self.attention = ClsAttention(input_dim, dim, heads, dropout)
        self.out = nn.Linear(dim, 1)
        if init_bias is not None:  # None: torch's default init, as the authors' code
            nn.init.constant_(self.out.bias, init_bias)

    def macs(self, length: Tensor) -> Tensor:
        return self.attention.macs(length) + self.out.in_features

    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
        """x: the layer's input ``T x B x C``; returns the skip probability per sample, ``B``."""
        cls, _ = self.attention(x, padding_mask)
        return torch.sigmoid(self.out(cls)).squeeze(-1)


class SkipGates(nn.Module):
    """One gate per layer."""

    def __init__(self, num_layers: int, input_dim: int, dim: int = 128, heads: int = 2, dropout: float = 0.1,
                 init_bias: Optional[float] = None):
        super().__init__()
        self.gates = nn.ModuleList(SkipGate(input_dim, dim, heads, dropout, init_bias) for _ in range(num_layers))

    def macs(self, length: Tensor) -> Tensor:
        """Multiply-adds of one gate evaluation (all gates are alike)."""
        return self.gates[0].macs(length)

    def forward(self, layer_index: int, x: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
        return self.gates[layer_index](x, padding_mask)


class LayerProjectors(nn.Module):
    """SmartBERT's stage-1 contrastive projectors, one per layer input h_0..h_{L-1}:
    Linear(C, 128) -> LayerNorm -> tanh -> Linear(128, 128), token-wise."""

    def __init__(self, num_layers: int, input_dim: int, dim: int = 128):
        super().__init__()
        self.projectors = nn.ModuleList(
            nn.Sequential(nn.Linear(input_dim, dim), nn.LayerNorm(dim), nn.Tanh(), nn.Linear(dim, dim))
            for _ in range(num_layers)
        )

    def forward(self, layer_index: int, x: Tensor) -> Tensor:
        return self.projectors[layer_index](x)
