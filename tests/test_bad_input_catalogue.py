"""The bad-input catalogue: one row per input a user can get wrong, across the CLI and the configs.

Every row runs the real command and must end in exactly one ``leebert-plugin: error: ... Fix: ...``
line, a non-zero exit and no traceback, with the guarded directory (the save dir, or the directory
of the checkpoint under validation) left exactly as it was. Hydra typos are the one exception to
the line format: hydra rejects them before the plugin is imported, with its own short report
("Could not override 'task.exit_polcy'. ... Key 'exit_polcy' is not in struct", five lines) and no
traceback.
"""
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List

import pytest
import torch

from conftest import hydra_train
from helpers import BIN, LEEBERT_SHORT, ROOT, SMARTBERT_SHORT, assert_refused, digest, guarded_dir, run

SMARTBERT = [*SMARTBERT_SHORT, "optimization.max_epoch=2"]  # refused before training: no epoch runs


@dataclass
class Case:
    """``tool``: train (fairseq-hydra-train CONFIG), argparse_train (fairseq-train of the tiny model),
    validate (fairseq-validate), thresholds (the script), python (``python ARGS``: ``-m MODULE`` or a
    script), full_disk (``python -m MODULE`` on a disk that fills up: tests/disk_full_probe).
    ``guard``: the placeholder of the folder left exactly as it was (default: the save dir, or the
    trained checkpoint's dir).

    ``args`` may name ``{data}``, ``{save}``, ``{ckpt}`` (the trained checkpoint), ``{plain}`` (a plain
    RoBERTa checkpoint) and the files :data:`FILES` builds in the test's tmp dir.
    """

    tool: str
    args: List[str]
    words: List[str]
    config: str = "mr_multi_exit"
    hydra_typo: str = ""  # the misspelt key: hydra's own report instead of the plugin's line
    guard: str = ""  # the placeholder of the folder that must be left as it was (default: save dir / checkpoint dir)


