"""The command-line boundary: a :class:`~leebert_plugin.errors.UsageError` raised anywhere below a
command ends it in exactly one line on stderr and exit status 1, never a traceback.

Three doors, one rule (:func:`~leebert_plugin.errors.usage_error_line`):

- the plugin's scripts and ``python -m`` modules: ``cli.run(main)``;
- fairseq's argparse commands (``fairseq-validate``, ``fairseq-train``): the exception reaches the
  interpreter's top level, where :func:`~leebert_plugin.fairseq_patches.command_line.install_excepthook` (installed when the plugin is imported
  by one of them) prints the line;
- ``fairseq-hydra-train``: hydra catches every ``Exception`` of the job and prints a traceback, so
  the configs name :class:`UsageErrorInOneLine` as a hydra callback
  (``hydra.callbacks.usage_errors._target_``), which sees the failed job first.

The library itself never exits: from Python a UsageError is a ``ValueError`` to catch. The
excepthook and the refusal of settings fairseq acts on before the task exists wrap fairseq's own
code, so they live with the other wrappers, in :mod:`leebert_plugin.fairseq_patches.command_line`.
"""
import argparse
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback

from leebert_plugin.errors import UsageError, usage_error_line


def run(main: Callable[[], Any]) -> Any:
    """Call ``main()``; a UsageError behind any exception it raises becomes ``SystemExit(line)``."""
    try:
        return main()
    except Exception as exc:
        line = usage_error_line(exc)
        if line is None:
            raise
        raise SystemExit(line) from None


class UsageErrorInOneLine(Callback):
    """Hydra callback: a job that failed with a UsageError ends the command with its one line.

    hydra's ``run_job`` stores the job's exception and calls ``on_job_end`` before re-raising it
    inside its ``run_and_report``, which would print a traceback; a ``SystemExit`` raised here
    passes through both (they catch ``Exception``) and exits with status 1 after printing the line.
    """

    def on_job_end(self, config: Any, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.FAILED:
            line = usage_error_line(job_return._return_value)
            if line is not None:
                leave(line)


def leave(line: str) -> None:
    """End a command with ``line`` and status 1: at once (:func:`end_now`) in the main process of
    one of fairseq's console commands, else as ``SystemExit(line)`` (hydra's main or the trainer
    called from Python: the caller decides; a spawned worker: torch's spawn passes its exit on)."""
    import multiprocessing

    from leebert_plugin.fairseq_patches.command_line import under_fairseq_command

    if under_fairseq_command() and multiprocessing.parent_process() is None:
        end_now(line)
    raise SystemExit(line)


def end_now(line: str) -> None:
    """Print ``line`` and end the process with status 1 without the interpreter's teardown.

    A training job that fails after its data loader started (fairseq's prefetching thread, torch's
    pin-memory thread on a GPU) can end in SIGABRT (status 134, "terminate called without an active
    exception") while the interpreter tears down under them: seen in 1 run of 2 for an empty D1 on
    2 CPU cores, whether or not a Python thread was still alive when the job failed. A script that
    checks the status would see a crash. The exit handlers (the save-dir lock's release, logging's
    flush) run first, then ``os._exit(1)``."""
    import atexit
    import os
    import sys

    sys.stdout.flush()
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(1)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors (a missing argument, a bad number) are one UsageError line, not the
    usage dump and exit status 2."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}", f"see {self.prog} --help")


def number(kind: Callable = float, low: Optional[float] = None, high: Optional[float] = None,
           low_open: bool = False) -> Callable[[str], Any]:
    """An argparse ``type``: a finite ``kind`` (int or float) in ``[low, high]`` (``(low, high]``
    with ``low_open``). NaN and infinities are refused, which ``type=float`` lets through."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}")
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if low is not None and (value < low or (low_open and value == low)):
            raise argparse.ArgumentTypeError(f"{text} is {'at or ' if low_open else ''}below {low:g}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{text} is above {high:g}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def refuse_existing(paths: Iterable[Path], overwrite: bool) -> None:
    """Before any work: outputs that already exist are refused unless ``overwrite``."""
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing and not overwrite:
        raise UsageError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}",
                         "write to another folder, or pass --overwrite to replace them")
