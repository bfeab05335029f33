#!/usr/bin/env python3
"""Accuracy against layer speed-up for every method, with the same budget and seeds, on real data.

    bash scripts/prepare_offline_benchmark.sh                 # once: MiniLM + rotten tomatoes, offline
    python scripts/benchmark.py --setting reduced             # 5 methods x 3 seeds, 1,000 training snippets, 2 epochs
    python scripts/benchmark.py --setting full                # all 10,190 training snippets (hours on 2 cores)

Every run is a real ``fairseq-hydra-train`` of the GLUE SST-2 config of the method (full fine-tuning
with the last exit only, PABEE, DeeBERT's two stages, LeeBERT with ``clo``, SmartBERT's two stages)
from the converted all-MiniLM-L6-v2, with one shared budget: epochs, batch size, learning rate,
exit pooling and exit learning-rate scale. The trained model is then
evaluated on dev and test (the last checkpoint): methods without skip gates by an exact replay of their exits' logits
(``leebert_plugin/exits/evaluate.py``) under PABEE's patience (1..L-1) and a normalised-entropy
grid; SmartBERT by real gated passes over an entropy grid. The Pareto front is taken on dev; the
metric at 1.5x, 2x and 3x layer speed-up is interpolated on it and the same weights give the test
figure (thresholds are never chosen on test). Runs already finished (``result.json``) are reused.

Writes ``OUT/<method>/seed<k>/`` (checkpoints, train.log, result.json), ``OUT/points.tsv``,
``OUT/summary.md`` (mean and standard deviation over seeds, target verdicts) and ``OUT/pareto.png``.
Training and evaluation run on ``--device`` (default: CUDA if available, else the CPU), one GPU
at most: fairseq-train on several would multiply the batch, and with it the shared budget.
"""
import argparse
import csv
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Dict, List

import torch
import leebert_plugin  # noqa: F401
from leebert_plugin import cli
from leebert_plugin.benchmark.recipe import METHODS, Budget, overrides as recipe_overrides, with_overrides
from leebert_plugin.devices import add_device_argument, fairseq_env, resolve_device
from leebert_plugin.exits.evaluate import batches, load, oracle_exits, replay, run, score, trace
from leebert_plugin.exits.pareto import at_speedup, front
from leebert_plugin.exits.plotting import new_axes, save_plot
from leebert_plugin.exits.policies import build_policy
from leebert_plugin.launch import train_with_progress

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SETTINGS = {  # data folder (under --offline), epochs
    "reduced": {"data": "rt-bin-1k", "epochs": 2},
    "full": {"data": "rt-bin", "epochs": 3},
}
ENTROPY_GRID = [0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99]  # normalised entropy
GATED_GRID = [0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.65]  # nats (ln 2 = 0.69), SmartBERT's own rule
SPEEDUPS = (1.5, 2.0, 3.0)


def train(method: str, seed: int, args, save: Path) -> float:
    """One fairseq-hydra-train run, with a progress bar; returns its wall-clock seconds."""
    budget = Budget(args.epochs, args.batch_size, args.lr, args.exit_pooling, args.exit_lr_scale)
    o = recipe_overrides(method, args.data, save, seed, int(args.train_size), budget, args.arch, args.restore,
                         args.layers, args.device)
    o = with_overrides(o, overrides_for(method, args.override))
    cmd = [str(BIN / "fairseq-hydra-train"), "--config-dir", "configs", "--config-name", METHODS[method]["config"], *o]
    code, seconds = train_with_progress(cmd, save / "train.log", budget.updates(int(args.train_size)),
                                        f"{method} seed {seed}", fairseq_env(args.device))
    if code != 0:
        tail = (save / "train.log").read_text().splitlines()[-15:]
        sys.exit("\n".join(tail) + f"\nbenchmark: training {method} seed {seed} failed (log: {save / 'train.log'})")
    return seconds


