"""fairseq's command-line tools with the plugin: an uncaught UsageError is one line, and settings
fairseq acts on before the plugin's task exists are refused before any worker starts.

Two wraps (see :mod:`leebert_plugin.cli` for the plugin's own scripts and the hydra callback):

- ``sys.excepthook`` in a process that is one of fairseq's console commands (``fairseq-validate``,
  ``fairseq-train``): the exception reaches the interpreter's top level, where the hook prints the
  line, and fairseq's known command-line ``assert`` messages become the same kind of line;
- ``fairseq.distributed.utils.call_main``: called by ``fairseq-train`` and ``fairseq-hydra-train``
  with the whole config before any worker starts.
"""
import os
import sys
from typing import Callable, Optional

from leebert_plugin.errors import UsageError, usage_error_line
from leebert_plugin.fairseq_patches.wrapping import MARK, wrap_once

FAIRSEQ_COMMANDS = ("fairseq-train", "fairseq-validate", "fairseq-hydra-train", "fairseq-generate")


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


def _one_line_parse_error(error: Callable) -> Callable:
    """``argparse.ArgumentParser.error`` as one UsageError line (the excepthook prints it, status
    1) instead of fairseq's usage text, over a hundred lines long, and status 2."""
    def one_line(self, message: str):
        fix = f"see {self.prog} --help"
        if "--exit-threshold" in message and "," in message:
            fix = "pass one number, or one per exit but the last with --exit-thresholds t1,t2 and --exit-policy per_exit_entropy"
        elif "invalid" in message and "value" in message:
            fix = f"pass a value of that type ({fix})"
        raise UsageError(f"{self.prog}: {message}", fix)
    setattr(one_line, MARK, True)
    return one_line


def install_argparse_errors() -> None:
    """Under fairseq's console commands only: their parse errors are one line (see above)."""
    import argparse

    if not getattr(argparse.ArgumentParser.error, MARK, False):
        argparse.ArgumentParser.error = _one_line_parse_error(argparse.ArgumentParser.error)


def install_excepthook() -> None:
    """Print an uncaught UsageError as its one line (once per process; other errors untouched)."""
    if not getattr(sys.excepthook, MARK, False):
        sys.excepthook = _one_line_hook(sys.excepthook)
