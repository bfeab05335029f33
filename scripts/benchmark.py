#!/usr/bin/env python3
"""Accuracy against speed-up for every method, paired by seed, with intervals, on real data.

    bash scripts/prepare_offline_benchmark.sh                        # once: MiniLM, rotten tomatoes, 20 Newsgroups
    python scripts/benchmark.py --setting reduced                    # 6 methods x 5 seeds, 1,000 snippets, 2 epochs
    python scripts/benchmark.py --setting medium                     # 3,000 snippets (one 3-hour session, 2 cores)
    python scripts/benchmark.py --setting full --dataset 20ng        # the whole training set (a GPU)
    python scripts/benchmark.py --setting reduced --ablation distill weights   # + LeeBERT's ablations
    python scripts/benchmark.py --across runs/benchmark/rt-reduced runs/benchmark/rt-medium   # sizes side by side

Every run is a real ``fairseq-hydra-train`` of the GLUE SST-2 config of the method (full
fine-tuning with the last exit only, PABEE, DeeBERT's two stages, LeeBERT with ``clo``, SmartBERT's
two stages, and full fine-tuning trained as SmartBERT's backbone) from the converted
all-MiniLM-L6-v2, under one shared budget (epochs, batch size, learning rate, exit pooling, exit
learning-rate scale; ``leebert_plugin/benchmark/recipe.py``), but for the two-stage methods, which
train their authors' schedules (SmartBERT 5 + 4 epochs, DeeBERT 3 + 3; each stage with its own
warm-up and decay), and ``full_ft_smartbert``, which trains SmartBERT's stage-1 epochs. The setting's
epochs (and ``--epochs``) are the shared budget's.
The last checkpoint of each run is evaluated on dev and test at every point of its policy grid
(``leebert_plugin/benchmark/evaluation.py``); the point "at S x" is chosen on dev and read on
test (``choice.py``); methods are compared by paired differences with a 95% interval over seeds
and a paired bootstrap over test examples within each seed (``stats.py``, ``report.py``). Finished
runs are reused (each records its overrides and budget; one trained under others is refused, not
mixed in); a killed run resumes from its last checkpoint (``matrix.py``).

Writes ``OUT/<method>/seed<k>/`` (checkpoints, train.log, result.json, outcomes.npz, traces.npz
for runs without gates: every exit's dev and test logits, and weights.json for runs that learn their
loss weights: the weights' trajectory over updates and their final distance from uniform);
``OUT/points.tsv`` (with the per-exit rule's calibrated thresholds) and ``OUT/summary.md`` (both with
every ablation variant finished in OUT at these seeds, this invocation's and earlier ones');
``OUT/pareto.png`` and ``OUT/rules.png`` (this invocation's runs' fronts; the latter: the per-exit
rule against the published ones); with variants, ``OUT/ablations.png`` (every variant of the summary
beside its method, one panel per ablation, means over seeds with their intervals); for runs that
learn their loss weights, ``OUT/weights_<run>.png`` (their trajectories, one panel per term group,
seeds overlaid) and a table of their final distance from uniform at the end of ``summary.md``.
Training and evaluation run on ``--device`` (default: CUDA if available, else the CPU), one GPU at
most: fairseq-train on several would multiply the batch, and with it the shared budget. Runs that
an older evaluation scored are scored again (not retrained) when the evaluation changes: from their
traces when they have them, else from their checkpoint.
"""
import argparse
import sys
from pathlib import Path

import leebert_plugin  # noqa: F401
from leebert_plugin import cli
from leebert_plugin.benchmark.ablations import ABLATIONS, variants
from leebert_plugin.benchmark.matrix import (
    DATASETS, ROOT, SETTINGS, SIZES, Matrix, across_columns, check_overrides, run_matrix, summary_runs, weight_records,
    write_points,
)
from leebert_plugin.benchmark.plots import plot, plot_ablations, plot_rules
from leebert_plugin.benchmark.recipe import METHODS, Budget
from leebert_plugin.benchmark.report import across_tables, summary
from leebert_plugin.benchmark.gate_diagnostics import gate_table
from leebert_plugin.benchmark.weights import spread_table, write_weight_figures
from leebert_plugin.data.checks import label_count
from leebert_plugin.runtime.devices import add_device_argument, resolve_device
from leebert_plugin.errors import UsageError
from leebert_plugin.runtime.outputs import check_folder, files_of, write_text
from leebert_plugin.models.exit_roberta import arch_layers


