"""A user's own labelled files -> fairseq's sentence-prediction layout, and the command that trains on it.

The steps, each a function with its own test:

1. :func:`read_examples`: the text column(s) and the label column of a TSV/CSV/JSON Lines file
   (:mod:`~leebert_plugin.data.tables`), every empty text or label refused with its ``file:line``.
2. :func:`detect_kind`: regression when every training label is a number and at least one is not an
   integer (``0.5``, ``3.7``); otherwise classification, so ``0``/``1``/``2`` and ``pos``/``neg`` are
   classes.
3. :func:`label_order`: the classes in index order, fixed and written to ``OUT/label/dict.txt``
   (class ``i`` = line ``i``): ``--labels a,b,c`` as given, else sorted (numerically when every
   label is an integer, so ``2`` comes before ``10``).
4. :func:`split_off`: without a ``--valid`` (or ``--test``) file, a fraction of the training rows
   is drawn by seed, within each class (stratified: every class keeps its share in each split),
   the rows of every split keeping their file order.
5. :func:`~leebert_plugin.data.layout.write_layout`: bpe, fairseq-preprocess, staged and moved into
   place whole.

A dev/test label that the training file never had is refused, with its line: the model would
have no class for it.
"""
import json
import math
from argparse import Namespace
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from leebert_plugin.data.bpe_encode import FILE_OPTIONS, bpe_options
from leebert_plugin.data.layout import SETTINGS_FILE, Split, check_label_names, refuse_existing_layout, write_layout
from leebert_plugin.data.tables import Table, field as get_field, read_table
from leebert_plugin.errors import UsageError
from leebert_plugin.runtime.outputs import check_folder

KINDS = ("classification", "regression")


@dataclass
class Examples:
    """The rows of one file: ``texts[k][i]`` (one or two text columns), ``labels[i]``, ``lines[i]``."""
    path: Path
    texts: List[List[str]]
    labels: Optional[List[str]]  # None: the file has no label column (an unlabelled test file)
    lines: List[int]
    dialect: str = ""  # how the file was read (a TSV/CSV's separator and quoting), for the report

    def __len__(self) -> int:
        return len(self.lines)

    def subset(self, rows: Sequence[int]) -> "Examples":
        return Examples(self.path, [[t[i] for i in rows] for t in self.texts],
                        None if self.labels is None else [self.labels[i] for i in rows], [self.lines[i] for i in rows],
                        self.dialect)


def _one_line(text: str) -> str:
    """fairseq's files hold one sentence a line: line breaks and tabs inside a text become spaces."""
    return " ".join(text.replace("\t", " ").splitlines()).strip()


def read_examples(path: Path, text_columns: Sequence[str], label_column: str, encoding: str = "utf-8",
                  labels_optional: bool = False, delimiter: Optional[str] = None, quoting: str = "auto") -> Examples:
    """The examples of ``path``. ``labels_optional``: a file without the label column is unlabelled.
    ``delimiter``, ``quoting``: how a TSV/CSV is read (:func:`~leebert_plugin.data.tables.read_table`)."""
    table: Table = read_table(path, encoding, delimiter, quoting)
    has_labels = label_column in table.columns
    needed = {name: "--text-columns" for name in text_columns}
    if has_labels or not labels_optional:
        needed[label_column] = "--label-column"
    table.require(needed)
    texts: List[List[str]] = [[] for _ in text_columns]
    labels: Optional[List[str]] = [] if has_labels else None
    for record in table.records:
        for k, name in enumerate(text_columns):
            text = _one_line(get_field(table, record, name, "--text-columns"))
            if not text:
                raise UsageError(f"{path}:{record.line} has an empty {name!r}",
                                 "give every row its text, or delete the row")
            texts[k].append(text)
        if labels is not None:
            label = get_field(table, record, label_column, "--label-column").strip()
            if not label:
                raise UsageError(f"{path}:{record.line} has an empty {label_column!r}",
                                 "give every row its label, or delete the row")
            check_label_names([label], f"{path}:{record.line}")
            labels.append(label)
    return Examples(Path(path), texts, labels, [r.line for r in table.records], table.dialect)


def _number(text: str) -> Optional[float]:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def detect_kind(labels: Sequence[str]) -> str:
    """``regression`` when every label is a finite number and one at least is not an integer."""
    numbers = [_number(label) for label in labels]
    if all(n is not None for n in numbers) and any(n != int(n) for n in numbers):
        return "regression"
    return "classification"


