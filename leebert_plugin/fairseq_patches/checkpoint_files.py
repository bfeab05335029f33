"""Checkpoint files that are whole or absent, and the newest intact one when a file is damaged.

fairseq writes a checkpoint to ``X.tmp`` and renames it, but never ``fsync``s, and it makes
``checkpoint_last.pt`` and ``checkpoint_best.pt`` with a plain ``copyfile`` onto the old file: a
``kill -9`` (or a power cut) inside that copy leaves a truncated or 0-byte ``checkpoint_last.pt``,
and the next launch of the same command dies in an ``EOFError``. Importing the plugin routes both
writes through :func:`~leebert_plugin.runtime.outputs.atomic_write`: the bytes go to a temporary
file in the same directory, are flushed to disk (``fsync``), and replace the target by
``os.replace`` (atomic on POSIX), after which the directory entry is synced too. A reader
therefore sees the old file or the new one; a full disk ends in one line naming the disk and the
save dir, and the earlier checkpoints are kept.
Paths fairseq's ``PathManager`` handles remotely (``scheme://``) are left to it.
"""
import os
import shlex
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from fairseq import checkpoint_utils
from fairseq.file_io import PathManager

from leebert_plugin.fairseq_patches.wrapping import MARK, wrap_once
from leebert_plugin.runtime.outputs import atomic_write

CHUNK = 1 << 20
TRAIN_COMMANDS = ("fairseq-hydra-train", "fairseq-train")  # the commands that resume


def _local(path) -> bool:
    return "://" not in str(path)


def atomic_copy(src: str, dst: str) -> None:
    with open(src, "rb") as source:
        atomic_write(dst, lambda f: shutil.copyfileobj(source, f, CHUNK))


def save_to_file(obj, f) -> None:
    """``torch.save`` into the open temporary file. Not fairseq's ``_torch_persistent_save``: that
    one retries into the same, half-written file object (it can only append garbage), sleeps 5 s
    and logs a traceback before raising, so a full disk would not end in one line."""
    torch.save(obj, f)


def atomic_saver(save: Callable) -> Callable:
    """Wrap fairseq's ``torch_persistent_save``: a local, synchronous save is atomic and synced."""

    def torch_persistent_save(obj, filename, async_write: bool = False):
        if async_write or not isinstance(filename, str) or not _local(filename):
            return save(obj, filename, async_write)
        atomic_write(filename, lambda f: save_to_file(obj, f))

    return torch_persistent_save


class AtomicCopyPathManager(PathManager):
    """fairseq's ``PathManager`` for ``checkpoint_utils``, whose ``copy`` (``checkpoint_last.pt``,
    ``checkpoint_best.pt``) replaces the target atomically for local paths."""

    @staticmethod
    def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if not (_local(src_path) and _local(dst_path)):
            return PathManager.copy(src_path, dst_path, overwrite)
        atomic_copy(src_path, dst_path)
        return True


def is_intact(path: Path) -> bool:
    """Whether ``path`` is a whole zip checkpoint (every member's CRC checks; nothing unpickled)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError):
        return False


def intact_siblings(path: str) -> Iterator[Path]:
    """The other ``checkpoint*.pt`` files beside ``path`` that are intact, newest first."""
    here = Path(path).resolve()
    others = [p for p in here.parent.glob("checkpoint*.pt") if p.resolve() != here and p.is_file()]
    for p in sorted(others, key=lambda p: p.stat().st_mtime, reverse=True):
        if is_intact(p):
            yield p


def _command(argv) -> str:
    return os.path.basename(argv[0]) if argv else ""


def resume_command(restore: Path, argv=None) -> str:
    """The command line that started this process, told to resume from ``restore``."""
    argv = list(sys.argv if argv is None else argv)
    if _command(argv) == "fairseq-hydra-train":
        argv = [a for a in argv if not a.startswith("checkpoint.restore_file=")]
        argv.append(f"checkpoint.restore_file={restore}")
    else:
        if "--restore-file" in argv:
            at = argv.index("--restore-file")
            del argv[at:at + 2]
        argv = [a for a in argv if not a.startswith("--restore-file=")] + ["--restore-file", str(restore)]
    return shlex.join(argv)


def damaged_fix(path: str, argv=None) -> Optional[str]:
    """What to do about a damaged ``path``: the newest intact checkpoint beside it, and, when a
    training command was resuming from ``checkpoint_last``, the exact command that resumes from it."""
    newest = next(intact_siblings(path), None) if _local(path) else None
    if newest is None:
        return None
    argv = sys.argv if argv is None else argv
    if os.path.basename(path).startswith("checkpoint_last") and _command(argv) in TRAIN_COMMANDS:
        return f"the newest intact checkpoint here is {newest}; resume from it: {resume_command(newest, argv)}"
    return f"use the newest intact checkpoint here, {newest}"


def install() -> None:
    """Route fairseq's checkpoint writes through :func:`atomic_write` (once per process)."""
    wrap_once(checkpoint_utils, "torch_persistent_save", atomic_saver)
    if not getattr(checkpoint_utils.PathManager, MARK, False):
        setattr(AtomicCopyPathManager, MARK, True)
        checkpoint_utils.PathManager = AtomicCopyPathManager
