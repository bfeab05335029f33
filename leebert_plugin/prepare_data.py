"""Your own labelled data -> fairseq binaries, in one command; prints the command that trains on them.

    python -m leebert_plugin.prepare_data --train reviews.tsv --out runs/reviews-bin \\
        --bpe wordpiece --wordpiece-vocab runs/minilm/vocab.txt --dict runs/minilm/dict.txt

TSV, CSV or JSON Lines (by extension), with a header. A TSV/CSV's separator is the extension's
unless the header holds another (``;``, ``|``: detected, and said); quotes are CSV quoting where
the file is valid so, else part of the text (a tweet's ``"I believe..." -Tanya H.``: detected, and
said); ``--delimiter`` and ``--quoting`` force either (:mod:`leebert_plugin.data.tables` says why). ``--text-columns`` names one column, or two
for sentence pairs; ``--label-column`` (default ``label``) holds any strings (classes) or numbers
(regression, detected unless ``--task-kind`` says). Class ``i`` is line ``i`` of
``OUT/label/dict.txt``: the sorted labels, or ``--labels`` in its order. Without ``--valid`` or
``--test``, that share of the training rows is drawn by ``--seed``, within each class. Bad input
is one line naming file:line and the fix; nothing in OUT is replaced unless ``--overwrite``. The
steps: :mod:`leebert_plugin.data.prepare`.
"""
import argparse
from pathlib import Path
from typing import Optional, Sequence

from leebert_plugin import cli
from leebert_plugin.data.bpe_encode import parse_with_bpe
from leebert_plugin.data.prepare import KINDS, SETTINGS_FILE, prepare, training_command
from leebert_plugin.data.tables import QUOTING, delimiter_option

BPES = ("wordpiece", "sentencepiece", "gpt2")


def parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m leebert_plugin.prepare_data", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=Path, required=True, help="training file: .tsv, .csv or .jsonl, with a header")
    p.add_argument("--valid", type=Path, help="validation file (default: --valid-fraction of --train, drawn by --seed)")
    p.add_argument("--test", type=Path, help="test file, labelled or not (default: --test-fraction of --train)")
    p.add_argument("--out", type=Path, required=True, help="output folder: OUT/input0, input1, label, raw, prepare.json")
    p.add_argument("--text-columns", nargs="+", default=["text"], metavar="COLUMN",
                   help="the text column, or two for sentence pairs (default: text)")
    p.add_argument("--label-column", default="label", help="the label column (default: label)")
    p.add_argument("--task-kind", choices=KINDS, help="default: regression if every label is a number and one "
                                                     "at least is not an integer, else classification")
    p.add_argument("--labels", help="the classes in index order, comma-separated (default: the sorted labels)")
    p.add_argument("--valid-fraction", type=cli.number(float, 0, 1), default=0.1,
                   help="share of --train drawn as validation set when no --valid (default 0.1)")
    p.add_argument("--test-fraction", type=cli.number(float, 0, 1), default=0.1,
                   help="share of --train drawn as test set when no --test (default 0.1; 0: no test set)")
    p.add_argument("--seed", type=cli.number(int, 0), default=1, help="seed of the draws (default 1)")
    p.add_argument("--delimiter", type=delimiter_option, help="TSV/CSV separator: tab, comma, semicolon, pipe or one "
                                                              "character (default: the extension's, or the one the "
                                                              "header holds)")
    p.add_argument("--quoting", choices=QUOTING, default="auto",
                   help="TSV/CSV quotes: csv (a quoted field may hold the separator, \"\" is a quote), none (quotes "
                        "are text, as in GLUE's TSVs and tweets), auto (default: csv where the file is valid so, else none)")
    p.add_argument("--encoding", default="utf-8", help="text encoding of the files (default utf-8)")
    p.add_argument("--dict", type=Path, help="fairseq dict.txt of the checkpoint you fine-tune (needed for gpt2; "
                                             "the BERT converter writes one)")
    p.add_argument("--workers", type=cli.number(int, 1), default=1, help="processes for bpe and fairseq-preprocess")
    p.add_argument("--overwrite", action="store_true", help="replace data already in OUT (kept until the new data is whole)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_with_bpe(parser(), argv, choices=BPES)
    prepared = prepare(args)
    counts = ", ".join(f"{name} {n}" for name, n in prepared.counts.items())
    what = "regression" if prepared.kind == "regression" else f"{len(prepared.classes)} classes: " + ", ".join(
        f"{i}={name}" for i, name in enumerate(prepared.classes))
    for path, how in prepared.read_as.items():
        print(f"read {path}: {how}")
    print(f"prepared {args.out} ({counts}; {what}; settings in {args.out / SETTINGS_FILE})")
    print("train with (from the repository root, .venv/bin on PATH):\n  " + training_command(prepared, args))


if __name__ == "__main__":
    cli.run(main)