def label_order(train: Sequence[str], given: Optional[Sequence[str]] = None) -> List[str]:
    """The classes in index order: ``given``, else the training labels sorted (as integers when all are)."""
    if given:
        duplicated = sorted({g for g in given if list(given).count(g) > 1})
        if duplicated:
            raise UsageError(f"--labels names {duplicated[0]!r} twice", "list every class once")
        check_label_names(given, "--labels")
        return list(given)
    names = sorted(set(train))
    if all(name.lstrip("-").isdigit() for name in names):
        names.sort(key=int)
    check_label_names(names, "the training labels")
    return names


def check_known_labels(examples: Examples, classes: Sequence[str], source: str) -> None:
    """Every label of ``examples`` is one of ``classes``, else its ``file:line``."""
    known = set(classes)
    for label, line in zip(examples.labels or (), examples.lines):
        if label not in known:
            raise UsageError(f"{examples.path}:{line} has the label {label!r}, which {source} never has "
                             f"(classes: {', '.join(classes)})",
                             "fix the label, add rows of that class to the training file, or list it in --labels")


def check_regression_labels(examples: Examples, label_column: str) -> None:
    for label, line in zip(examples.labels or (), examples.lines):
        if _number(label) is None:
            raise UsageError(f"{examples.path}:{line} has the {label_column} {label!r}, not a number, in a "
                             f"regression task", "fix the value, or pass --task-kind classification")


def split_off(examples: Examples, fraction: float, seed, stratify: bool, name: str) -> Tuple[Examples, Examples]:
    """``(rest, drawn)``: ``fraction`` of the rows drawn by ``seed`` (an int or a sequence, numpy's
    seed; within each class when
    ``stratify``: round(fraction x class size), so a class of one row stays in ``rest``)."""
    rng = np.random.default_rng(seed)
    groups: Dict[str, List[int]] = {}
    for i in range(len(examples)):
        groups.setdefault(examples.labels[i] if stratify else "", []).append(i)
    drawn: List[int] = []
    for key in sorted(groups):
        rows = groups[key]
        take = int(round(fraction * len(rows)))
        drawn += [rows[j] for j in rng.permutation(len(rows))[:take]]
    if not drawn or len(drawn) == len(examples):
        raise UsageError(f"{examples.path} has {len(examples)} rows: too few to draw a {name} set of "
                         f"{fraction:g} of them", f"pass a --{name} file, or a larger --{name}-fraction")
    chosen = set(drawn)
    return (examples.subset([i for i in range(len(examples)) if i not in chosen]), examples.subset(sorted(chosen)))


@dataclass
class Prepared:
    """What :func:`prepare` wrote, for the caller's report."""
    out: Path
    kind: str
    classes: List[str]  # empty for regression
    counts: Dict[str, int]
    pairs: bool
    sources: Dict[str, str] = field(default_factory=dict)
    read_as: Dict[str, str] = field(default_factory=dict)  # file -> how a TSV/CSV was read (separator, quoting)

    @property
    def num_classes(self) -> int:
        return 1 if self.kind == "regression" else len(self.classes)


