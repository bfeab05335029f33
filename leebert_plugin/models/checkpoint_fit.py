"""Check that a state dict fits a model before torch's strict load turns a mismatch into a traceback."""
from typing import Dict, List

import torch.nn as nn
from torch import Tensor

from leebert_plugin.errors import UsageError


def _examples(keys: List[str], most: int = 2) -> str:
    shown = ", ".join(keys[:most])
    return shown + (f" (+{len(keys) - most} more)" if len(keys) > most else "")


RESTORE_FIX = ("restore it into the architecture it was trained with (same arch, layer count, sizes, "
               "dictionary, exit layers and exit head), or drop checkpoint.restore_file")


def check_state_dict_fits(model: nn.Module, state_dict: Dict[str, Tensor], prefix: str, what: str,
                          fix: str = RESTORE_FIX) -> None:
    """Raise one :class:`UsageError` listing shape mismatches, missing and unexpected tensors."""
    own = {prefix + k: v for k, v in model.state_dict().items()}
    theirs = {k: v for k, v in state_dict.items() if k.startswith(prefix)}
    shape = [
        f"{k} is {list(theirs[k].shape)} in the checkpoint but {list(v.shape)} here"
        for k, v in own.items()
        if k in theirs and hasattr(theirs[k], "shape") and theirs[k].shape != v.shape
    ]
    missing = sorted(k for k in own if k not in theirs)
    unexpected = sorted(k for k in theirs if k not in own)
    if not (shape or missing or unexpected):
        return
    parts = []
    if shape:
        parts.append(f"{len(shape)} tensors differ in shape ({_examples(shape, 1)})")
    if missing:
        parts.append(f"{len(missing)} tensors are missing ({_examples(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensors are not in this model ({_examples(unexpected)})")
    raise UsageError(f"the checkpoint does not fit {what}: " + "; ".join(parts), fix)