CATALOGUE: Dict[str, Case] = {
    # data directories and splits
    "train: missing data directory": Case("train", ["task.data=/nonexistent/mr-bin"],
                                          ["'/nonexistent/mr-bin' does not exist"]),
    "validate: missing data directory": Case("validate", ["/nonexistent/data"], ["does not exist"]),
    "validate: missing split": Case("validate", ["{data}", "--valid-subset", "dev"], ["split 'dev' is missing", "valid"]),
    "validate: empty validation split": Case("validate", ["{empty_split_data}", "--valid-subset", "empty"],
                                             ["split 'empty'", "holds no sentences"]),
    "train: num_classes mismatch": Case("train", ["task.num_classes=3"], ["num_classes=3", "lists 2 labels", "num_classes=2"]),
    # policies and thresholds
    "train: unknown policy in the config": Case("train", ["task.exit_policy=entropi"], ["unknown exit policy 'entropi'"]),
    "train: threshold out of range in the config": Case("train", ["task.exit_policy=max_prob", "task.exit_threshold=1.5"],
                                                        ["1.5 is out of range"]),
    "validate: unknown policy": Case("validate", ["{data}", "--exit-policy", "entropi", "--exit-threshold", "0.1"],
                                     ["unknown exit policy"]),
    "validate: threshold out of range": Case("validate", ["{data}", "--exit-policy", "normalized_entropy",
                                                          "--exit-threshold", "1.5"], ["1.5 is out of range", "[0, 1]"]),
    "validate: entropy above ln C": Case("validate", ["{data}", "--exit-policy", "entropy", "--exit-threshold", "0.9"],
                                         ["out of range", "0.6931"]),
    "train: per-exit thresholds of the wrong count": Case(
        "train", ["task.exit_policy=per_exit_entropy", "task.exit_thresholds='0.2,0.3'"],
        ["2 exit thresholds for a model with", "one per exit but the last"]),
    "validate: patience below 1": Case("validate", ["{data}", "--exit-policy", "patience", "--exit-patience", "0"],
                                       ["patience=0 is below 1"]),
    "validate: threshold missing": Case("validate", ["{data}", "--exit-policy", "max_prob"], ["needs a threshold"]),
    "thresholds script: one threshold out of range": Case("thresholds", ["--policy", "max_prob", "--thresholds", "0.9", "1.5"],
                                                          ["1.5 is out of range"]),
    "thresholds script: unknown policy": Case("thresholds", ["--policy", "entropi", "--thresholds", "0.1"],
                                              ["unknown exit policy 'entropi'"]),
    "thresholds script: missing checkpoint": Case("thresholds", ["--policy", "max_prob", "--thresholds", "0.9",
                                                                 "--checkpoint", "{tmp}/nope.pt"], ["nope.pt does not exist"]),
    "thresholds script: a checkpoint another task saved": Case(
        "thresholds", ["--policy", "max_prob", "--thresholds", "0.9", "--checkpoint", "{other_task}"],
        ["saved by task 'masked_lm', not by a fine-tuning run", "convert_hf_bert.py wrote is fine-tuned first"]),
    # model, criterion and optimizer settings
    "train: unknown exit head": Case("train", ["model.exit_head=highway"], ["unknown exit head 'highway'"]),
    "train: exit layers without the last": Case("train", ["model.exit_layers='1,2'"], ["no exit at the last layer"]),
    "train: unknown exit weighting": Case("train", ["criterion.exit_weighting=descending"], ["unknown exit_weighting"]),
    "leebert: unknown clo mode": Case("train", [*LEEBERT_SHORT, "optimizer.mode=darts3"], ["unknown clo mode 'darts3'"],
                                      "mr_leebert"),
    "leebert: split ratio outside (0, 1)": Case("train", [*LEEBERT_SHORT, "task.d2_ratio=1.5"],
                                                ["d2_ratio=1.5 is outside (0, 1)"], "mr_leebert"),
    "leebert: negative weight learning rate": Case("train", [*LEEBERT_SHORT, "optimizer.w_lr=-0.01"],
                                                   ["optimizer.w_lr=-0.01 must be positive", "(0, inf)"], "mr_leebert"),
    "smartbert: negative soft-gate epochs": Case("train", [*SMARTBERT, "task.soft_gate_epochs=-1"],
                                                 ["task.soft_gate_epochs=-1 is negative"], "mr_smartbert"),
    "leebert: empty D2": Case("train", [*LEEBERT_SHORT, "task.d2_ratio=0.0001"], ["D2 is empty", "more training data"],
                              "mr_leebert"),
    "leebert: distillation variant typo": Case("train", [*LEEBERT_SHORT, "criterion.distill=lea"],
                                               ["unknown distillation variant 'lea'"], "mr_leebert"),
    "smartbert: learned weights (clo) with two stages": Case(
        "train", [*SMARTBERT, "+criterion.learn_weights=true", "optimizer._name=clo"],
        ["for one-stage training", "task.stage1_epochs=0"], "mr_smartbert"),
    "smartbert: stage 2 without a stage-1 checkpoint": Case(
        "train", [*SMARTBERT_SHORT, "checkpoint.no_save=true", "optimization.max_epoch=2"],
        ["stage 2 needs a stage-1 checkpoint"], "mr_smartbert"),
    "smartbert: stage 2 would never run (stage1_epochs >= max_epoch)": Case(
        "train", [*SMARTBERT_SHORT, "optimization.max_epoch=1"],
        ["optimization.max_epoch=1 with optimization.max_update=1000", "inside stage 1", "start at epoch 2",
         "max_epoch to at least 2", "task.stage1_only=true"], "mr_smartbert"),
    "smartbert: skip threshold outside (0, 1]": Case("train", [*SMARTBERT, "model.skip_threshold=1.5"],
                                                     ["skip_threshold=1.5 is outside (0, 1]"], "mr_smartbert"),
    "smartbert: training with the gates off": Case("train", [*SMARTBERT, "model.skip_threshold=1"],
                                                   ["turns the skip gates off", "below 1"], "mr_smartbert"),
    "smartbert: negative lambda": Case("train", [*SMARTBERT, "criterion.gate_lambda=-0.1"],
                                       ["gate_lambda=-0.1 is negative"], "mr_smartbert"),
    "smartbert: negative eta": Case("train", [*SMARTBERT, "criterion.eta2=-1"], ["eta2=-1.0 is negative"], "mr_smartbert"),
    "smartbert: non-positive temperature": Case("train", [*SMARTBERT, "criterion.t1=0"], ["t1=0.0 must be positive"],
                                                "mr_smartbert"),
    # precision
    "train: --fp16 without a GPU (flat master copy)": Case("train", ["common.fp16=true"],
                                                          ["--fp16 without a GPU", "fp16_no_flatten_grads=true"]),
    "train: amp with bf16": Case("train", ["common.amp=true", "common.bf16=true"], ["common.amp=true with", "choose one"]),
    "train: memory-efficient bf16 alone": Case("train", ["common.memory_efficient_bf16=true"],
                                               ["trains in fp32", "common.bf16=true"]),
    # fairseq's argparse options turn --bf16 into a TPU run; its trainer then imports torch_xla
    "fairseq-train: --bf16 (argparse reads it as a TPU run)": Case("argparse_train", ["--bf16"],
                                                                  ["does not run on TPUs", "common.bf16=true"]),
    # distributed training the plugin does not support
    "train: BMUF": Case("train", ["optimization.use_bmuf=true"], ["use_bmuf=true is not supported", "drop use_bmuf"]),
    # checkpoints
    "train: restore file of another architecture": Case(
        "train", ["checkpoint.restore_file={plain}", "checkpoint.reset_optimizer=true", "+model.encoder_layers=2"],
        ["does not fit", "2-layer exit_roberta", "not in this model", "restore it into"]),
    "train: missing restore file": Case("train", ["checkpoint.restore_file={tmp}/missing.pt"],
                                        ["does not exist", "train from scratch"]),
    "train: corrupted restore file": Case("train", ["checkpoint.restore_file={corrupted}"], ["is not a readable checkpoint"]),
    "train: truncated restore file": Case("train", ["checkpoint.restore_file={truncated}"], ["is not a readable checkpoint"]),
    "train: untrusted restore file": Case("train", ["checkpoint.restore_file={untrusted}"],
                                          ["weights-only loader refuses", "Untrusted", "trust"]),
    "validate: missing checkpoint": Case("validate", ["{data}", "--path", "{tmp}/nope.pt"],
                                         ["nope.pt does not exist", "--path"]),
    "validate: --path is a directory": Case("validate", ["{data}", "--path", "{ckpt_dir}"],
                                            ["is a directory, not a checkpoint file", "checkpoint_best.pt"]),
    "validate: no batch size": Case("validate", ["{data}", "--no-batch-size"], ["no batch size was given", "--batch-size N"]),
    "train: asynchronous checkpoint writes": Case("train", ["checkpoint.write_checkpoints_asynchronously=true"],
                                                  ["write_checkpoints_asynchronously=true", "stale"]),
    # fairseq's argparse train returned status 0 here without iopath, having trained nothing
    "fairseq-train: asynchronous checkpoint writes": Case("argparse_train", ["--write-checkpoints-asynchronously"],
                                                          ["write_checkpoints_asynchronously=true", "stale"]),
    "validate: corrupted checkpoint": Case("validate", ["{data}", "--path", "{truncated}"], ["is not a readable checkpoint"]),
    "validate: pickle that runs os.system": Case("validate", ["{data}", "--path", "{malicious}"],
                                                 ["weights-only loader refuses", "system", "trust"]),
    "validate: legacy-format pickle that runs os.system": Case("validate", ["{data}", "--path", "{malicious_legacy}"],
                                                               ["weights-only loader refuses", "system", "trust"]),
    # training that diverges
    "train: NaN loss (lr 1e30), resumed from a good checkpoint": Case(
        "train", ["optimization.lr=[1e30]", "dataset.batch_size=16", "optimization.max_epoch=10",
                  "optimization.max_update=200", "lr_scheduler.warmup_updates=10", "{resume_trained}"],
        ["training loss is nan", "lower optimization.lr", "not overwritten"]),
    # data that does not match itself, the model or the checkpoint (checked before the first batch)
    "train: fewer labels than inputs": Case("train", ["task.data={short_labels}"],
                                            ["label/train has 399 rows but", "input0/train has 400", "one line per example"]),
    "train: an empty label": Case("train", ["task.data={empty_label}"], ["label/train row 3 has an empty label",
                                                                         "exactly one label"]),
    "train: a sentence longer than max_positions, not shortened": Case(
        "train", ["task.data={long_sentence}", "task.shorten_method=none"],
        ["input0/train row 5 is 301 tokens long", "max_positions=256", "shorten_method=truncate"]),
    "train: max_tokens below the longest sentence": Case("train", ["dataset.max_tokens=8"],
                                                         ["dataset.max_tokens=8 is below the longest sentence",
                                                          "at least"]),
    "train: heads that do not divide the width": Case("train", ["+model.encoder_attention_heads=3"],
                                                      ["encoder_embed_dim=64 is not divisible by encoder_attention_heads=3",
                                                       "the nearest: 2"]),
    "validate: data binarised with another dictionary of the same size": Case(
        "validate", ["{swapped_dictionary}"], ["binarised with other dictionaries", "--srcdict"]),
    "train: resuming a save dir with another criterion": Case(
        "train", [*LEEBERT_SHORT, "{resume_trained}"], ["trained with criterion multi_exit", "this run asks for leebert",
                                                        "criterion._name=multi_exit"], "mr_leebert"),
    "train: restoring another criterion's checkpoint without resetting the optimizer": Case(
        "train", [*LEEBERT_SHORT, "checkpoint.restore_file={ckpt}"],
        ["trained with criterion multi_exit", "this run asks for leebert", "checkpoint.reset_optimizer=true"],
        "mr_leebert"),
    # NaN and infinity, which every "value < low" range check lets through
    "leebert: kd_weight=nan": Case("train", [*LEEBERT_SHORT, "criterion.kd_weight=nan"],
                                   ["criterion.kd_weight=nan is not a finite number"], "mr_leebert"),
    "train: an infinite learning rate": Case("train", ["optimization.lr=[inf]"], ["optimizer.lr=[inf] is not a finite"]),
    "validate: NaN threshold": Case("validate", ["{data}", "--exit-policy", "max_prob", "--exit-threshold", "nan"],
                                    ["exit_threshold=nan is not a finite number"]),
    # issue 34: writes (outputs replaced whole by one writer; a full disk in one line)
    "export: --overwrite while another run writes that folder": Case(
        "python", ["-m", "leebert_plugin.export", "{ckpt}", "{data}", "{busy_export}", "--overwrite", "--bpe", "none"],
        ["busy/model is in use by another run", "on this host", "write to another folder"], guard="busy_export"),
    "export: --overwrite on a full disk": Case(
        "full_disk", ["leebert_plugin.export", "{ckpt}", "{data}", "{earlier_export}", "--overwrite", "--bpe", "none"],
        ["the disk mounted at", "is full", "while writing into", "earlier/model held before is kept", "another disk"],
        guard="earlier_export"),
    "export: the output folder is a file": Case("python", ["-m", "leebert_plugin.export", "{ckpt}", "{data}", "{a_file}"],
                                                ["a_file.txt is a file, not a folder"], guard="tmp"),
    "prepare_data: --overwrite while another run writes that folder": Case(
        "python", ["-m", "leebert_plugin.prepare_data", "--train", "{own_data}/reviews.tsv", "--out", "{busy_layout}",
                   "--overwrite", "--bpe", "wordpiece", "--wordpiece-vocab", "{own_data}/vocab.txt"],
        ["busy/bin is in use by another run", "on this host", "write to another folder"], guard="busy_layout"),
    "prepare_data: --overwrite on a full disk": Case(
        "full_disk", ["leebert_plugin.prepare_data", "--train", "{own_data}/reviews.tsv", "--out", "{earlier_layout}",
                      "--overwrite", "--bpe", "wordpiece", "--wordpiece-vocab", "{own_data}/vocab.txt"],
        ["the disk mounted at", "is full", "while writing into", "earlier/bin held before is kept"],
        guard="earlier_layout"),
    "prepare_data: --out is a file": Case(
        "python", ["-m", "leebert_plugin.prepare_data", "--train", "{own_data}/reviews.tsv", "--out", "{a_file}",
                   "--bpe", "wordpiece", "--wordpiece-vocab", "{own_data}/vocab.txt"],
        ["--out", "a_file.txt is a file, not a folder"], guard="tmp"),
    "train: a full disk while saving a checkpoint": Case(
        "train", ["common.user_dir={disk_full_probe}", "optimization.max_update=2", "dataset.batch_size=16"],
        ["the disk mounted at", "is full", "while writing into", "held before is kept", "another disk"]),
    "sweep: --out is a file (found before the sweep runs)": Case(
        "python", ["{scripts}/sweep_thresholds.py", "{ckpt}", "{data}", "--thresholds", "0.5", "--out", "{a_file}"],
        ["--out", "a_file.txt is a file, not a folder"], guard="tmp"),
    "sweep: a second sweep into the same --out": Case(
        "python", ["{scripts}/sweep_thresholds.py", "{ckpt}", "{data}", "--thresholds", "0.5", "--out", "{busy_sweep}",
                   "--overwrite"], ["is in use by another run", "on this host", "write to another folder"],
        guard="busy_sweep"),
    "converter: the output directory is a file": Case(
        "python", ["{scripts}/convert_hf_bert.py", "{tmp}/no-hf-dir", "{a_file}"], ["a_file.txt is a file, not a folder"],
        guard="tmp"),
    "benchmark: --out is a file (found before any training)": Case(
        "python", ["{scripts}/benchmark.py", "--out", "{a_file}", "--device", "cpu"], ["--out", "is a file, not a folder"],
        guard="tmp"),
    # hydra typos
    "hydra typo: task.exit_polcy": Case("train", ["task.exit_polcy=entropy"], [], hydra_typo="task.exit_polcy"),
    "hydra typo: optimization.lrr": Case("train", ["optimization.lrr=[1e-3]"], [], hydra_typo="optimization.lrr"),
}