def prepare(args: Namespace) -> Prepared:
    """Read, check, split and write; every check runs before anything is written, the output's first."""
    check_folder(args.out, "--out")
    refuse_existing_layout(args.out, args.overwrite)
    columns = list(args.text_columns)
    if not 1 <= len(columns) <= 2:
        raise UsageError(f"--text-columns names {len(columns)} columns", "name one column, or two for sentence pairs")
    reading = {"delimiter": getattr(args, "delimiter", None), "quoting": getattr(args, "quoting", "auto")}
    train = read_examples(args.train, columns, args.label_column, args.encoding, **reading)
    read_as = {str(args.train): train.dialect}
    kind = args.task_kind or detect_kind(train.labels)
    given = [g.strip() for g in args.labels.split(",")] if args.labels else None
    if kind == "regression":
        if given:
            raise UsageError("--labels with a regression task", "drop --labels, or pass --task-kind classification")
        check_regression_labels(train, args.label_column)
        classes: List[str] = []
    else:
        classes = label_order(train.labels, given)
        if given:
            check_known_labels(train, classes, "--labels")
    files = {"valid": args.valid, "test": args.test}
    fractions = {"valid": args.valid_fraction, "test": args.test_fraction}
    drawn = [name for name, path in files.items() if path is None and fractions[name] > 0]
    if sum(fractions[n] for n in drawn) >= 1:
        raise UsageError(f"--valid-fraction and --test-fraction add up to {sum(fractions[n] for n in drawn):g}",
                         "leave at least some rows for training (e.g. 0.1 each)")
    parts: Dict[str, Examples] = {}
    sources = {"train": str(args.train)}
    for name, path in files.items():
        if path is not None:
            parts[name] = read_examples(path, columns, args.label_column, args.encoding, labels_optional=name == "test",
                                        **reading)
            read_as[str(path)] = parts[name].dialect
            sources[name] = str(path)
    left = 1.0
    for index, name in enumerate(drawn):  # fractions of the whole training file, drawn one after the other
        train, parts[name] = split_off(train, fractions[name] / left, [args.seed, index], kind == "classification", name)
        left -= fractions[name]
        sources[name] = f"{args.train} ({fractions[name]:g} of it, drawn by seed {args.seed})"
    if "valid" not in parts:
        raise UsageError("no validation set: --valid-fraction 0 and no --valid file",
                         "pass --valid FILE, or a --valid-fraction above 0")
    for name, examples in parts.items():
        if kind == "regression":
            check_regression_labels(examples, args.label_column)
        else:
            check_known_labels(examples, classes, "--labels" if given else f"the training file {args.train}")
    splits = [Split("train", train.texts, _label_text(train, kind))]
    splits += [Split(name, parts[name].texts, _label_text(parts[name], kind)) for name in ("valid", "test") if name in parts]
    prepared = Prepared(Path(args.out), kind, classes, {s.name: len(s) for s in splits}, len(columns) == 2, sources,
                        {path: how for path, how in read_as.items() if how})
    write_layout(args.out, splits, classes if kind == "classification" else None, args, args.workers, args.overwrite,
                 finish=lambda stage: write_settings(prepared, args, stage))  # in the new folder, swapped in with it
    return prepared


def _label_text(examples: Examples, kind: str) -> Optional[List[str]]:
    if examples.labels is None or kind == "classification":
        return examples.labels
    return [repr(float(label)) for label in examples.labels]


def write_settings(prepared: Prepared, args: Namespace, folder: Optional[Path] = None) -> None:
    """``OUT/prepare.json`` (``folder``: the staging folder of OUT): the task settings and the bpe
    files (what an export or a service needs)."""
    bpe = {k: (str(Path(v).resolve()) if k in FILE_OPTIONS else v) for k, v in bpe_options(args, args.bpe).items()}
    settings = {"task_kind": prepared.kind, "num_classes": prepared.num_classes, "labels": prepared.classes,
                "pairs": prepared.pairs, "text_columns": list(args.text_columns), "label_column": args.label_column,
                "counts": prepared.counts, "sources": prepared.sources, "read_as": prepared.read_as, "seed": args.seed, "bpe": args.bpe,
                "bpe_options": bpe, "dict": str(Path(args.dict).resolve()) if args.dict else None}
    (Path(folder or args.out) / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")


def training_command(prepared: Prepared, args: Namespace, method: str = "leebert") -> str:
    """The fairseq-hydra-train command for this data: GLUE's recipe (10 epochs at batch 32, 6% warm-up),
    ``num_classes`` filled in, and the converter's checkpoint when ``--dict`` is one it wrote."""
    out = Path(args.out).resolve()
    updates = 10 * math.ceil(prepared.counts["train"] / 32)
    config = f"sts_b_{method}" if prepared.kind == "regression" else f"sst_2_{method}"
    parts = ["fairseq-hydra-train --config-dir configs", f"--config-name {config}", f"task.data={out}",
             f"task.num_classes={prepared.num_classes}", f"checkpoint.save_dir={out.parent / (out.name + '-' + method)}",
             f"optimization.max_update={updates}", f"lr_scheduler.warmup_updates={max(1, round(0.06 * updates))}"]
    converted = Path(args.dict).parent / "convert.json" if args.dict else None
    if converted is not None and converted.is_file():
        summary = json.loads(converted.read_text(encoding="utf-8"))
        parts += [f"checkpoint.restore_file={(converted.parent / 'model.pt').resolve()}", f"model._name={summary['arch']}",
                  *[f"++model.{k}={v}" for k, v in summary.get("model_overrides", {}).items()],
                  "task.separator_token=null"]
        if "minilm" in summary["arch"]:  # a sentence embedder trained with mean pooling
            parts.append("++model.exit_pooling=mean")
    else:
        parts.append("checkpoint.restore_file=/path/to/the/checkpoint/of/--dict/model.pt")
    return " \\\n    ".join(parts)