def main() -> None:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setting", choices=list(SETTINGS), default="reduced", help="training-set size and epochs")
    p.add_argument("--dataset", choices=list(DATASETS), default="rt")
    p.add_argument("--size", choices=list(SIZES), help="training-set size (default: the setting's)")
    p.add_argument("--offline", type=Path, default=ROOT / "runs" / "offline", help="prepare_offline_benchmark.sh's OUT")
    p.add_argument("--data", type=Path, help="preprocessed data (default: the setting's, under --offline)")
    p.add_argument("--restore", default=None, help="encoder checkpoint (default: --offline/minilm/model.pt; "
                                                   "'none' trains from scratch)")
    p.add_argument("--arch", default="exit_bert_minilm_l6")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--epochs", type=int, help="default: the setting's")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--exit-pooling", choices=["cls", "mean"], default="mean")
    p.add_argument("--exit-lr-scale", type=float, default=10.0)
    p.add_argument("--ablation", nargs="+", default=[], metavar="NAME",
                   help=f"also train the variants of these ablations ('all', or of: {', '.join(ABLATIONS)}; "
                        "or single variants by name, e.g. leebert-darts2), each paired with its method's runs "
                        "in the same --out")
    p.add_argument("--bootstrap", type=cli.number(int, 1), default=2000,
                   help="resamples of the paired bootstrap of each seed (not used by --across)")
    p.add_argument("--override", action="append", default=[], metavar="[METHOD:]KEY=VALUE",
                   help="an extra hydra override for every run (or METHOD's runs only), replacing the "
                        "benchmark's own value of KEY, e.g. smartbert:+model.skip_gate_bias=-3; repeatable")
    p.add_argument("--out", type=Path, default=None, help="default: runs/benchmark/<dataset>-<setting>")
    p.add_argument("--across", type=Path, nargs="+", metavar="OUT",
                   help="train nothing: print the finished runs of these --out folders side by side (one "
                        "column each, e.g. the sizes of one data set), each method compared within its own seeds; "
                        "the methods of --methods and the variants of --ablation (default: the methods only; a "
                        "variant gets its accuracy row, no comparison)")
    add_device_argument(p)
    args = p.parse_args()
    if args.across:  # the methods of --methods and the variants of --ablation, folder by folder
        columns = across_columns(args.across, args.methods, [v.name for v in variants(args.ablation)])
        print("\n".join(across_tables(columns)))
        return
    device = resolve_device(args.device)  # first: a wrong device, arch or ablation is refused before anything is read
    layers = arch_layers(args.arch)
    ablation = variants(args.ablation)
    size, epochs = SETTINGS[args.setting]
    size = args.size or size
    epochs = args.epochs or epochs
    data = (args.data or args.offline / (DATASETS[args.dataset] + SIZES[size])).resolve()
    restore = None if args.restore == "none" else str(Path(args.restore or args.offline / "minilm" / "model.pt").resolve())
    out = (args.out or ROOT / "runs" / "benchmark" / f"{args.dataset}-{args.setting}").resolve()
    check_folder(out, "--out", beside=False)  # before hours of training, not after them
    if not (data / "input0" / "train.idx").is_file() or (restore and not Path(restore).is_file()):
        raise UsageError(f"{data} or {restore} is missing",
                         "run bash scripts/prepare_offline_benchmark.sh first (or pass --data/--restore)")
    check_overrides(args.override)
    names = list(dict.fromkeys([*args.methods, *(v.method for v in ablation), *(v.name for v in ablation)]))
    from fairseq.data import data_utils
    train_size = len(data_utils.load_indexed_dataset(str(data / "input0" / "train"), None))
    budget = Budget(epochs, args.batch_size, args.lr, args.exit_pooling, args.exit_lr_scale)
    m = Matrix(data, out, names, args.seeds, budget, train_size, args.arch, layers, restore,
               device, args.override, num_classes=label_count(str(data)),
               variants={v.name: v for v in ablation})
    try:
        runs = run_matrix(m, log=lambda line: print(line, flush=True))
    except RuntimeError as e:  # a training run failed: its log's tail, then one line
        sys.exit(str(e))
    header = (f"setting: {args.setting}; data {data} ({train_size} training examples); {epochs} epochs, batch "
              f"{args.batch_size}, lr {args.lr}, exit pooling {args.exit_pooling}, exit lr x{args.exit_lr_scale}; "
              f"seeds {args.seeds}; bootstrap {args.bootstrap} resamples" + "".join(f"; {ov}" for ov in args.override))
    shown_runs, shown = summary_runs(m, runs, variants(["all"]), log=lambda line: print(line, flush=True))
    text = summary(shown_runs, header, reps=args.bootstrap, variants=shown)
    weights = weight_records(m, list(shown_runs))  # the runs that learn their loss weights
    if weights:
        text += "\n## Learned loss weights at the end of training\n\n" + spread_table(weights)
    gates = gate_table({name: [(r.seed, r.result.get("gates")) for r in rs] for name, rs in shown_runs.items()})
    if gates:
        text += "\n## SmartBERT's gates over stage 1 (dev, mean over seeds)\n\n" + gates
    with files_of(out, "summary.md"):  # one invocation writes the summaries at a time; each file whole
        write_points(shown_runs, out / "points.tsv")
        write_text(out / "summary.md", text)
        plot(runs, out / "pareto.png")  # each run's front: this invocation's runs only
        rules = plot_rules(runs, out / "rules.png")
        panels = plot_ablations(shown_runs, shown, out / "ablations.png")  # means over seeds: every variant summarised
        figures = write_weight_figures(weights, out)
    print(text + f"wrote {out / 'summary.md'}, points.tsv, pareto.png" + (", rules.png" if rules else "")
          + (f", ablations.png ({len(panels)} panels)" if panels else "") + "".join(f", {f}" for f in figures))


if __name__ == "__main__":
    cli.run(main)
