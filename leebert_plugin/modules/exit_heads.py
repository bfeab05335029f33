"""Exit classifiers, one per exit layer, selectable by ``--exit-head``.

* ``pabee``: one pooler (dense + tanh on the first token) shared by all exits, then dropout and a
  linear layer per exit (PABEE's code; the reading ``methods.md`` §2.3 recommends for LeeBERT).
* ``deebert``: every exit has its own pooler, then its own linear layer (DeeBERT's highways).
* ``smartbert``: SmartBERT's (and FastBERT's) small head: tanh into 128 dims, 4-head attention
  queried by [CLS], tanh, linear (methods.md §3.2); each exit also owns the projector its
  stage-2 contrastive loss uses. Its attention dropout is the model's ``attention_dropout``.

Every head maps the hidden states ``T x B x C`` of one exit layer to logits ``B x num_classes``.
"""
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
from fairseq import utils
from torch import Tensor

from leebert_plugin.errors import UsageError
from leebert_plugin.modules.cls_attention import ClsAttention

EXIT_HEAD_REGISTRY: Dict[str, Callable[..., nn.Module]] = {}


def register_exit_head(name: str):
    def wrap(cls):
        EXIT_HEAD_REGISTRY[name] = cls
        return cls

    return wrap


POOLINGS = ("cls", "mean")


def mean_pool(x: Tensor, padding_mask: Optional[Tensor]) -> Tensor:
    """Mean of the hidden states ``T x B x C`` over each sample's real (non-pad) tokens."""
    if padding_mask is None:
        return x.mean(0)
    keep = (~padding_mask).t().unsqueeze(-1).type_as(x)  # T x B x 1
    return (x * keep).sum(0) / keep.sum(0).clamp(min=1)


class PoolerExits(nn.Module):
    """dropout -> dense -> activation -> dropout -> linear, on the first token (or the mean of the
    tokens, ``pooling="mean"``), for each exit."""

    def __init__(
        self,
        num_exits: int,
        input_dim: int,
        inner_dim: int,
        num_classes: int,
        activation_fn: str = "tanh",
        pooler_dropout: float = 0.0,
        shared_pooler: bool = True,
        pooling: str = "cls",
        attention_dropout: float = 0.0,  # every head takes it; these have no attention
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise UsageError(f"unknown exit pooling {pooling!r}", f"use one of {', '.join(POOLINGS)} (--exit-pooling)")
        self.pooling = pooling
        self.shared_pooler = shared_pooler
        self.activation_fn = utils.get_activation_fn(activation_fn)
        self.dropout = nn.Dropout(p=pooler_dropout)
        self.dense = nn.ModuleList(
            nn.Linear(input_dim, inner_dim) for _ in range(1 if shared_pooler else num_exits)
        )
        self.out_proj = nn.ModuleList(nn.Linear(inner_dim, num_classes) for _ in range(num_exits))

    @property
    def num_classes(self) -> int:
        return self.out_proj[0].out_features

    def macs(self, length: Tensor) -> Tensor:
        """Multiply-adds of one exit evaluation (pooler, then the linear layer; mean pooling's
        additions are not multiply-adds and are left out, as a FLOP counter leaves them out)."""
        dense, out = self.dense[0], self.out_proj[0]
        return torch.zeros_like(length) + dense.in_features * dense.out_features + out.in_features * out.out_features

    def exit_parameters(self, k: int):
        """Parameters that belong to exit k alone (a shared pooler belongs to none)."""
        yield from self.out_proj[k].parameters()
        if not self.shared_pooler:
            yield from self.dense[k].parameters()

    def forward(self, k: int, x: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
        """Logits of exit ``k`` (0-based among the exits) from hidden states ``T x B x C``."""
        h = self.dropout(x[0] if self.pooling == "cls" else mean_pool(x, padding_mask))
        h = self.activation_fn(self.dense[0 if self.shared_pooler else k](h))
        return self.out_proj[k](self.dropout(h))


@register_exit_head("pabee")
class PabeeExits(PoolerExits):
    def __init__(self, **kwargs):
        super().__init__(shared_pooler=True, **kwargs)


@register_exit_head("deebert")
class DeebertExits(PoolerExits):
    def __init__(self, **kwargs):
        super().__init__(shared_pooler=False, **kwargs)


class SmartBertExit(nn.Module):
    def __init__(self, input_dim: int, num_classes: int, dim: int = 128, heads: int = 4, dropout: float = 0.1):
        super().__init__()
        self.attention = ClsAttention(input_dim, dim, heads, dropout)
        self.hidden = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, num_classes)
        # token-wise projector of the narrowed states, for stage 2's contrastive loss
        self.projector = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim), nn.Tanh(), nn.Linear(dim, dim))

    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
        cls, _ = self.attention(x, padding_mask)
        return self.out_proj(torch.tanh(self.hidden(cls)))


@register_exit_head("smartbert")
class SmartBertExits(nn.Module):
    def __init__(self, num_exits: int, input_dim: int, inner_dim: int, num_classes: int,
                 activation_fn: str = "tanh", pooler_dropout: float = 0.0, dim: int = 128, heads: int = 4,
                 attention_dropout: float = 0.1, pooling: str = "cls"):
        super().__init__()
        if pooling != "cls":
            raise UsageError(f"exit pooling {pooling!r} does not apply to the smartbert head, which attends from [CLS]",
                             "use --exit-pooling cls with --exit-head smartbert, or a pabee/deebert head")
        self.exits = nn.ModuleList(
            SmartBertExit(input_dim, num_classes, dim, heads, attention_dropout) for _ in range(num_exits)
        )

    @property
    def num_classes(self) -> int:
        return self.exits[0].out_proj.out_features

    def macs(self, length: Tensor) -> Tensor:
        """Multiply-adds of one exit evaluation (the projector is for training only)."""
        e = self.exits[0]
        return e.attention.macs(length) + e.hidden.in_features * e.hidden.out_features + \
            e.out_proj.in_features * e.out_proj.out_features

    def exit_parameters(self, k: int):
        yield from self.exits[k].parameters()

    def forward(self, k: int, x: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
        return self.exits[k](x, padding_mask)

    def projections(self, k: int, x: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
        """Exit k's contrastive projection of every token, ``T x B x dim``."""
        _, z = self.exits[k].attention(x, padding_mask)
        return self.exits[k].projector(z)
