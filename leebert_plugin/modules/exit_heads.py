"""Exit classifiers, one per exit layer, selectable by ``--exit-head``.

* ``pabee``: one pooler (dense + tanh on the first token) shared by all exits, then dropout and a
  linear layer per exit (PABEE's code; the reading ``methods.md`` §2.3 recommends for LeeBERT).
* ``deebert``: every exit has its own pooler, then its own linear layer (DeeBERT's highways).

Every head maps the hidden states ``T x B x C`` of one exit layer to logits ``B x num_classes``.
"""
from typing import Callable, Dict, Optional

import torch.nn as nn
from fairseq import utils
from torch import Tensor

EXIT_HEAD_REGISTRY: Dict[str, Callable[..., nn.Module]] = {}


def register_exit_head(name: str):
    def wrap(cls):
        EXIT_HEAD_REGISTRY[name] = cls
        return cls

    return wrap


class PoolerExits(nn.Module):
    """dropout -> dense -> activation -> dropout -> linear, on the first token, for each exit."""

    def __init__(
        self,
        num_exits: int,
        input_dim: int,
        inner_dim: int,
        num_classes: int,
        activation_fn: str = "tanh",
        pooler_dropout: float = 0.0,
        shared_pooler: bool = True,
    ):
        super().__init__()
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

    def forward(self, k: int, x: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
        """Logits of exit ``k`` (0-based among the exits) from hidden states ``T x B x C``."""
        h = self.dropout(x[0])
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