def overrides_for(method: str, overrides: List[str]) -> List[str]:
    """The ``--override`` values that apply to ``method``: unprefixed ones and ``method:``-prefixed
    ones (prefix removed)."""
    out = []
    for ov in overrides:
        prefix, _, rest = ov.partition(":")
        if "=" in prefix or not rest:  # no method prefix (a ':' may sit in the value)
            out.append(ov)
        elif prefix == method:
            out.append(rest)
    return out


def evaluate(save: Path, args) -> Dict:
    """Full depth, oracle and every policy point, on dev and test, for the last checkpoint (the same
    budget for every method; no selection on dev, which stage 2 of the two-stage methods would skew)."""
    model, task = load(save / "checkpoint_last.pt", args.data, args.device)
    head = task.cfg.classification_head_name
    data = {s: batches(task, s, 64) for s in ("valid", "test")}
    traces = {s: trace(model, task, d) for s, d in data.items()}
    last = len(model.exit_layers) - 1
    out = {"layers": model.num_layers, "gated": model.skip_gates is not None, "points": []}
    classes = model.exit_heads[head].num_classes
    for s, t in traces.items():
        if model.skip_gates is None:
            out[f"{s}_full"] = score(t, torch.full((t.logits.size(1),), last), model, head)
        else:  # without an exit policy the gates still skip layers: a real pass
            out[f"{s}_full"] = run(model, task, data[s], build_policy("none", classes))
        out[f"{s}_oracle"] = score(t, oracle_exits(t), model, head)
    if len(model.exit_layers) == 1:
        return out
    if model.skip_gates is None:
        grid = [("patience", None, p) for p in range(1, model.num_layers)]
        grid += [("normalized_entropy", th, 1) for th in ENTROPY_GRID]
        for name, th, patience in grid:
            policy = build_policy(name, classes, th, patience)
            rows = {s: score(t, replay(policy, t), model, head) for s, t in traces.items()}
            out["points"].append(point(name, th, patience, rows))
    else:
        for th in GATED_GRID:
            policy = build_policy("entropy", classes, th, 1)
            out["points"].append(point("entropy", th, 1, {s: run(model, task, d, policy) for s, d in data.items()}))
    return out


def point(policy: str, threshold, patience: int, rows: Dict[str, Dict]) -> Dict:
    return {"policy": policy, "threshold": threshold, "patience": patience,
            "dev_metric": rows["valid"]["accuracy"], "dev_speedup": rows["valid"]["layer_speedup"],
            "dev_flops_speedup": rows["valid"]["flops_speedup"], "test_metric": rows["test"]["accuracy"],
            "test_speedup": rows["test"]["layer_speedup"], "test_flops_speedup": rows["test"]["flops_speedup"]}


def with_full_depth(result: Dict) -> List[Dict]:
    """The policy points plus the point without an exit policy, which every front starts from (1x,
    unless skip gates skip layers)."""
    def flops(row: Dict) -> float:  # without gates, deployed at full depth only the last exit runs: the plain model
        return row["flops_speedup"] if result.get("gated") else 1.0
    dev, test = result["valid_full"], result["test_full"]
    full = {"policy": "none", "threshold": None, "patience": 0, "dev_metric": dev["accuracy"],
            "dev_speedup": dev["layer_speedup"], "dev_flops_speedup": flops(dev),
            "test_metric": test["accuracy"], "test_speedup": test["layer_speedup"], "test_flops_speedup": flops(test)}
    return [full] + result["points"]


def mean_sd(values: List[float]) -> str:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return "not reached"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    missing = len(values) - len(vals)
    return f"{statistics.mean(vals):.2f} ± {sd:.2f}" + (f" ({missing} seed(s) not reached)" if missing else "")


