#!/usr/bin/env python3
"""Write configs/<task>_<method>.yaml for the GLUE tasks from fairseq's RoBERTa fine-tuning configs.

    python scripts/make_glue_configs.py            # (re)write them
    python scripts/make_glue_configs.py --check    # exit 1 if a committed config differs

The settings and their sources: ``leebert_plugin/data/glue_configs.py``.
"""
import argparse
from pathlib import Path

from leebert_plugin import cli
from leebert_plugin.errors import UsageError
from leebert_plugin.data.glue_configs import write_or_check

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="write nothing; fail if a committed config differs")
    args = p.parse_args()
    stale = write_or_check(ROOT / "configs", args.check)
    if stale:
        raise UsageError(f"stale configs: {', '.join(stale)}", "run scripts/make_glue_configs.py and commit them")


if __name__ == "__main__":
    cli.run(main)
