"""What BERT adds to fairseq's RoBERTa encoder: segment (token-type) embeddings and its LayerNorm eps.

BERT's input embedding is LN(token + position + segment) (Devlin et al. 2019, sec. 3, fig. 2).
fairseq's encoder computes LN(token + ``embed_positions(src_tokens)``), so the segment embedding,
a function of the tokens like the positions, rides along inside ``embed_positions``.
"""
import torch.nn as nn
from torch import Tensor


def segment_ids(src_tokens: Tensor, eos: int) -> Tensor:
    """Token types of ``<s> A </s> B </s>``: 0 up to and including the first ``</s>``, 1 after it."""
    is_eos = src_tokens.eq(eos).long()
    return (is_eos.cumsum(1) - is_eos).gt(0).long()


class PositionsAndSegments(nn.Module):
    """fairseq's learned positions plus BERT's segment embedding, both looked up from the tokens."""

    def __init__(self, positions: nn.Module, num_segments: int, embed_dim: int, eos: int):
        super().__init__()
        self.positions = positions
        self.segments = nn.Embedding(num_segments, embed_dim)
        nn.init.normal_(self.segments.weight, std=0.02)
        self.eos = eos
        self.max_positions = positions.max_positions  # read by TransformerEncoder.max_positions()

    def forward(self, src_tokens: Tensor, incremental_state=None, positions=None) -> Tensor:
        return self.positions(src_tokens, incremental_state, positions) + self.segments(segment_ids(src_tokens, self.eos))


def set_layer_norm_eps(module: nn.Module, eps: float) -> None:
    """Give every LayerNorm under ``module`` the epsilon of the checkpoint (BERT: 1e-12)."""
    for m in module.modules():
        if isinstance(m, nn.LayerNorm):
            m.eps = eps