class Untrusted:
    """Any class outside torch's allow-list: a pickle of it could run arbitrary code on load."""


class RunsShellCommand:
    """Unpickling this calls os.system: what an attacker's checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _empty_split_data(tmp: Path, fx: dict) -> Path:
    from fairseq.data import indexed_dataset

    data = tmp / "data"
    shutil.copytree(fx["data"], data)
    for key in ("input0", "label"):  # an empty split, as fairseq-preprocess writes for an empty file
        builder = indexed_dataset.make_builder(str(data / key / "empty.bin"), impl="mmap", vocab_size=10_000)
        builder.finalize(str(data / key / "empty.idx"))
    return data


def _edited_split(name: str, sub: str, edit: Callable[[list], list]) -> Callable[[Path, dict], Path]:
    """A copy of the data whose ``sub/train`` rows are ``edit(rows)`` (token-id tensors, </s> included)."""
    def build(tmp: Path, fx: dict) -> Path:
        from fairseq.data import Dictionary, data_utils, indexed_dataset

        data = tmp / name
        shutil.copytree(fx["data"], data)
        prefix = str(data / sub / "train")
        dictionary = Dictionary.load(str(data / sub / "dict.txt"))
        rows = edit([t.clone() for t in data_utils.load_indexed_dataset(prefix, dictionary)])
        builder = indexed_dataset.make_builder(prefix + ".bin", impl="mmap", vocab_size=len(dictionary))
        for row in rows:
            builder.add_item(row)
        builder.finalize(prefix + ".idx")
        return data
    return build


def _swapped_dictionary(tmp: Path, fx: dict) -> Path:
    """The data with two words of input0/dict.txt swapped: the same size, other token ids."""
    data = tmp / "swapped"
    shutil.copytree(fx["data"], data)
    lines = (data / "input0" / "dict.txt").read_text().splitlines()
    lines[10], lines[11] = lines[11], lines[10]
    (data / "input0" / "dict.txt").write_text("\n".join(lines) + "\n")
    return data


def _save_to(name: str, obj, legacy: bool = False) -> Callable[[Path, dict], Path]:
    def build(tmp: Path, fx: dict) -> Path:
        torch.save(obj(tmp) if callable(obj) else obj, tmp / name, _use_new_zipfile_serialization=not legacy)
        return tmp / name
    return build


def _write(name: str, content: Callable[[dict], bytes]) -> Callable[[Path, dict], Path]:
    def build(tmp: Path, fx: dict) -> Path:
        (tmp / name).write_bytes(content(fx))
        return tmp / name
    return build


def _other_task(tmp: Path, fx: dict) -> Path:
    """The trained checkpoint as another task would have saved it (what convert_hf_bert.py writes:
    task masked_lm, whose data folder layout the plugin's data does not have)."""
    state = torch.load(fx["ckpt"], map_location="cpu", weights_only=False)
    state["cfg"]["task"]["_name"] = "masked_lm"
    torch.save(state, tmp / "masked_lm.pt")
    return tmp / "masked_lm.pt"


def _resume_trained(tmp: Path, fx: dict) -> str:
    shutil.copyfile(fx["ckpt"], Path(fx["save"]) / "checkpoint_last.pt")  # the last good checkpoint
    return "checkpoint.restore_file=checkpoint_last.pt"


# issue 34: writes
def _held(folder: Path, lock: Path) -> Path:
    """``folder``'s lock held by a live run on this host (this test's own process)."""
    import json
    import socket

    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "a minute ago"}))
    return folder


