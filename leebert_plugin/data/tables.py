"""A user's data file as named columns: TSV, CSV or JSON Lines, chosen by the file's extension.

Every format has a header: the first line of a TSV or CSV names its columns, and each JSON Lines
row is an object whose keys are the column names. Every problem is one
:class:`~leebert_plugin.errors.UsageError` naming ``file:line`` and the fix.

Delimited files come in two quoting conventions, and both are common:

- CSV quoting (pandas, spreadsheets): a field may be quoted, ``"a ""quoted"" word"``, and then
  holds the separator or line breaks; a quoted field that spans lines keeps its first line's
  number in messages.
- quotes as plain text (GLUE's own TSVs, tweets: ``"I believe..." -Tanya H.<TAB>negative``): a
  quote that opens a field is part of the text.

``quoting="auto"`` (the default) reads CSV quoting and, when the file is not valid under it (a
field that opens a quote and goes on after it closes, or never closes it), reads it again with
quotes as text and says so in :attr:`Table.dialect`: a file valid under CSV quoting is the
common case and loses nothing, and a tweet file needs no option. A file valid under both
readings is read with CSV quoting; ``quoting="none"`` (``--quoting none``) forces quotes as text,
``quoting="csv"`` refuses a file that is not valid CSV. Why not guess per field: one file then
mixes two rules, and a user cannot tell which row was read which way.

The separator: the extension's (tab for ``.tsv``, comma for ``.csv``) when the header line holds
it; else the one of tab, comma, semicolon and ``|`` the header holds most (a European
spreadsheet writes ``;`` into a ``.csv``), also said in :attr:`Table.dialect`; ``delimiter``
(``--delimiter``) forces one. Windows line endings and a UTF-8 byte-order mark are read as
plain ones.
"""
import argparse
import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from leebert_plugin.errors import UsageError

FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
QUOTING = ("auto", "csv", "none")
# separator -> its name in messages and in --delimiter
DELIMITERS = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe"}


@dataclass
class Record:
    """One row: its fields by column name, and the line it starts on (1-based, header included)."""
    fields: Dict[str, str]
    line: int


@dataclass
class Table:
    path: Path
    columns: List[str]  # the header's names, in file order (JSON Lines: the first row's keys)
    records: List[Record]
    dialect: str = ""  # how a delimited file was read, e.g. "tab-separated, CSV quoting" (detected or given)
    delimiter: Optional[str] = None

    def require(self, options: Dict[str, str]) -> None:
        """Every column of ``options`` (column name -> the option that named it) is in the header,
        else one line naming the file's columns. A header that names none of them is reported as
        a missing header (its first line is probably data)."""
        missing = [n for n in options if n not in self.columns]
        if not missing:
            return
        where, names = f"{self.path}:1", list(options)
        if len(missing) == len(names) and self.format != "jsonl":
            flags = " / ".join(sorted(set(options.values())))
            raise UsageError(f"{where} has no header naming the columns {names}: its first line is "
                             f"{self.columns}", f"add a header line naming each column (e.g. "
                             f"{_sep(self.delimiter).join(names)}), or name yours with {flags}"
                             + ("" if self.format == "jsonl" else "; its separator is set with --delimiter"))
        raise UsageError(f"{where} has no column {missing[0]!r} (its columns: {self.columns})",
                         f"name one of its columns with {options[missing[0]]}")

    @property
    def format(self) -> str:
        return file_format(self.path)


def _sep(delimiter: Optional[str]) -> str:
    return "<TAB>" if delimiter in (None, "\t") else delimiter


def delimiter_option(value: str) -> str:
    """``--delimiter``: ``tab``, ``comma``, ``semicolon``, ``pipe`` or any one character."""
    named = {name: sep for sep, name in DELIMITERS.items()}
    value = {"\\t": "\t"}.get(value, value)
    if value in named:
        return named[value]
    if len(value) != 1 or value in "\"\r\n":  # argparse reports it as one line (cli.ArgumentParser)
        raise argparse.ArgumentTypeError(f"{value!r} is not tab, comma, semicolon, pipe or one character "
                                         "(other than a quote or a line break)")
    return value


def _detect_delimiter(text: str, fmt: str) -> Tuple[str, bool]:
    """The separator and whether it was detected (not the extension's): see the module docstring."""
    default = "\t" if fmt == "tsv" else ","
    header = text.split("\n", 1)[0]
    if default in header:
        return default, False
    counts = {sep: header.count(sep) for sep in DELIMITERS}
    best = max(counts, key=counts.get)
    return (best, True) if counts[best] else (default, False)


def file_format(path: Path) -> str:
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise UsageError(f"{path}: cannot tell its format from the extension {Path(path).suffix!r}",
                         f"name the file {Path(path).stem}.tsv, .csv or .jsonl after its format")
    return fmt


