"""Safe checkpoint loading for every fairseq entry point that imports the plugin.

``fairseq-validate --path X`` (and ``fairseq-train``'s resume, the hub) load X through
``fairseq.checkpoint_utils.load_checkpoint_to_cpu`` before any task or model hook runs. torch
>= 2.6 loads weights-only by default, so an untrusted pickle is already refused, but as a long
traceback. Importing the plugin wraps that one loader: a zip checkpoint is first inspected
statically (nothing in it runs) and refused if it names globals outside torch's allow-list, and a
legacy-format file the weights-only loader refuses ends in the same single line.
"""
import argparse
import functools
import os
import pickle
import re
from typing import Callable

import torch
from fairseq import checkpoint_utils
from fairseq.distributed.utils import _TensorPlaceholder

from leebert_plugin.errors import UsageError
from leebert_plugin.fairseq_patches.checkpoint_files import damaged_fix
from leebert_plugin.fairseq_patches.wrapping import wrap_once

TRUST_FIX = ("load only checkpoints you trust; if you trust this one, allow-list those classes with "
             "torch.serialization.add_safe_globals in your user dir")
DAMAGED_FIX = "use an intact checkpoint (a copy, or an earlier checkpoint_*.pt)"


def _unreadable(path: str, reason: str) -> UsageError:
    return UsageError(f"{path} is not a readable checkpoint ({reason[:80]})", damaged_fix(path) or DAMAGED_FIX)


def _untrusted(path: str, names: str) -> UsageError:
    return UsageError(f"{path} holds pickled objects that torch's weights-only loader refuses ({names})", TRUST_FIX)


def check_checkpoint_file(path: str) -> None:
    """Refuse a damaged zip checkpoint, or one whose pickle names globals torch does not allow.

    The check disassembles the pickle without running it. Legacy (pre-zip) files are left to the
    weights-only loader, which :func:`safe_loader` reports the same way.
    """
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise _unreadable(path, "the file is empty")
    if head != b"PK\x03\x04":
        return
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as err:  # any failure to parse the archive is a damaged file
        raise _unreadable(path, f"{type(err).__name__}: {err}")
    if unsafe:
        raise _untrusted(path, ", ".join(sorted(unsafe)[:3]))


def check_not_export(path: str) -> None:
    """An export folder's ``model.pt`` (tensors only, no settings: fairseq's loader fails on it with
    ``KeyError: 'best_loss'``) is named as what it is, with the two ways to use it."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isfile(os.path.join(folder, "export.json")):
        raise UsageError(f"{path} is the weights of an export folder ({folder}), not a training checkpoint",
                         f"load the folder in Python with EarlyExitClassifier.from_pretrained({folder!r}); "
                         "fairseq-validate takes the training checkpoint it was exported from (checkpoint_best.pt)")


def safe_loader(load: Callable) -> Callable:
    """Wrap fairseq's ``load_checkpoint_to_cpu``: check first, and report a refused pickle in one line."""

    @functools.wraps(load)
    def load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks=False):
        if os.path.isfile(path):  # remote paths are fetched by fairseq's PathManager
            check_checkpoint_file(path)
            check_not_export(path)
        try:
            return load(path, arg_overrides, load_on_all_ranks)
        except KeyError as err:  # fairseq's upgrade of a state that is not a training checkpoint's
            raise UsageError(f"{path} is not a fairseq training checkpoint (it lacks {err})",
                             "pass checkpoint_best.pt or checkpoint_last.pt of a training run") from None
        except pickle.UnpicklingError as err:  # legacy format: torch's weights-only refusal
            refused = re.search(r"GLOBAL (\S+)", str(err))
            if refused:
                raise _untrusted(path, refused.group(1)) from None
            raise _unreadable(path, "torch's weights-only loader cannot parse it") from None

    return load_checkpoint_to_cpu


def check_path(name: str) -> None:
    """A checkpoint path that names a folder or nothing is one line (the fix names fairseq's
    ``--path``, which the scripts and the hub's first argument are also called)."""
    if os.path.isdir(name):
        inside = [f for f in ("checkpoint_best.pt", "checkpoint_last.pt") if os.path.isfile(os.path.join(name, f))]
        raise UsageError(f"checkpoint {name} is a directory, not a checkpoint file",
                         f"pass a file inside it, e.g. {os.path.join(name, inside[0])}" if inside else
                         "pass the checkpoint file itself (checkpoint_best.pt); an export folder loads with "
                         "EarlyExitClassifier.from_pretrained")
    if not os.path.exists(name):
        raise UsageError(f"checkpoint {name} does not exist", "fix the checkpoint's path (--path, or the first argument)")


def existing_paths(load: Callable) -> Callable:
    """Wrap fairseq's ``load_model_ensemble_and_task`` (``fairseq-validate --path``, the hub): a
    missing checkpoint is one line, not fairseq's ``IOError`` traceback."""

    @functools.wraps(load)
    def load_model_ensemble_and_task(filenames, *args, **kwargs):
        for name in filenames:
            if "://" in name or kwargs.get("num_shards", 1) != 1 or kwargs.get("suffix"):
                continue
            check_path(name)
        return load(filenames, *args, **kwargs)

    return load_model_ensemble_and_task


def install() -> None:
    """Route fairseq's checkpoint loading through :func:`safe_loader` (once per process).

    Checkpoints written by the argparse CLI (fairseq-train) store an ``argparse.Namespace``, and
    fairseq's ``broadcast_object`` (rank 0 sends a state to the others) pickles a
    ``_TensorPlaceholder`` (an int) per tensor; torch >= 2.6 loads weights-only by default. Exactly
    these classes are allowed, nothing else."""
    if hasattr(torch.serialization, "add_safe_globals"):
        torch.serialization.add_safe_globals([argparse.Namespace, _TensorPlaceholder])
    wrap_once(checkpoint_utils, "load_checkpoint_to_cpu", safe_loader)
    wrap_once(checkpoint_utils, "load_model_ensemble_and_task", existing_paths)