def _earlier_export(name: str, busy: bool = False) -> Callable[[Path, dict], Path]:
    """An earlier export (what --overwrite may replace) in ``tmp/name/model``; ``busy``: being written."""
    def build(tmp: Path, fx: dict) -> Path:
        out = tmp / name / "model"
        out.mkdir(parents=True)
        (out / "export.json").write_text('{"format": 1}\n')
        (out / "model.pt").write_bytes(b"earlier weights")
        return _held(out, out.parent / ".model.lock") if busy else out
    return build


def _earlier_layout(name: str, busy: bool = False) -> Callable[[Path, dict], Path]:
    """An earlier prepare_data output in ``tmp/name/bin``; ``busy``: being written."""
    def build(tmp: Path, fx: dict) -> Path:
        out = tmp / name / "bin"
        (out / "input0").mkdir(parents=True)
        (out / "input0" / "dict.txt").write_text("earlier 1\n")
        (out / "prepare.json").write_text('{"earlier": true}\n')
        return _held(out, out.parent / ".bin.lock") if busy else out
    return build


def _own_data(tmp: Path, fx: dict) -> Path:
    """A labelled TSV of 40 rows and a WordPiece vocabulary, in ``tmp/own``."""
    own = tmp / "own"
    own.mkdir()
    (own / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film"]) + "\n")
    rows = [f"{'good' if i % 2 else 'bad'} film\t{'pos' if i % 2 else 'neg'}\n" for i in range(40)]
    (own / "reviews.tsv").write_text("text\tlabel\n" + "".join(rows))
    return own


def _busy_sweep(tmp: Path, fx: dict) -> Path:
    out = tmp / "sweep"
    out.mkdir()
    (out / "sweep.tsv").write_text("an earlier sweep\n")
    return _held(out, out / ".sweep.tsv.lock")


FILES = {  # placeholder -> builder(tmp_path, fixtures): the files a row needs, made on demand
    "short_labels": _edited_split("short_labels", "label", lambda rows: rows[:-1]),
    "empty_label": _edited_split("empty_label", "label", lambda rows: rows[:2] + [rows[2][-1:]] + rows[3:]),
    "long_sentence": _edited_split("long_sentence", "input0",
                                   lambda rows: rows[:4] + [torch.cat([rows[4][:1].repeat(299), rows[4][-1:]])] + rows[5:]),
    "swapped_dictionary": _swapped_dictionary,
    "empty_split_data": _empty_split_data,
    "corrupted": _write("corrupted.pt", lambda fx: b"\x00not a checkpoint" * 100),
    "truncated": _write("truncated.pt", lambda fx: Path(fx["plain"]).read_bytes()[:50_000]),
    "untrusted": _save_to("untrusted.pt", {"model": {}, "payload": Untrusted()}),
    "malicious": _save_to("malicious.pt", lambda tmp: {"model": {}, "cfg": None,
                                                        "x": RunsShellCommand(tmp / "PWNED")}),
    "malicious_legacy": _save_to("malicious_legacy.pt", lambda tmp: {"model": {}, "cfg": None,
                                                                      "x": RunsShellCommand(tmp / "PWNED")}, legacy=True),
    "resume_trained": _resume_trained,
    "other_task": _other_task,
    # issue 34: writes
    "busy_export": _earlier_export("busy", busy=True),
    "earlier_export": _earlier_export("earlier"),
    "busy_layout": _earlier_layout("busy", busy=True),
    "earlier_layout": _earlier_layout("earlier"),
    "own_data": _own_data,
    "a_file": _write("a_file.txt", lambda fx: b"not a folder"),
    "busy_sweep": _busy_sweep,
    "disk_full_probe": lambda tmp, fx: ROOT / "tests" / "disk_full_probe",
    "scripts": lambda tmp, fx: ROOT / "scripts",
}


def command(case: Case, fx: dict) -> List[str]:
    args = [a.format(**fx) for a in case.args]
    if case.tool == "train":
        if not any(a.startswith("task.data=") for a in args):
            args.insert(0, f"task.data={fx['data']}")
        return [str(BIN / "fairseq-hydra-train"), "--config-dir", "configs", "--config-name", case.config,
                f"checkpoint.save_dir={fx['save']}", *args]
    if case.tool == "argparse_train":
        return [str(BIN / "fairseq-train"), fx["data"], "--user-dir", "user_dir", "--task", "early_exit_sentence_prediction",
                "--criterion", "multi_exit", "--arch", "exit_roberta_tiny", "--num-classes", "2", "--optimizer", "adam",
                "--lr", "1e-3", "--batch-size", "16", "--max-update", "2", "--cpu", "--save-dir", fx["save"], *args]
    if case.tool == "validate":
        path = [] if "--path" in args else ["--path", fx["ckpt"]]
        batch = [] if "--no-batch-size" in args else ["--batch-size", "16"]
        args = [a for a in args if a != "--no-batch-size"]
        return [str(BIN / "fairseq-validate"), *args, *path, "--user-dir", "user_dir",
                "--task", "early_exit_sentence_prediction", *batch, "--cpu"]
    if case.tool == "python":  # python -m MODULE ... or python SCRIPT ...
        return [sys.executable, *args]
    if case.tool == "full_disk":  # python -m MODULE ... on a disk that fills up (tests/disk_full_probe)
        return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); import disk_full_probe; "
                f"disk_full_probe.run_module({args[0]!r}, {args[1:]!r})"]
    ckpt = args.pop(args.index("--checkpoint") + 1) if "--checkpoint" in args else fx["ckpt"]
    args = [a for a in args if a != "--checkpoint"]
    return [sys.executable, str(ROOT / "scripts" / "validate_thresholds.py"), ckpt, fx["data"], *args]