def _text(path: Path, encoding: str) -> str:
    if not path.is_file():
        raise UsageError(f"{path} does not exist" + (" (it is a directory)" if path.is_dir() else ""),
                         "pass a TSV, CSV or JSON Lines file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding)
    except LookupError:
        raise UsageError(f"--encoding {encoding} is not an encoding Python knows", "pass e.g. utf-8, latin-1 or cp1252")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise UsageError(f"{path}:{line} cannot be decoded as {encoding} (byte 0x{data[err.start]:02x}: {err.reason})",
                         f"convert the file to UTF-8 (iconv -f cp1252 -t utf-8), or pass its encoding with --encoding")
    if not text.strip():
        raise UsageError(f"{path} is empty", "give it a header line and at least one row")
    return text


def _delimited(path: Path, text: str, delimiter: str, quoted: bool) -> Table:
    """The table of a delimited file, read with CSV quoting (``quoted``) or quotes as text."""
    lines = text.splitlines(keepends=True)
    if quoted:
        reader = csv.reader(lines, delimiter=delimiter, strict=True)
    else:
        reader = csv.reader(lines, delimiter=delimiter, quoting=csv.QUOTE_NONE)
    name = f"{DELIMITERS.get(delimiter, repr(delimiter))}-separated"
    try:
        header = next(reader)
        records, start = [], reader.line_num + 1
        for row in reader:
            line, start = start, reader.line_num + 1
            if not row:  # a blank line
                continue
            if len(row) != len(header):
                raise UsageError(f"{path}:{line} has {len(row)} {name} fields, the header {len(header)}",
                                 "give every row one field per header column (quote a field that holds the "
                                 "separator)" + ("" if quoted else ", and read quotes as CSV quoting (--quoting csv)"))
            records.append(Record(dict(zip(header, row)), line))
    except csv.Error as err:
        what = "TSV" if delimiter == "\t" else "CSV"
        raise UsageError(f"{path}:{reader.line_num} is not valid {what} with CSV quoting ({err})",
                         "close the quote, or write a quote inside a quoted field as two quotes; "
                         "or read quotes as part of the text with --quoting none")
    header = [h.strip() for h in header]
    for record in records:
        record.fields = {k.strip(): v for k, v in record.fields.items()}
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise UsageError(f"{path}:1 names the column {duplicated[0]!r} twice", "give every column its own name")
    return Table(path, header, records, f"{name}, {'CSV quoting' if quoted else 'quotes as text'}", delimiter)


def _read_delimited(path: Path, text: str, fmt: str, delimiter: Optional[str], quoting: str) -> Table:
    """:func:`_delimited` with the separator and the quoting given or detected (the module docstring)."""
    if quoting not in QUOTING:
        raise UsageError(f"quoting={quoting!r}", f"pass one of {', '.join(QUOTING)}")
    detected = delimiter is None
    if detected:
        delimiter, detected = _detect_delimiter(text, fmt)
    if quoting != "auto":
        table = _delimited(path, text, delimiter, quoting == "csv")
    else:
        try:
            table = _delimited(path, text, delimiter, True)
        except UsageError as as_csv:
            try:
                table = _delimited(path, text, delimiter, False)
            except UsageError:
                raise as_csv from None
            line = as_csv.problem[len(str(path)) + 1:].split(" ", 1)[0]
            table.dialect += f" (detected: line {line} cannot be read with CSV quoting; --quoting forces one)"
    if detected:
        table.dialect += f" (separator detected from the header: {DELIMITERS[delimiter]})"
    return table


def _json_lines(path: Path, text: str) -> Table:
    records, columns = [], None
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as err:
            raise UsageError(f"{path}:{line} is not a JSON object ({err.msg})", "write one JSON object per line")
        if not isinstance(obj, dict):
            raise UsageError(f"{path}:{line} is a JSON {type(obj).__name__}, not an object",
                             'write one object per line, e.g. {"text": "...", "label": "..."}')
        if columns is None:
            columns = list(obj)
        records.append(Record({k: v if isinstance(v, str) else json.dumps(v) if isinstance(v, (list, dict))
                               else "" if v is None else str(v) for k, v in obj.items()}, line))
    return Table(path, columns or [], records)


def read_table(path: Path, encoding: str = "utf-8", delimiter: Optional[str] = None, quoting: str = "auto") -> Table:
    """The records of a ``.tsv``, ``.csv`` or ``.jsonl`` file (a header or keys, then at least one
    row). ``delimiter`` (None: detected) and ``quoting`` (``auto``, ``csv``, ``none``): for TSV and
    CSV, as the module docstring says."""
    path = Path(path)
    fmt = file_format(path)
    text = _text(path, encoding)
    table = _json_lines(path, text) if fmt == "jsonl" else _read_delimited(path, text, fmt, delimiter, quoting)
    if not table.records:
        raise UsageError(f"{path} has a header but no rows", "add at least one row below the header")
    return table


def field(table: Table, record: Record, name: str, option: str) -> str:
    """``record``'s value of column ``name`` (JSON Lines rows may lack a key the first row had)."""
    if name not in record.fields:
        raise UsageError(f"{table.path}:{record.line} has no {name!r} key", f"give every row a {name!r}, or set {option}")
    return record.fields[name]


def write_splits(out_dir: Path, splits: Dict[str, Sequence[Tuple[str, str]]], header: Tuple[str, str]) -> None:
    """``OUT_DIR/{name}.tsv`` for each split: the ``header`` line, then one ``text<TAB>label`` row
    per pair (texts carry no tab or newline: the builders flatten them)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        with open(out_dir / f"{name}.tsv", "w", encoding="utf-8") as f:
            f.write("\t".join(header) + "\n")
            f.writelines(f"{text}\t{label}\n" for text, label in rows)
