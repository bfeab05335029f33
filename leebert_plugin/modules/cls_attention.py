"""The small attention that SmartBERT's exits and gates (and FastBERT's students) put on a layer.

``x -> z = tanh(W0 x)`` token-wise into a narrow space, then multi-head scaled dot-product
attention in which only the first token ([CLS]) queries: the heads use nothing but that row, so
the other T-1 query rows are never computed. Q, K, V projections, dropout on the attention
probabilities, no output projection, no residual, no LayerNorm (methods.md §3.2).
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor


class ClsAttention(nn.Module):
    def __init__(self, input_dim: int, dim: int = 128, heads: int = 2, dropout: float = 0.1):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.narrow = nn.Linear(input_dim, dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def macs(self, length: Tensor) -> Tensor:
        """Multiply-adds for sequences of ``length`` tokens: narrowing, Q of [CLS], K and V, scores, mix."""
        d, n = self.q.in_features, self.narrow.in_features
        return length * n * d + d * d + 2 * length * d * d + 2 * length * d

    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """x: ``T x B x C``; returns (the [CLS] output ``B x dim``, the narrowed tokens ``T x B x dim``)."""
        z = torch.tanh(self.narrow(x))
        T, B, D = z.shape
        h, d = self.heads, D // self.heads
        q = self.q(z[0]).view(B, h, 1, d)
        k = self.k(z).view(T, B, h, d).permute(1, 2, 3, 0)  # B h d T
        v = self.v(z).view(T, B, h, d).permute(1, 2, 0, 3)  # B h T d
        scores = torch.matmul(q, k) / math.sqrt(d)  # B h 1 T
        if padding_mask is not None:
            scores = scores.masked_fill(padding_mask.view(B, 1, 1, T), float("-inf"))
        probs = self.dropout(torch.softmax(scores.float(), dim=-1).type_as(scores))
        return torch.matmul(probs, v).reshape(B, D), z