def assert_hydra_typo_refused(save: Path, cmd: List[str], key: str) -> None:
    """hydra's own report for a key the config does not have: short, no traceback, nothing written."""
    before = digest(save)
    proc = run(cmd)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in out
    assert f"Could not override '{key}'" in out and f"Key '{key.split('.')[-1]}'" in out, out[-2000:]
    assert digest(save) == before


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_bad_input(name, mr_bin, trained, plain_roberta, tmp_path):
    case = CATALOGUE[name]
    train = case.tool in ("train", "argparse_train")
    # the guarded dir: a save dir with an earlier result (no checkpoint_best.pt for SmartBERT, whose
    # stage 2 would start from it), or the trained checkpoint's own dir under validation
    save = guarded_dir(tmp_path, with_checkpoint=case.config != "mr_smartbert") if train else trained
    fx = {"data": str(mr_bin), "save": str(save), "ckpt": str(trained / "checkpoint_best.pt"), "ckpt_dir": str(trained),
          "plain": str(plain_roberta), "tmp": str(tmp_path)}
    for key, build in FILES.items():
        if any("{" + key + "}" in a for a in case.args):
            fx[key] = str(build(tmp_path, fx))
    cmd = command(case, fx)
    if case.guard:
        save = Path(fx[case.guard])
    if case.hydra_typo:
        assert_hydra_typo_refused(save, cmd, case.hydra_typo)
    else:
        assert_refused(save, lambda: run(cmd), *case.words)
    assert not (tmp_path / "PWNED").exists()  # no pickled global ever ran



