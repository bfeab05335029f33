#!/usr/bin/env python3
"""Does "at most D points lost, with confidence 1 - delta" hold on the benchmark's real exits?

    python scripts/risk_validity.py [--records rt-all=benchmarks/records/rt-all 20ng-reduced=benchmarks/records/20ng-reduced] \
        [--splits 1000] [--max-drops 1 2 5] [--confidences 0.9 0.95] [--policies normalized_entropy patience per_exit_entropy] \
        [--per-exit-splits 200] [--table risk-validity.md] [--tsv risk-validity.tsv] [--plot risk-validity.png] [--overwrite]

Per recorded run (``traces.npz``), dev and test are pooled and split at random ``--splits`` times;
each split calibrates on one half (the guaranteed rule, and today's point-estimate ``--max-drop``)
and measures the realised drop and speed-up on the other. Prints and writes the table: how often
the realised drop exceeded D, per D and confidence, and the speed-up given up against the point
estimate. The logic: ``leebert_plugin/benchmark/risk_validity.py``.
"""
import argparse
from pathlib import Path

from leebert_plugin import cli
from leebert_plugin.benchmark.risk_validity import METHODS, POLICIES, markdown, plot, records_argument, validity, write_tsv
from leebert_plugin.exits.risk_control import RISKS


def main() -> None:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", nargs="+", type=records_argument,
                   default=[records_argument("rt-all=benchmarks/records/rt-all"),
                            records_argument("20ng-reduced=benchmarks/records/20ng-reduced")],
                   help="NAME=FOLDER: a benchmark record folder and the name the table gives it")
    p.add_argument("--splits", type=cli.number(int, low=1), default=1000)
    p.add_argument("--per-exit-splits", type=cli.number(int, low=1), default=200,
                   help="the per-exit rule is refitted per split: its first N splits only")
    p.add_argument("--max-drops", type=cli.number(float, low=0, high=100, low_open=True), nargs="+", default=[1, 2, 5],
                   help="D, in accuracy points")
    p.add_argument("--confidences", type=cli.number(float, low=0, high=1, low_open=True), nargs="+", default=[0.9, 0.95])
    p.add_argument("--policies", nargs="+", default=list(POLICIES))
    p.add_argument("--risks", nargs="+", choices=RISKS, default=list(RISKS))
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--calibration-fraction", type=cli.number(float, low=0, high=1, low_open=True), default=0.5)
    p.add_argument("--seed", type=cli.number(int, low=0), default=0)
    p.add_argument("--table", type=Path, default=Path("risk-validity.md"))
    p.add_argument("--tsv", type=Path, default=Path("risk-validity.tsv"))
    p.add_argument("--plot", type=Path, default=Path("risk-validity.png"))
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args()
    cli.refuse_existing([args.table, args.tsv, args.plot], args.overwrite)
    rows = validity(dict(args.records), args.policies, args.max_drops, args.confidences, args.splits,
                    args.calibration_fraction, args.seed, args.methods, args.risks, print, args.per_exit_splits)
    for path in (args.table, args.tsv, args.plot):
        path.parent.mkdir(parents=True, exist_ok=True)
    write_tsv(rows, args.tsv)
    table = markdown(rows)
    args.table.write_text(table)
    plot(rows, args.plot)
    print(table)
    print(f"wrote {args.table}, {args.tsv} and {args.plot}")


if __name__ == "__main__":
    cli.run(main)
