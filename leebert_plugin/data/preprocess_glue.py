"""A GLUE task's TSV files -> bpe-encoded text -> fairseq binaries, fairseq's RoBERTa recipe for any bpe.

    python -m leebert_plugin.data.preprocess_glue TASK GLUE_DIR OUT --bpe wordpiece --wordpiece-vocab vocab.txt

As ``examples/roberta/preprocess_GLUE_tasks.sh``: the task's sentence columns (``glue_tasks.py``) go
to ``OUT/input0`` (and ``OUT/input1`` for pairs), bpe-encoded (``bpe_encode``) and binarised by
fairseq-preprocess with the checkpoint's ``--dict``; ``dev`` becomes ``valid`` (MNLI: ``valid`` =
dev_matched, ``valid1`` = dev_mismatched; ``test``/``test1`` likewise). Labels go to ``OUT/label``,
binarised with a fixed label dictionary in the task's label order (class ``i`` = line ``i`` of
``OUT/label/dict.txt``), not fairseq's frequency order; STS-B's scores are written as text, divided
by 5. Encoded text and the dictionaries are kept in ``OUT/raw``.
"""
import argparse
from argparse import Namespace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from leebert_plugin import cli
from leebert_plugin.data.bpe_encode import parse_with_bpe
from leebert_plugin.data.glue_tasks import GlueTask, Layout, get_task
from leebert_plugin.data.glue_tsv import Row, read_rows
from leebert_plugin.data.layout import Split, write_layout
from leebert_plugin.errors import UsageError

SKIP_HINT = ", or pass --skip-bad-rows to drop such rows (fairseq's recipe drops them for QQP)"
STSB_MAX = 5.0
BPES = ("gpt2", "wordpiece", "sentencepiece")


def task_dir(glue_dir: Path, task: GlueTask) -> Path:
    """``GLUE_DIR/TASK`` (GLUE's download layout), or ``GLUE_DIR`` itself if it holds the TSVs."""
    if not glue_dir.is_dir():
        raise UsageError(f"GLUE directory {glue_dir} does not exist", "pass the folder GLUE's download script wrote")
    nested = glue_dir / task.name
    return nested if nested.is_dir() or not (glue_dir / f"{task.required[0]}.tsv").is_file() else glue_dir


def check_labels(path: Path, rows: Sequence[Row], layout: Layout, task: GlueTask) -> List[str]:
    """The label column, checked against the task's labels (or as STS-B scores in [0, 5], scaled to [0, 1])."""
    out = []
    for row in rows:
        value, number = row[layout.label], row.line
        if task.labels is not None:
            if value not in task.labels:
                raise UsageError(f"{path}:{number} has the label {value!r}, not one of {task.name}'s {list(task.labels)}",
                                 "fix the label, or check that the file is this task's")
            out.append(value)
            continue
        try:
            score = float(value)
        except ValueError:
            score = -1.0
        if not 0.0 <= score <= STSB_MAX:
            raise UsageError(f"{path}:{number} has the score {value!r}, not a number in [0, 5]",
                             "fix the score, or check that the file is STS-B's")
        out.append(repr(score / STSB_MAX))
    return out


def preprocess_task(name: str, glue_dir: Path, out: Path, args: Namespace) -> Dict[str, int]:
    """Preprocess one task into ``out``; returns the number of rows of each fairseq split."""
    task = get_task(name)
    folder = task_dir(Path(glue_dir), task)
    files = {stem: spec for stem, spec in task.files.items()
             if stem in task.required or (folder / f"{stem}.tsv").is_file()}
    if getattr(args, "labelled_test", False):  # test files laid out like dev, labels kept
        dev_layout = next(layout for split, layout in task.files.values() if split == "valid")
        files = {stem: (split, dev_layout if split.startswith("test") else layout) for stem, (split, layout) in files.items()}
    tables = {stem: read_rows(folder / f"{stem}.tsv", layout.columns, layout.header, args.skip_bad_rows, SKIP_HINT)[1]
              for stem, (_, layout) in files.items()}
    labels = {split: check_labels(folder / f"{stem}.tsv", tables[stem], layout, task)
              for stem, (split, layout) in files.items() if layout.label is not None}
    splits = [Split(split, [[row[c] for row in tables[stem]] for c in layout.inputs], labels.get(split))
              for stem, (split, layout) in files.items()]
    write_layout(out, splits, task.labels, args, args.workers, getattr(args, "overwrite", False))
    return {split: len(tables[stem]) for stem, (split, _) in files.items()}


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", help="CoLA, SST-2, MRPC, QQP, STS-B, MNLI, QNLI, RTE or WNLI")
    p.add_argument("glue_dir", type=Path, help="GLUE's download folder (holding TASK/) or the task's own folder")
    p.add_argument("out", type=Path, help="output folder: OUT/input0, OUT/input1, OUT/label, OUT/raw")
    p.add_argument("--dict", type=Path, help="fairseq dict.txt of the checkpoint (required for gpt2; "
                                             "derived from the vocabulary for wordpiece and sentencepiece)")
    p.add_argument("--workers", type=int, default=1, help="processes for bpe encoding and fairseq-preprocess")
    p.add_argument("--overwrite", action="store_true", help="replace a layout already in OUT (kept until the new one is whole)")
    p.add_argument("--skip-bad-rows", action="store_true", help="drop rows with another number of columns")
    p.add_argument("--labelled-test", action="store_true",
                   help="test TSVs have dev's layout, labels included (your own split, not GLUE's unlabelled test)")
    args = parse_with_bpe(p, argv, choices=BPES)
    counts = preprocess_task(args.task, args.glue_dir, args.out, args)
    print(f"preprocessed {args.task} into {args.out}: " + ", ".join(f"{s} {n}" for s, n in counts.items()))


if __name__ == "__main__":
    cli.run(main)
