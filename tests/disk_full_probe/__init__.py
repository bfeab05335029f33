"""Test-only: a disk that fills up while a command writes its output.

:func:`install` makes ``os.fsync`` fail with ``ENOSPC`` ("No space left on device") for files a
writer stages (``.NAME.staging-<pid>/...``) or writes atomically (``.NAME.<pid>.partial``), as a
full disk reports a write it could not place; every other file (locks, logs, inputs) syncs as
usual. Used as a fairseq user dir (``common.user_dir=tests/disk_full_probe``: the plugin, then
the probe) and by :func:`run_module` for the ``python -m`` commands.
"""
import errno
import os
import runpy
import sys

import leebert_plugin  # noqa: F401  (registers the plugin when used as a user dir)

_fsync = os.fsync


def _staged(fd: int) -> bool:
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return False
    return ".staging-" in path or path.endswith(".partial")


def _full_fsync(fd):
    if _staged(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return _fsync(fd)


def install() -> None:
    os.fsync = _full_fsync


def run_module(module: str, argv) -> None:
    """``python -m module *argv`` on a full disk, through the plugin's one-line boundary."""
    install()
    sys.argv = [module, *argv]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


install()
