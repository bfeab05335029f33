"""One error type for every input a user can fix.

A :class:`UsageError` is a ``ValueError``: a library caller (a service calling ``predict``, a
notebook building a policy) catches it with ``except ValueError`` and carries on. The command
lines turn it into exactly one line on stderr and exit status 1 (:mod:`leebert_plugin.cli`).

fairseq sometimes re-raises what it catches: its trainer turns any failure while loading a
checkpoint into ``Exception("Cannot load model parameters ...")`` inside the ``except`` block, and
``torch.multiprocessing.spawn`` sends a worker's traceback to the parent as text.
:func:`usage_error_line` finds the plugin's line behind both.
"""
from typing import Optional

PREFIX = "leebert-plugin: error:"
SEPARATOR = ". Fix: "


class UsageError(ValueError):
    """A bad input, reported as ``leebert-plugin: error: <problem>. Fix: <fix>``."""

    def __init__(self, problem: str, fix: str):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{PREFIX} {problem}{SEPARATOR}{fix}")

    @classmethod
    def from_line(cls, line: str) -> "UsageError":
        """The error that printed ``line`` (as :func:`usage_error_line` finds it in another
        process's output), to raise again in this one."""
        at = line.find(PREFIX)
        if at < 0:
            raise ValueError(f"not a {PREFIX!r} line: {line!r}")
        problem, _, fix = line[at + len(PREFIX) + 1:].rstrip("\r\n").partition(SEPARATOR)
        return cls(problem, fix)


def usage_error_line(exc: Optional[BaseException]) -> Optional[str]:
    """The one-line report of the :class:`UsageError` behind ``exc``, or None if there is none.

    Walks ``exc``'s causes (``__cause__``, else ``__context__``), so a UsageError that fairseq
    re-raised as another exception is still found; a worker's traceback passed on as text is
    searched for the plugin's line.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, UsageError):
            return str(exc)
        for line in reversed(str(exc).splitlines()):  # a traceback passed on as text
            at = line.find(PREFIX)
            if at >= 0:
                return line[at:]
        exc = exc.__cause__ or exc.__context__
    return None
