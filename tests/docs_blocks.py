"""The runnable code blocks of the documentation, and the marks that exempt one from running.

The convention (README.md and docs/*.md): a fenced block whose info string starts with ``bash`` or
``python`` is run from the repository root with ``.venv/bin`` first on PATH; any other fence
(``text``, ``yaml``, ``console``, none) is never run. A block that cannot run in CI carries, as the
last non-blank line before its fence, a line of exactly the form

    *Not run by the docs test: <reason>.*

Every other line that starts like a mark (a typo, a missing reason, a mark followed by text
instead of a runnable block) is a :class:`ConventionError`: a mark that silently failed to apply would
let a broken block pass unnoticed, so the parse refuses it rather than guessing. So is a fence named
``sh``, ``shell`` or ``py``: its commands would escape the test by the fence's name alone.
"""
import re

import pytest
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

RUN_LANGUAGES = ("bash", "python")
# other names of the same languages: refused, so that a command cannot escape the test by its fence's name
RUN_SYNONYMS = {"sh": "bash", "shell": "bash", "zsh": "bash", "py": "python", "python3": "python"}
MARK_PREFIX = "*Not run by the docs test"
MARK = re.compile(r"^\*Not run by the docs test: (?P<reason>.*\S)\.\*$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")  # info: no backtick (CommonMark)


# what the docs test records for the terminal summary: block id -> exit status; (what ran, wall s, CPU s, passed)
RESULTS = pytest.StashKey[dict]()
TIMINGS = pytest.StashKey[list]()


class ConventionError(ValueError):
    """A line that starts like a not-run mark but is malformed or placed where it exempts nothing, or
    a fence named ``sh``/``py``/... (which would silently not run)."""


@dataclass(frozen=True)
class Block:
    path: str  # as given (relative to the repository root)
    line: int  # 1-based line of the opening fence
    language: str  # the info string's first word, lower-cased ("" for a bare fence)
    code: str
    not_run: Optional[str] = None  # the mark's reason, when the block is exempt

    @property
    def runs(self) -> bool:
        return self.language in RUN_LANGUAGES and self.not_run is None

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


def parse_mark(line: str, where: str) -> Optional[str]:
    """The reason of a mark line, None for a line that is not one; :class:`ConventionError` for a line that
    starts like a mark but is not exactly ``*Not run by the docs test: <reason>.*``."""
    text = line.strip()
    if not text.startswith(MARK_PREFIX):
        return None
    match = MARK.match(text)
    if match is None or not match.group("reason").strip(" .:"):
        raise ConventionError(f"{where}: malformed mark {text!r}; write it as '*Not run by the docs test: <reason>.*' "
                        "with a non-empty reason")
    return match.group("reason").strip()


def code_blocks(text: str, path: str) -> List[Block]:
    """The fenced blocks of markdown ``text`` in order, each with the mark before it (if any).

    A fence may be indented (inside a list item); that indentation is removed from the block's lines.
    A block closes at a line of the same fence character, at least as long, with nothing after it
    (CommonMark); an unclosed block runs to the end of the file, as CommonMark renders it."""
    lines = text.splitlines()
    blocks: List[Block] = []
    last_text: Optional[int] = None  # index of the last non-blank line outside a block
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            if lines[i].strip():
                _check_unused_mark(lines, last_text, path)
                last_text = i
            i += 1
            continue
        fence, indent = match.group("fence"), len(match.group("indent"))
        info = match.group("info").strip()
        language = info.split()[0].lower() if info else ""
        mark = parse_mark(lines[last_text], f"{path}:{last_text + 1}") if last_text is not None else None
        if language in RUN_SYNONYMS:
            raise ConventionError(f"{path}:{i + 1}: a {language!r} block, which the docs test does not run; "
                                  f"fence it as {RUN_SYNONYMS[language]!r} (run) or 'text'/'console' (never run)")
        opening, body, i = i + 1, [], i + 1
        while i < len(lines) and not _closes(lines[i], fence):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i].lstrip())
            i += 1
        if mark is not None and language not in RUN_LANGUAGES:
            raise ConventionError(f"{path}:{last_text + 1}: a not-run mark before a {language or 'bare'} block, which is "
                            f"never run; remove the mark (only {' and '.join(RUN_LANGUAGES)} blocks run)")
        blocks.append(Block(path, opening, language, "\n".join(body) + "\n", mark))
        last_text = None
        i += 1  # past the closing fence
    _check_unused_mark(lines, last_text, path)
    return blocks


def _closes(line: str, fence: str) -> bool:
    stripped = line.strip()
    return stripped.startswith(fence[0] * len(fence)) and set(stripped) == {fence[0]}


def _check_unused_mark(lines: List[str], index: Optional[int], path: str) -> None:
    """A mark followed by text (not by a fence) exempts nothing: refused, so it gets moved."""
    if index is not None and parse_mark(lines[index], f"{path}:{index + 1}") is not None:
        raise ConventionError(f"{path}:{index + 1}: a not-run mark that is not the last non-blank line before a "
                        "bash or python block; put it directly above the block it exempts")


def doc_files(root: Path) -> List[Path]:
    """README.md and docs/*.md (sorted), relative to ``root``: the pages whose blocks the test runs."""
    files = [Path("README.md")] if (root / "README.md").is_file() else []
    return files + sorted(p.relative_to(root) for p in (root / "docs").glob("*.md"))


def collect(root: Path) -> Tuple[List[Block], List[Tuple[str, str]]]:
    """Every block of the pages under ``root``, and (page, error) for a page whose marks are malformed."""
    blocks, errors = [], []
    for page in doc_files(root):
        try:
            blocks += code_blocks((root / page).read_text(encoding="utf-8"), str(page))
        except ConventionError as e:
            errors.append((str(page), str(e)))
    return blocks, errors


def not_run_summary(blocks: List[Block]) -> List[str]:
    """One line per exempt block: page:line, language, the mark's reason."""
    return [f"{b.id} ({b.language}): {b.not_run}" for b in blocks if b.not_run is not None]


def timing_summary(timings: List[Tuple[str, float, float, bool]]) -> List[str]:
    """One line per block run (and the stand-in; slowest first) and the total: wall and CPU seconds, failed or not."""
    lines = [f"{b}: {wall:.0f} s, {cpu:.0f} CPU s{'' if ok else ' (failed)'}"
             for b, wall, cpu, ok in sorted(timings, key=lambda t: -t[1])]
    return lines + [f"total: {len(timings)} runs, {sum(t[1] for t in timings):.0f} s, "
                    f"{sum(t[2] for t in timings):.0f} CPU s"]
