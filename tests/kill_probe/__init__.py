"""Test-only fairseq user dir: the plugin, plus a SIGKILL at a chosen point of a checkpoint save.

``LEEBERT_KILL_AT=PHASE:N`` kills this process with SIGKILL during its N-th checkpoint file
operation of that phase: ``write`` (half of the new checkpoint's bytes written), ``copy`` (half
of the copy onto ``checkpoint_last.pt`` written) or ``replace`` (the new file complete and synced,
just before it replaces the old one).
"""
import os
import signal

import leebert_plugin  # noqa: F401  (registers the plugin)
from leebert_plugin.fairseq_patches import checkpoint_files

PHASE, _, NTH = os.environ.get("LEEBERT_KILL_AT", "").partition(":")
COUNTS = {"write": 0, "copy": 0, "replace": 0}


def _due(phase: str) -> bool:
    COUNTS[phase] += 1
    return phase == PHASE and COUNTS[phase] == int(NTH)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


if PHASE:
    persistent_save = checkpoint_files.save_to_file  # called with the temporary file
    atomic_copy = checkpoint_files.atomic_copy
    replace = os.replace

    def write_half_then_die(obj, f):
        persistent_save(obj, f)
        if _due("write"):
            f.flush()
            f.truncate(max(1, f.tell() // 2))
            _die()

    def copy_half_then_die(src, dst):
        if not _due("copy"):
            return atomic_copy(src, dst)

        def half(f):
            with open(src, "rb") as source:
                f.write(source.read(os.path.getsize(src) // 2))
            f.flush()
            _die()
        checkpoint_files.atomic_write(dst, half)

    def die_before_replace(src, dst):
        if str(src).endswith(".partial") and _due("replace"):
            _die()
        return replace(src, dst)

    checkpoint_files.save_to_file = write_half_then_die
    checkpoint_files.atomic_copy = copy_half_then_die
    os.replace = die_before_replace
