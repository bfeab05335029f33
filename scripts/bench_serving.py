#!/usr/bin/env python3
"""Per-sentence latency (batch 1) and throughput (batch 32) of predict, full depth against early exit.

    python scripts/bench_serving.py MODEL_DIR TEXT_FILE --policy normalized_entropy --threshold 0.85 \
        [--samples 256] [--batch-sizes 1 32] [--rounds 5] [--device cpu]

MODEL_DIR: a folder ``python -m leebert_plugin.export`` wrote (or a checkpoint with ``--data``, and
``--bpe NAME`` with its options unless DATA has the ``prepare.json`` that records it);
TEXT_FILE: one sentence a line (a TSV's first column). The logic: ``leebert_plugin/benchmark/serving.py``.
"""
import argparse
from pathlib import Path

import leebert_plugin  # noqa: F401
from leebert_plugin import cli
from leebert_plugin.data.bpe_encode import parse_with_optional_bpe
from leebert_plugin.runtime.devices import add_device_argument
from leebert_plugin.hub import EarlyExitClassifier
from leebert_plugin.benchmark.serving import measure, read_sentences, table


def main() -> None:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="an export folder (or a checkpoint, with --data)")
    p.add_argument("text", type=Path, help="sentences, one a line (a TSV: its first column; a header line is skipped with --header)")
    p.add_argument("--data", help="the data folder, for a checkpoint")
    p.add_argument("--header", action="store_true", help="skip the text file's first line")
    p.add_argument("--policy", default="normalized_entropy")
    p.add_argument("--threshold", type=cli.number(float))
    p.add_argument("--exit-patience", dest="patience", type=cli.number(int, low=1), default=1,
                   help="for the patience and pcee policies (as the other scripts and fairseq-validate name it)")
    p.add_argument("--samples", type=cli.number(int, low=1), default=256)
    p.add_argument("--batch-sizes", type=cli.number(int, low=1), nargs="+", default=[1, 32])
    p.add_argument("--rounds", type=cli.number(int, low=1), default=5)
    add_device_argument(p)
    args, bpe_options = parse_with_optional_bpe(p, default_help="an export's own, or the one DATA/prepare.json records")
    sentences = read_sentences(args.text, args.header, args.samples)
    clf = EarlyExitClassifier.from_pretrained(args.model, data=args.data, bpe=args.bpe, device=args.device, **bpe_options)
    figures = [measure(clf, sentences, b, args.policy, args.threshold, args.patience, args.rounds) for b in args.batch_sizes]
    print(f"{len(sentences)} sentences of {args.text}, {args.policy} threshold {args.threshold}, device {clf.device}, "
          f"median of {args.rounds} interleaved rounds")
    print(table(figures, clf.model.num_layers))


if __name__ == "__main__":
    cli.run(main)
