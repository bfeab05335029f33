#!/usr/bin/env python3
"""Write 20 Newsgroups as train/dev/test TSVs (``text<TAB>label``) for ``prepare_data``.

    python scripts/build_newsgroups.py OUT_DIR [--dev 1500] [--test 2000] [--max-words 64] [--seed 1] [--overwrite]
"""
import argparse
from pathlib import Path

from leebert_plugin import cli
from leebert_plugin.data import newsgroups as ng


def main() -> None:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--dev", type=cli.number(int, 1), default=1500, help="dev postings, drawn from the train split")
    p.add_argument("--test", type=cli.number(int, 0), default=2000, help="test postings (0: the whole test split)")
    p.add_argument("--max-words", type=cli.number(int, 1), default=ng.MAX_WORDS, help="words kept of each posting")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--overwrite", action="store_true", help="replace the split files OUT_DIR already has")
    args = p.parse_args()
    cli.refuse_existing([args.out_dir / f"{name}.tsv" for name in ("train", "dev", "test")], args.overwrite)
    train, test = (ng.read_tab(ng.fetch_split(name), args.max_words) for name in ("train", "test"))
    splits = ng.split(train, test, args.dev, args.test, args.seed)
    ng.write_tsv(args.out_dir, splits)
    print(f"wrote {', '.join(f'{name} {len(rows)}' for name, rows in splits.items())} postings to {args.out_dir}")


if __name__ == "__main__":
    cli.run(main)