def summarise(results: Dict[str, List[Dict]], args) -> str:
    lines = [f"setting: {args.setting}; data {args.data} ({args.train_size} training snippets); {args.epochs} epochs, "
             f"batch {args.batch_size}, lr {args.lr}, exit pooling {args.exit_pooling}, exit lr x{args.exit_lr_scale}; "
             f"seeds {args.seeds}" + "".join(f"; {ov}" for ov in args.override), "",
             "| method | test acc, no exit policy | its layer speed-up | at 1.5x | at 2x | at 3x | at 2x FLOPs "
             "| oracle speed-up (test) | train min/run |",
             "|---|---|---|---|---|---|---|---|---|"]
    at: Dict[str, Dict[float, List[float]]] = {}
    for method, runs in results.items():
        at[method] = {s: [at_speedup(with_full_depth(r), s)["test_metric"] for r in runs] for s in SPEEDUPS}
        flops2 = [at_speedup(with_full_depth(r), 2.0, x="dev_flops_speedup")["test_metric"] for r in runs]
        full = [r["test_full"]["accuracy"] for r in runs]
        single = method == "full_ft"
        cells = ["—"] * 4 if single else [mean_sd(at[method][s]) for s in SPEEDUPS] + [mean_sd(flops2)]
        gates = [r["test_full"]["layer_speedup"] for r in runs]  # > 1 when skip gates skip layers
        lines.append(f"| {method} | {mean_sd(full)} | {mean_sd(gates)} | " + " | ".join(cells) +
                     f" | {mean_sd([r['test_oracle']['layer_speedup'] for r in runs])}"
                     f" | {statistics.mean(r['train_seconds'] for r in runs) / 60:.1f} |")
    lines += ["", "Targets (test accuracy; speed-ups interpolated on the dev Pareto front):"]
    if "leebert" in results and "full_ft" in results:
        ref = statistics.mean(r["test_full"]["accuracy"] for r in results["full_ft"])
        lee = [at_speedup(with_full_depth(r), 1.9)["test_metric"] for r in results["leebert"]]
        lines.append(f"- LeeBERT at 1.9x: {mean_sd(lee)} vs full fine-tuning {ref:.2f} "
                     f"(target: within 0.3 points) -> {verdict(lee, lambda v: v >= ref - 0.3)}")
        for other in ("pabee", "deebert"):
            if other in results:
                gap = [a - b for a, b in zip(at["leebert"][2.0], at[other][2.0])]
                lines.append(f"- LeeBERT minus {other} at 2x: {mean_sd(gap)} (target: >= 0.5) -> "
                             f"{verdict(gap, lambda v: v >= 0.5)}")
    if "smartbert" in results and "full_ft" in results:
        ref = statistics.mean(r["test_full"]["accuracy"] for r in results["full_ft"])
        sb = [at_speedup(with_full_depth(r), 2.0, x="dev_flops_speedup")["test_metric"] for r in results["smartbert"]]
        lines.append(f"- SmartBERT at 2x FLOPs: {mean_sd(sb)} vs full fine-tuning {ref:.2f} "
                     f"(target: at most 1 point lower) -> {verdict(sb, lambda v: v >= ref - 1.0)}")
    return "\n".join(lines) + "\n"


def verdict(values: List[float], ok) -> str:
    vals = [v for v in values if not math.isnan(v)]
    if len(vals) < len(values) or not vals:
        return "MISSED (speed-up not reached on every seed)"
    return "met" if ok(statistics.mean(vals)) else "MISSED"


def plot(results: Dict[str, List[Dict]], path: Path) -> None:
    fig, ax = new_axes((7, 4.5))
    for i, (method, runs) in enumerate(results.items()):
        color = f"C{i}"
        for k, r in enumerate(runs):  # the dev front's thresholds, as measured on test
            pts = front(with_full_depth(r))
            ax.plot([p["test_speedup"] for p in pts], [p["test_metric"] for p in pts], "o-", ms=3, color=color,
                    alpha=0.8, label=method if k == 0 else None)
            ax.axvline(r["test_oracle"]["layer_speedup"], color=color, ls=":", lw=0.8)
    ceiling = max(r["test_oracle"]["layer_speedup"] for runs in results.values() for r in runs)
    ax.set_xlim(0.9, max(ceiling, 2.0) * 1.1)  # beyond every oracle ceiling: only degenerate points
    save_plot(fig, ax, "layer speed-up on test (dotted: each run's oracle ceiling)", "test accuracy (%)", path)


