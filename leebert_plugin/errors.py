"""One error type for every input a user can fix.

fairseq's trainer and hydra's launcher both catch ``Exception`` and re-raise it wrapped in a long
traceback ("Cannot load model parameters ..."). A :class:`UsageError` derives from ``SystemExit``
instead, so it passes through both untouched: the command ends with exactly one line on stderr,
naming the problem and the fix, and exit status 1. Library callers catch it as ``UsageError``.
"""


class UsageError(SystemExit):
    """A bad input, reported as ``leebert-plugin: error: <problem>. Fix: <fix>``."""

    def __init__(self, problem: str, fix: str):
        self.problem = problem
        self.fix = fix
        super().__init__(f"leebert-plugin: error: {problem}. Fix: {fix}")

    def __str__(self) -> str:  # SystemExit's str() is its code; keep the message
        return str(self.code)