# issue 34: api and files ------------------------------------------------------------------------
# Commands the Case tools above run (fairseq-validate's parse errors, a resume with other model
# settings, the bi-level split's status), the prepare_data and converter commands (run by
# FILE_COMMANDS below), and the Python API (API_CALLS: run in this process, where the contract is
# the exception a caller catches: a UsageError, which is a ValueError).
def _export_weights(tmp: Path, fx: dict) -> Path:
    from leebert_plugin.export import export

    out = export(Path(fx["ckpt"]), Path(fx["data"]), tmp / "export", bpe="none")
    return out / "model.pt"


def _resumed_with(override: str) -> Callable[[Path, dict], str]:
    def build(tmp: Path, fx: dict) -> str:
        _resume_trained(tmp, fx)
        return override
    return build


API_AND_FILES_FILES = {"export_weights": _export_weights,
                       "resume_other_exits": _resumed_with("model.exit_layers='2,4'"),
                       "resume_other_layers": _resumed_with("+model.encoder_layers=2")}
API_AND_FILES_CASES: Dict[str, Case] = {
    "validate: --exit-threshold abc (argparse's usage text before)": Case(
        "validate", ["{data}", "--exit-policy", "entropy", "--exit-threshold", "abc"],
        ["fairseq-validate: argument --exit-threshold: invalid float value: 'abc'"]),
    "validate: --exit-threshold 0.3,0.5": Case(
        "validate", ["{data}", "--exit-policy", "entropy", "--exit-threshold", "0.3,0.5"],
        ["invalid float value: '0.3,0.5'", "--exit-thresholds t1,t2", "per_exit_entropy"]),
    "validate: --path an export's model.pt (KeyError 'best_loss' before)": Case(
        "validate", ["{data}", "--path", "{export_weights}"],
        ["is the weights of an export folder", "EarlyExitClassifier.from_pretrained(", "checkpoint_best.pt"]),
    "leebert: D1 empty (d2_ratio=0.9999)": Case("train", [*LEEBERT_SHORT, "task.d2_ratio=0.9999"],
                                                 ["D1 is empty", "d2_ratio=0.9999", "nearer 0.5"], "mr_leebert"),
    "train: resume into a save dir whose checkpoint has other exits": Case(
        "train", ["{resume_other_exits}"], ["checkpoint_last.pt, the checkpoint this run resumes",
                                            "model.exit_layers=''", "asks for model.exit_layers='2,4'",
                                            "another checkpoint.save_dir"]),
    "train: resume into a save dir whose checkpoint has other layers": Case(
        "train", ["{resume_other_layers}"], ["checkpoint_last.pt, the checkpoint this run resumes",
                                             "model.encoder_layers=4", "asks for model.encoder_layers=2"]),
}
CATALOGUE.update(API_AND_FILES_CASES)
FILES.update(API_AND_FILES_FILES)


@pytest.mark.parametrize("name", list(API_AND_FILES_CASES))
def test_bad_input_api_and_files(name, mr_bin, trained, plain_roberta, tmp_path):
    test_bad_input(name, mr_bin, trained, plain_roberta, tmp_path)


def test_an_error_where_the_bilevel_split_is_checked_ends_with_status_1(mr_bin, tmp_path):
    """Not only "not 0": the line was followed by SIGABRT (status 134) in about 1 run of 2, which
    scripts read as a crash; three runs, so a regression is caught 7 times in 8."""
    case = CATALOGUE["leebert: D1 empty (d2_ratio=0.9999)"]
    for attempt in range(3):
        (tmp_path / str(attempt)).mkdir()
        save = guarded_dir(tmp_path / str(attempt))
        proc = run(command(case, {"data": str(mr_bin), "save": str(save)}))
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert not (save / "leebert.lock").exists()  # the exit handlers ran before the quick exit


def test_a_lock_naming_a_live_unrelated_pid_says_how_to_clear_it(mr_bin, tmp_path):
    """A pid reused after a restart: alive, but not a training run (here: a sleep this test started)."""
    import json
    import socket
    import subprocess

    save = guarded_dir(tmp_path)
    other = subprocess.Popen(["sleep", "300"])
    try:
        (save / "leebert.lock").write_text(json.dumps({"pid": other.pid, "host": socket.gethostname(),
                                                       "started": "2026-01-01 00:00:00"}))
        case = Case("train", ["optimization.max_update=2"], [])
        assert_refused(save, lambda: run(command(case, {"data": str(mr_bin), "save": str(save)})),
                       f"pid {other.pid} on this host", "its command: sleep 300", "not a run of the plugin",
                       f"ps -p {other.pid} -o pid,lstart,args", f"delete {save / 'leebert.lock'}")
    finally:
        other.kill()
        other.wait()


def _converter(hf: Callable[[Path], Path]) -> Callable[[Path], List[str]]:
    return lambda tmp: [sys.executable, str(ROOT / "scripts" / "convert_hf_bert.py"), str(hf(tmp)), str(tmp / "out")]


