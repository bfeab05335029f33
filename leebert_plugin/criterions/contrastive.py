"""Token-level InfoNCE between two layers' token states (SmartBERT's cross-layer contrastive loss)."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def token_info_nce(a: Tensor, b: Tensor, padding_mask: Optional[Tensor], temperature: float,
                   include_positive: bool = True) -> Tensor:
    """Sum over sentences of the mean over its tokens of -log softmax(sim)[t, t].

    ``a``, ``b``: ``T x B x D`` token states of two layers; token t of ``a`` must find token t of
    ``b`` (cosine similarity / temperature) among all tokens of ``b`` in the same sentence.
    ``include_positive``: the positive is in the denominator (stage 1 of the authors' code) or
    not (their stage 2). ``padding_mask`` (``B x T``, True at padding): padded tokens are neither
    queries nor keys; None counts every position, as the authors' code does.
    """
    a = F.normalize(a.float(), dim=-1).transpose(0, 1)  # B T D
    b = F.normalize(b.float(), dim=-1).transpose(0, 1)
    scores = torch.bmm(a, b.transpose(1, 2)) / temperature  # B T T
    T = scores.size(-1)
    eye = torch.eye(T, dtype=torch.bool, device=scores.device)
    positive = scores.diagonal(dim1=1, dim2=2)
    others = scores
    if padding_mask is not None:
        others = others.masked_fill(padding_mask.unsqueeze(1), float("-inf"))
    if not include_positive:
        others = others.masked_fill(eye, float("-inf"))
    loss = torch.logsumexp(others, dim=-1) - positive  # B T
    if padding_mask is None:
        return loss.mean(-1).sum()
    valid = (~padding_mask).float()
    return ((loss.masked_fill(padding_mask, 0.0) * valid).sum(-1) / valid.sum(-1).clamp(min=1)).sum()
