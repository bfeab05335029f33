"""Reading GLUE-layout TSV files: tab-separated fields, no quoting, a fixed number of fields per row.

GLUE's files are split exactly as ``cut -f`` would (fairseq's recipe uses it): on ``\\t`` and on
``\\n`` only, quotes being plain text. A row with another number of fields is an error naming the
file, the line and both counts, unless the caller asks to drop such rows (fairseq's recipe drops
them for QQP).
"""
from pathlib import Path
from typing import List, Optional, Tuple

from leebert_plugin.errors import UsageError


class Row(list):
    """The fields of one row, and its line number in the file (for error messages)."""
    line: int = 0


def read_rows(path: Path, columns: Optional[int] = None, header: bool = True, skip_bad: bool = False,
              hint: str = "") -> Tuple[Optional[List[str]], List[Row]]:
    """``(header, rows)`` of ``path``; ``columns`` defaults to the header's width.

    ``skip_bad`` drops rows of another width instead of failing; ``hint`` is added to the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist", "point to the folder that holds the task's TSV files")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})",
                         "convert the file to UTF-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    rows = [Row(line.rstrip("\r").split("\t")) for line in lines]
    first = 1
    head = None
    if header:
        if not rows:
            raise UsageError(f"{path} is empty", "give it its header line and at least one row")
        head, rows, first = list(rows[0]), rows[1:], 2
    width = columns if columns is not None else len(head)
    kept = []
    for number, row in enumerate(rows, start=first):
        row.line = number
        if len(row) == width:
            kept.append(row)
        elif not skip_bad:
            raise UsageError(f"{path}:{number} has {len(row)} tab-separated columns, expected {width}",
                             f"give every row {width} columns (no tab inside a field){hint}")
    return head, kept