def _prepare(content: str, *extra: str) -> Callable[[Path], List[str]]:
    def argv(tmp: Path) -> List[str]:
        from helpers import tiny_hf_bert

        (tmp / "train.tsv").write_text(content)
        vocab = tiny_hf_bert(tmp / "bert", ["the", "film"]) / "vocab.txt"
        return [sys.executable, "-m", "leebert_plugin.prepare_data", "--train", str(tmp / "train.tsv"), "--out",
                str(tmp / "out"), "--bpe", "wordpiece", "--wordpiece-vocab", str(vocab), *extra]
    return argv


def _bert_with(**config) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        from helpers import tiny_hf_bert

        return tiny_hf_bert(tmp / "hf", ["the", "film", "the"] if config.pop("duplicate", False) else ["the", "film"],
                            **config)
    return build


ROWS = "text\tlabel\n" + "the film\ta\nfilm the\tb\n" * 10
FILE_COMMANDS: Dict[str, tuple] = {  # name -> (argv in a tmp dir, words); the guarded dir: OUT
    "converter: a duplicated token in vocab.txt": (
        _converter(_bert_with(duplicate=True)), ["hf/vocab.txt:8 repeats the token 'the' of line 6", "unchanged"]),
    "converter: config.json without intermediate_size (KeyError before)": (
        _converter(_bert_with(intermediate_size=None)), ["hf/config.json has no intermediate_size field",
                                                         "the config.json that came with these weights"]),
    "converter: config.json with a hidden_size of text": (
        _converter(_bert_with(hidden_size="128")), ["hidden_size='128' is not a whole number"]),
    "prepare_data: an unclosed quote read with --quoting csv": (
        _prepare(ROWS + '"open\ta\n', "--quoting", "csv"), ["train.tsv:22 is not valid TSV with CSV quoting",
                                                            "--quoting none"]),
    "prepare_data: a row that fits neither quoting": (
        _prepare(ROWS + '"a\tb"x\ta\n'), ["train.tsv:22 is not valid TSV with CSV quoting", "close the quote"]),
    "prepare_data: --delimiter of two characters": (_prepare(ROWS, "--delimiter", "::"),
                                                    ["--delimiter", "'::' is not tab, comma, semicolon, pipe"]),
    "prepare_data: a ';' file forced to commas": (
        _prepare(ROWS.replace("\t", ";"), "--delimiter", "comma"), ["has no header naming the columns", "--delimiter"]),
}


@pytest.mark.parametrize("name", list(FILE_COMMANDS))
def test_bad_file_commands(name, tmp_path):
    argv, words = FILE_COMMANDS[name]
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    cmd = argv(tmp_path)
    assert_refused(out, lambda: run(cmd, cwd=ROOT), *words)


@pytest.fixture(scope="module")
def api(trained, mr_bin, tmp_path_factory) -> dict:
    from leebert_plugin.export import export
    from leebert_plugin.hub import EarlyExitClassifier

    spm = {"sentencepiece_model": str(mr_bin / "raw" / "spm.model")}
    folder = export(trained / "checkpoint_best.pt", mr_bin, tmp_path_factory.mktemp("api") / "export",
                    bpe="sentencepiece", bpe_options=spm)
    return {"clf": EarlyExitClassifier.from_pretrained(str(trained / "checkpoint_best.pt"), data=str(mr_bin),
                                                       device="cpu", bpe="sentencepiece", **spm),
            "export": folder}


def _damaged(edit: Callable[[Path], None]) -> Callable[[dict, Path], object]:
    """from_pretrained of a copy of the export that ``edit`` damaged."""
    def call(fx: dict, tmp: Path):
        from leebert_plugin.hub import EarlyExitClassifier

        copy = tmp / "damaged"
        shutil.copytree(fx["export"], copy)
        edit(copy)
        return EarlyExitClassifier.from_pretrained(str(copy), device="cpu")
    return call


def _fewer_tensors(folder: Path) -> None:
    state = torch.load(folder / "model.pt", weights_only=True)
    state.pop(sorted(state)[-1])
    torch.save(state, folder / "model.pt")


def _without(key: str) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        import json

        manifest = json.loads((folder / "export.json").read_text())
        del manifest[key]
        (folder / "export.json").write_text(json.dumps(manifest))
    return edit


def _predict(*args, **kwargs) -> Callable[[dict, Path], object]:
    return lambda fx, tmp: fx["clf"].predict(*args, **kwargs)


def _served(*args, **kwargs) -> Callable[[dict, Path], object]:
    def call(fx: dict, tmp: Path):
        from leebert_plugin.hub import EarlyExitClassifier

        return EarlyExitClassifier.from_pretrained(str(fx["export"]), device="cpu").predict(*args, **kwargs)
    return call


def _from_pretrained(*args, **kwargs) -> Callable[[dict, Path], object]:
    def call(fx: dict, tmp: Path):
        from leebert_plugin.hub import EarlyExitClassifier

        return EarlyExitClassifier.from_pretrained(*args, **kwargs)
    return call


