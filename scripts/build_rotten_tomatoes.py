#!/usr/bin/env python3
"""Write a rotten-tomatoes split in SST-2 layout (the bundled default was made with the defaults).

    python scripts/build_rotten_tomatoes.py OUT_DIR [--sizes 1600 200 200] [--seed 1] [--overwrite]
"""
import argparse
from pathlib import Path

from leebert_plugin import cli
from leebert_plugin.data import rotten_tomatoes as rt


def main() -> None:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--sizes", type=int, nargs=3, default=[1600, 200, 200], metavar=("TRAIN", "DEV", "TEST"),
                   help="snippets per split; 0 for TRAIN takes all that the other two leave")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--overwrite", action="store_true", help="replace the split files OUT_DIR already has")
    args = p.parse_args()
    cli.refuse_existing([args.out_dir / f"{name}.tsv" for name in ("train", "dev", "test")], args.overwrite)
    rows = rt.read_snippets(rt.fetch_corpus())
    train_n, dev_n, test_n = args.sizes
    dev, test, train = rt.split(rows, [dev_n, test_n, train_n], args.seed)
    rt.write_sst2_layout(args.out_dir, {"train": train, "dev": dev, "test": test})
    print(f"wrote {len(train)}/{len(dev)}/{len(test)} snippets to {args.out_dir}")


if __name__ == "__main__":
    cli.run(main)