def main() -> None:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setting", choices=sorted(SETTINGS), default="reduced")
    p.add_argument("--offline", type=Path, default=ROOT / "runs" / "offline", help="prepare_offline_benchmark.sh's OUT")
    p.add_argument("--data", type=Path, help="preprocessed data (default: the setting's, under --offline)")
    p.add_argument("--restore", default=None, help="encoder checkpoint (default: --offline/minilm/model.pt; "
                                                   "'none' trains from scratch)")
    p.add_argument("--arch", default="exit_bert_minilm_l6")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--epochs", type=int, help="default: the setting's")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--exit-pooling", choices=["cls", "mean"], default="mean")
    p.add_argument("--exit-lr-scale", type=float, default=10.0)
    p.add_argument("--override", action="append", default=[], metavar="[METHOD:]KEY=VALUE",
                   help="an extra hydra override for every run (or METHOD's runs only), replacing the "
                        "benchmark's own value of KEY, e.g. smartbert:+model.skip_gate_bias=-3; repeatable")
    p.add_argument("--out", type=Path, default=None, help="default: runs/benchmark/<setting>")
    add_device_argument(p)
    args = p.parse_args()
    args.device = resolve_device(args.device)
    setting = SETTINGS[args.setting]
    args.data = (args.data or args.offline / setting["data"]).resolve()
    args.epochs = args.epochs or setting["epochs"]
    args.restore = None if args.restore == "none" else str(Path(args.restore or args.offline / "minilm" / "model.pt").resolve())
    args.out = (args.out or ROOT / "runs" / "benchmark" / args.setting).resolve()
    if not (args.data / "input0" / "train.idx").is_file() or (args.restore and not Path(args.restore).is_file()):
        sys.exit(f"benchmark: error: {args.data} or {args.restore} is missing. "
                 "Fix: run bash scripts/prepare_offline_benchmark.sh first (or pass --data/--restore)")
    for ov in args.override:
        prefix, _, rest = ov.partition(":")
        if "=" not in prefix and rest and prefix not in METHODS:
            p.error(f"--override {ov}: unknown method {prefix!r} (use one of {', '.join(METHODS)}, or no prefix)")
    from fairseq.data import data_utils
    args.train_size = len(data_utils.load_indexed_dataset(str(args.data / "input0" / "train"), None))
    args.layers = {"exit_bert_minilm_l6": 6}.get(args.arch, 4 if "tiny" in args.arch else 12)
    results: Dict[str, List[Dict]] = {m: [] for m in args.methods}
    for seed in args.seeds:  # every method once before the next seed: partial results stay comparable
        for method in args.methods:
            save = args.out / method / f"seed{seed}"
            done = save / "result.json"
            mine = overrides_for(method, args.override)
            if not done.is_file():
                save.mkdir(parents=True, exist_ok=True)
                print(f"benchmark: {method} seed {seed} ...", flush=True)
                seconds = train(method, seed, args, save)
                result = {"method": method, "seed": seed, "train_seconds": seconds, "overrides": mine,
                          **evaluate(save, args)}
                done.write_text(json.dumps(result, indent=1))
            result = json.loads(done.read_text())
            if result.get("overrides", []) != mine:
                sys.exit(f"benchmark: error: {done} was trained with overrides {result.get('overrides', [])}, not "
                         f"{mine}. Fix: pass --out to a new folder, or the same --override values")
            results[method].append(result)
    with open(args.out / "points.tsv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["method", "seed", "policy", "threshold", "patience", "dev_metric", "dev_speedup",
                    "dev_flops_speedup", "test_metric", "test_speedup", "test_flops_speedup"])
        for method, runs in results.items():
            for r in runs:
                for pt in with_full_depth(r):
                    w.writerow([method, r["seed"]] + [pt[k] for k in ("policy", "threshold", "patience", "dev_metric",
                                "dev_speedup", "dev_flops_speedup", "test_metric", "test_speedup", "test_flops_speedup")])
    summary = summarise(results, args)
    (args.out / "summary.md").write_text(summary)
    plot(results, args.out / "pareto.png")
    print(summary + f"wrote {args.out / 'summary.md'}, points.tsv and pareto.png")


if __name__ == "__main__":
    cli.run(main)