API_CALLS: Dict[str, tuple] = {  # name -> (the call, words of its UsageError)
    "hub: None inside the batch": (_predict(["fine", None]), ["sentence 1 is None (a NoneType), not text", "pass strings"]),
    "hub: an int inside the batch": (_predict(["fine", 3]), ["sentence 1 is 3 (a int), not text"]),
    "hub: bytes inside the batch": (_predict([b"fine"]), ["sentence 0 is b'fine' (a bytes)", "decode bytes first"]),
    "hub: a dict as the batch (it classified the keys)": (_predict({"a": "fine"}), ["sentences is a mapping",
                                                                                     "classify its keys"]),
    "hub: a 0-d numpy string": (lambda fx, tmp: fx["clf"].predict(__import__("numpy").array("fine")),
                                ["sentences is a single ndarray", "pass a list"]),
    "hub: bytes as the batch": (_predict(b"fine film"), ["sentences is a single bytes"]),
    "hub: a number as the batch": (_predict(5), ["sentences is a int, not an iterable"]),
    "hub: threshold='0.3'": (_predict(["fine"], exit_policy="entropy", threshold="0.3"),
                             ["threshold='0.3' is a str, not a number", "threshold=0.3"]),
    "hub: threshold as a list": (_predict(["fine"], exit_policy="entropy", threshold=[0.3, 0.5]),
                                 ["threshold=[0.3, 0.5] is a list, not a number", "thresholds=[...]"]),
    "hub: patience='2'": (_predict(["fine"], exit_policy="patience", patience="2"), ["patience='2' is not a whole number"]),
    "hub: exit_policy as a number": (_predict(["fine"], exit_policy=3), ["exit_policy=3 is a int, not a policy name"]),
    "hub: thresholds as a string": (_predict(["fine"], exit_policy="per_exit_entropy", thresholds="0.2,0.3"),
                                    ["thresholds='0.2,0.3' is not a list of numbers"]),
    "hub: a sentence pair to a single-sentence model (it returned a label)": (
        _predict([("a fine film", "a dull one")]), ["sentence 0 is a tuple of 2 strings",
                                                    "classifies single sentences", "one string"]),
    "hub: a 3-tuple to a single-sentence export": (_served([("a", "b", "c")]), ["sentence 0 is a tuple of 3 strings"]),
    "hub: checkpoint=None": (_from_pretrained(None), ["checkpoint=None is a NoneType, not a path"]),
    "hub: data as a number": (lambda fx, tmp: _from_pretrained("x.pt", data=3, bpe="none")(fx, tmp),
                              ["data=3 is a int, not a path"]),
    "export: model.pt missing (FileNotFoundError before)": (
        _damaged(lambda f: (f / "model.pt").unlink()), ["is an export folder without its model.pt",
                                                        "export the checkpoint again"]),
    "export: model.pt truncated": (
        _damaged(lambda f: (f / "model.pt").write_bytes((f / "model.pt").read_bytes()[:5000])),
        ["model.pt is not readable", "export the checkpoint again"]),
    "export: model.pt empty": (_damaged(lambda f: (f / "model.pt").write_bytes(b"")), ["model.pt is not readable"]),
    "export: model.pt of another model (fresh exits were injected silently)": (
        _damaged(_fewer_tensors), ["does not fit the model", "export.json describes", "tensors are missing",
                                   "export the checkpoint again"]),
    "export: export.json cut short (JSONDecodeError before)": (
        _damaged(lambda f: (f / "export.json").write_text((f / "export.json").read_text()[:100])),
        ["export.json cannot be read (JSONDecodeError", "export the checkpoint again"]),
    "export: export.json a JSON list": (_damaged(lambda f: (f / "export.json").write_text("[1, 2]")),
                                        ["export.json holds a JSON list"]),
    "export: export.json without its task": (_damaged(_without("task")), ["export.json lacks task"]),
    "export: export.json not UTF-8": (_damaged(lambda f: (f / "export.json").write_bytes(b"\xff\xfe{")),
                                      ["export.json cannot be read (UnicodeDecodeError"]),
    "export: input0/dict.txt missing": (_damaged(lambda f: (f / "input0" / "dict.txt").unlink()),
                                        ["is an export folder without its input0/dict.txt"]),
}


@pytest.mark.parametrize("name", list(API_CALLS))
def test_bad_api_input(name, api, tmp_path):
    from leebert_plugin.errors import UsageError

    call, words = API_CALLS[name]
    with pytest.raises(UsageError) as refused:
        call(api, tmp_path)
    assert isinstance(refused.value, ValueError)
    message = str(refused.value)
    assert message.startswith("leebert-plugin: error:") and "Fix:" in message and "\n" not in message
    for w in words:
        assert w in message, message


def test_ranks_that_built_different_models_are_named_in_one_line():
    from leebert_plugin.fairseq_patches.ddp import model_difference

    same = {"a.weight": (4, 4), "b.bias": (4,)}
    assert model_difference([same, dict(same)]) is None
    said = model_difference([same, {"a.weight": (4, 4), "b.bias": (3,)}])
    assert said == "rank 1 built another model than rank 0 (2 parameters against 2): b.bias is [4] on rank 0 and [3] on rank 1"
    assert "c.weight is missing on rank 0 and [2] on rank 1" in model_difference([same, {**same, "c.weight": (2,)}])


def test_two_ranks_building_different_models_end_in_one_line_not_ddps_traceback(mr_bin, tmp_path):
    """Rank 1 reads a data folder whose dictionary has 8 more symbols: its embedding is larger."""
    from helpers import launch_two_processes

    other = tmp_path / "other-data"
    shutil.copytree(mr_bin, other)
    with open(other / "input0" / "dict.txt", "a") as f:
        f.writelines(f"extra{i} 1\n" for i in range(8))
    save = tmp_path / "save"
    save.mkdir()
    ranks = launch_two_processes("mr_multi_exit", save, "task.data=${oc.env:LEEBERT_RANK_DATA}", "optimization.max_update=2",
                                 "dataset.batch_size=16", probe=False,
                                 env={"0:LEEBERT_RANK_DATA": str(mr_bin), "1:LEEBERT_RANK_DATA": str(other)})
    from helpers import assert_one_clear_error

    from fairseq.data import Dictionary

    n = len(Dictionary.load(str(mr_bin / "input0" / "dict.txt"))) + 1  # the task adds <mask>
    for proc in ranks:  # the first tensor in name order whose shape follows the dictionary: the LM head's bias
        assert_one_clear_error(proc, "rank 1 built another model than rank 0",
                               f"encoder.lm_head.bias is [{n}] on rank 0 and [{n + 8}] on rank 1", "the same data folder")
