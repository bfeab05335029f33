"""The command-line boundary: a :class:`~leebert_plugin.errors.UsageError` raised anywhere below a
command ends it in exactly one line on stderr and exit status 1, never a traceback.

Three doors, one rule (:func:`~leebert_plugin.errors.usage_error_line`):

- the plugin's scripts and ``python -m`` modules: ``cli.run(main)``;
- fairseq's argparse commands (``fairseq-validate``, ``fairseq-train``): the exception reaches the
  interpreter's top level, where :func:`install_excepthook` (installed when the plugin is imported
  by one of them) prints the line;
- ``fairseq-hydra-train``: hydra catches every ``Exception`` of the job and prints a traceback, so
  the configs name :class:`UsageErrorInOneLine` as a hydra callback
  (``hydra.callbacks.usage_errors._target_``), which sees the failed job first.

The library itself never exits: from Python a UsageError is a ``ValueError`` to catch.
"""
import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback

from leebert_plugin.errors import UsageError, usage_error_line
from leebert_plugin.patching import MARK, wrap_once

FAIRSEQ_COMMANDS = ("fairseq-train", "fairseq-validate", "fairseq-hydra-train", "fairseq-generate")


def run(main: Callable[[], Any]) -> Any:
    """Call ``main()``; a UsageError behind any exception it raises becomes ``SystemExit(line)``."""
    try:
        return main()
    except Exception as exc:
        line = usage_error_line(exc)
        if line is None:
            raise
        raise SystemExit(line) from None


# fairseq's own checks of its command line that end in a bare ``assert`` (a traceback): the
# message it asserts with -> the problem and the fix, printed as the plugin's one line
FAIRSEQ_ASSERTIONS = {
    "Must specify batch size either with --max-tokens or --batch-size":
        ("no batch size was given", "pass --batch-size N (sentences) or --max-tokens N (tokens)"),
}


def async_checkpoints_refused() -> UsageError:
    return UsageError("checkpoint.write_checkpoints_asynchronously=true: fairseq then never copies a new checkpoint "
                      "onto checkpoint_last.pt or checkpoint_best.pt (a resume would start from a stale one) and "
                      "bypasses the crash-safe write", "drop it: each checkpoint is written whole, then renamed into place")


def refusing_before_main(call_main: Callable) -> Callable:
    """Wrap fairseq's ``distributed_utils.call_main``, which ``fairseq-train`` and
    ``fairseq-hydra-train`` call with the whole config before any worker starts: settings fairseq
    itself acts on before the plugin's task is set up are refused there, under both front ends.

    ``checkpoint.write_checkpoints_asynchronously``: without iopath, fairseq's train logs an
    ImportError and returns (exit status 0, nothing trained); with it, fairseq skips the copies
    onto checkpoint_last/best (the task refuses that too, for runs built from Python)."""

    def checked(cfg, main, **kwargs):
        checkpoint = getattr(cfg, "checkpoint", None)
        if getattr(checkpoint, "write_checkpoints_asynchronously", False):
            raise async_checkpoints_refused()
        return call_main(cfg, main, **kwargs)

    return checked


def install() -> None:
    from fairseq.distributed import utils as distributed_utils

    wrap_once(distributed_utils, "call_main", refusing_before_main)


def fairseq_assertion(exc: BaseException) -> Optional[UsageError]:
    """The UsageError for one of fairseq's known command-line assertions, else None."""
    if isinstance(exc, AssertionError):
        for message, (problem, fix) in FAIRSEQ_ASSERTIONS.items():
            if message in str(exc):
                return UsageError(problem, fix)
    return None


def _one_line_hook(previous: Callable) -> Callable:
    def hook(kind, value, tb):
        line = usage_error_line(fairseq_assertion(value) or value)
        if line is None:
            previous(kind, value, tb)
        else:  # the interpreter exits with status 1 after an uncaught exception
            sys.stderr.write(line + "\n")
    setattr(hook, MARK, True)
    return hook


def under_fairseq_command() -> bool:
    """Whether this process is one of fairseq's console commands (or ``python -m fairseq_cli.x``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return (os.path.basename(sys.argv[0] if sys.argv else "") in FAIRSEQ_COMMANDS
            or (spec is not None and spec.name.startswith("fairseq_cli.")))


def install_excepthook() -> None:
    """Print an uncaught UsageError as its one line (once per process; other errors untouched)."""
    if not getattr(sys.excepthook, MARK, False):
        sys.excepthook = _one_line_hook(sys.excepthook)


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
                raise SystemExit(line)


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
