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
import shutil
from argparse import Namespace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from leebert_plugin import cli
from leebert_plugin.data.binarize import fairseq_preprocess
from leebert_plugin.data.bpe_encode import build, encode_lines, parse_with_bpe, write_lines
from leebert_plugin.data.glue_tasks import GlueTask, Layout, get_task
from leebert_plugin.data.glue_tsv import Row, read_rows
from leebert_plugin.data.sentencepiece_glue import write_sentencepiece_dict
from leebert_plugin.data.wordpiece_vocab import dict_symbols, load_vocab, write_dict
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


def check_source_dict(args: Namespace) -> None:
    """``--dict`` exists (and, for wordpiece, lists the vocabulary's tokens in order); gpt2 needs one."""
    if args.dict is None:
        if args.bpe == "gpt2":
            raise UsageError(f"--bpe {args.bpe} needs --dict",
                             "pass the checkpoint's dict.txt (for gpt2: the dict.txt of roberta.base)")
        return
    if not args.dict.is_file():
        raise UsageError(f"--dict {args.dict} does not exist", "pass the dict.txt of the checkpoint you fine-tune")
    if args.bpe == "wordpiece" and _symbols(args.dict) != dict_symbols(load_vocab(args.wordpiece_vocab)):
        raise UsageError(f"--dict {args.dict} does not list the tokens of {args.wordpiece_vocab} in its order",
                         "pass the dict.txt the BERT converter wrote from this vocab.txt, or drop --dict")


def source_dict(args: Namespace, raw: Path) -> Path:
    """The dictionary of the encoded text: ``--dict``, else ``raw/dict.txt`` derived from the bpe's vocabulary."""
    if args.dict is not None:
        return args.dict
    derived = raw / "dict.txt"
    if args.bpe == "wordpiece":
        write_dict(load_vocab(args.wordpiece_vocab), derived)
    else:
        write_sentencepiece_dict(Path(args.sentencepiece_model), derived)
    return derived


def _kind(split: str) -> str:
    """fairseq-preprocess's split kind: ``valid1`` -> ``valid``."""
    return split.rstrip("0123456789")


def _symbols(dict_file: Path) -> List[str]:
    return [line.rsplit(" ", 1)[0] for line in dict_file.read_text(encoding="utf-8").splitlines() if line.strip()]


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
    check_source_dict(args)  # every check before anything in OUT is replaced
    build(args)
    raw = out / "raw"
    for sub in ("input0", "input1", "label", "raw"):
        shutil.rmtree(out / sub, ignore_errors=True)
    raw.mkdir(parents=True)
    srcdict = source_dict(args, raw)
    for stem, (split, layout) in files.items():
        for k, column in enumerate(layout.inputs):
            sentences = [row[column] for row in tables[stem]]
            write_lines(raw / f"{split}.raw.input{k}", sentences)
            write_lines(raw / f"{split}.input{k}", encode_lines(args, sentences, args.workers))
    labelled: Dict[str, List[Path]] = {}
    for split, values in labels.items():
        write_lines(raw / f"{split}.label", values)
        labelled.setdefault(_kind(split), []).append(raw / f"{split}.label")
    for k in range(len(task.files["train"][1].inputs)):
        prefs: Dict[str, List[Path]] = {}
        for split, _ in files.values():
            prefs.setdefault(_kind(split), []).append(raw / f"{split}.input{k}")
        fairseq_preprocess(out / f"input{k}", prefs, srcdict, args.workers)
    if task.labels is None:  # regression: the task reads label/<split>.label as text
        (out / "label").mkdir()
        for path in sum(labelled.values(), []):
            shutil.copy(path, out / "label" / path.name)
    else:
        label_dict = raw / "label.dict.txt"
        write_lines(label_dict, [f"{label} 1" for label in task.labels])
        fairseq_preprocess(out / "label", labelled, label_dict, args.workers)
    return {split: len(tables[stem]) for stem, (split, _) in files.items()}


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", help="CoLA, SST-2, MRPC, QQP, STS-B, MNLI, QNLI, RTE or WNLI")
    p.add_argument("glue_dir", type=Path, help="GLUE's download folder (holding TASK/) or the task's own folder")
    p.add_argument("out", type=Path, help="output folder: OUT/input0, OUT/input1, OUT/label, OUT/raw")
    p.add_argument("--dict", type=Path, help="fairseq dict.txt of the checkpoint (required for gpt2; "
                                             "derived from the vocabulary for wordpiece and sentencepiece)")
    p.add_argument("--workers", type=int, default=1, help="processes for bpe encoding and fairseq-preprocess")
    p.add_argument("--skip-bad-rows", action="store_true", help="drop rows with another number of columns")
    p.add_argument("--labelled-test", action="store_true",
                   help="test TSVs have dev's layout, labels included (your own split, not GLUE's unlabelled test)")
    args = parse_with_bpe(p, argv, choices=BPES)
    counts = preprocess_task(args.task, args.glue_dir, args.out, args)
    print(f"preprocessed {args.task} into {args.out}: " + ", ".join(f"{s} {n}" for s, n in counts.items()))


if __name__ == "__main__":
    cli.run(main)
