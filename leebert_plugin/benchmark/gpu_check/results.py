"""One check's outcome, its line, and the report the GPU check prints (:mod:`.`)."""
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, TextIO




@dataclass
class Result:
    """One check's outcome: ``status`` PASS, FAIL or SKIP, a one-line ``reason`` (why it failed
    or was skipped, or what it measured), and its wall-clock seconds."""

    name: str
    status: str
    reason: str = ""
    seconds: float = 0.0

    def line(self) -> str:
        """``STATUS name (N.N s)[: reason]``, the line the script prints."""
        return f"{self.status} {self.name} ({self.seconds:.1f} s)" + (f": {self.reason}" if self.reason else "")


class CheckFailed(Exception):
    """A check's verdict FAIL, with its one-line reason."""


class CheckSkipped(Exception):
    """A check that cannot run here, with the reason."""


def one_line(text: str, limit: int = 300) -> str:
    """``text`` folded onto one line and cut to ``limit`` characters, for a reason."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_check(name: str, check: Callable[[], str], budget: Optional[float] = None) -> Result:
    """Run ``check`` (which returns what it measured, or raises :class:`CheckFailed` or
    :class:`CheckSkipped`) and time it. Any other exception is a FAIL too, named by its type, so
    that one broken check never stops the others. Over ``budget`` seconds: a FAIL."""
    start = time.perf_counter()
    try:
        status, reason = "PASS", check()
    except CheckSkipped as e:
        status, reason = "SKIP", str(e)
    except CheckFailed as e:
        status, reason = "FAIL", str(e)
    except Exception as e:  # a UsageError too
        status, reason = "FAIL", f"{type(e).__name__}: {e}"
    seconds = time.perf_counter() - start
    if status == "PASS" and budget is not None and seconds > budget:
        status, reason = "FAIL", f"took {seconds:.0f} s, over its budget of {budget:.0f} s; {reason}"
    return Result(name, status, one_line(reason or ""), seconds)


def exit_status(results: Sequence[Result]) -> int:
    """1 if any check failed, else 0 (a SKIP is no failure)."""
    return int(any(r.status == "FAIL" for r in results))


def summary(results: Sequence[Result]) -> str:
    """The closing line: how many checks passed, failed and were skipped."""
    counts = {s: sum(r.status == s for r in results) for s in ("PASS", "FAIL", "SKIP")}
    return f"gpu check: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped"


def report(results: Sequence[Result], out: TextIO = sys.stdout) -> int:
    """Print every result's line and the summary; the exit status (:func:`exit_status`)."""
    for r in results:
        print(r.line(), file=out)
    print(summary(results), file=out)
    return exit_status(results)
