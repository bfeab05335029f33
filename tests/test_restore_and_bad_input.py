"""Restoring a plain RoBERTa checkpoint, and one clear error line for every bad input."""
import shutil
from pathlib import Path

import pytest
import torch

from conftest import hydra_train
from helpers import BIN, assert_one_clear_error, assert_refused, guarded_dir, run

TINY = ["--encoder-layers", "4", "--encoder-embed-dim", "64", "--encoder-ffn-embed-dim", "128",
        "--encoder-attention-heads", "2"]


@pytest.fixture(scope="module")
def plain_roberta(mr_bin, tmp_path_factory) -> Path:
    """A plain fairseq `roberta` classifier, trained by fairseq-train itself (argparse checkpoint)."""
    save = tmp_path_factory.mktemp("plain-roberta")
    proc = run([str(BIN / "fairseq-train"), str(mr_bin), "--task", "sentence_prediction",
                "--criterion", "sentence_prediction", "--arch", "roberta", *TINY,
                "--max-positions", "256", "--shorten-method", "truncate", "--num-classes", "2",
                "--init-token", "0", "--separator-token", "2", "--optimizer", "adam", "--lr", "1e-3",
                "--batch-size", "16", "--max-update", "5", "--cpu", "--num-workers", "0",
                "--save-dir", str(save), "--no-epoch-checkpoints", "--seed", "1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return save / "checkpoint_last.pt"


def test_restoring_plain_roberta_loads_the_encoder_and_injects_fresh_exits(plain_roberta, mr_bin, tmp_path):
    save = tmp_path / "exit"
    proc = hydra_train("mr_multi_exit", f"task.data={mr_bin}", f"checkpoint.save_dir={save}",
                       f"checkpoint.restore_file={plain_roberta}", "checkpoint.reset_optimizer=true",
                       "checkpoint.reset_dataloader=true", "checkpoint.reset_meters=true",
                       "checkpoint.reset_lr_scheduler=true", "optimization.lr=[0.0]",
                       "optimization.max_update=1", "lr_scheduler.warmup_updates=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint has no exit_heads: initialising them fresh" in proc.stdout
    plain = torch.load(plain_roberta, map_location="cpu")["model"]  # Namespace allow-listed by the plugin
    restored = torch.load(save / "checkpoint_last.pt", map_location="cpu")["model"]
    encoder_keys = [k for k in plain if k.startswith("encoder.")]
    assert len(encoder_keys) > 20
    for k in encoder_keys:  # lr 0: one update leaves the restored weights as they were
        assert torch.equal(plain[k], restored[k]), k
    assert any(k.startswith("exit_heads.") for k in restored)
    assert not any(k.startswith("classification_heads.") for k in restored)


@pytest.fixture
def guarded_save_dir(tmp_path) -> Path:
    return guarded_dir(tmp_path)


TRAIN_CASES = {
    "missing data directory": (["task.data=/nonexistent/mr-bin"], ["'/nonexistent/mr-bin' does not exist"]),
    "num_classes mismatch": (["task.num_classes=3"], ["num_classes=3", "lists 2 labels", "num_classes=2"]),
    "unknown exit head": (["model.exit_head=highway"], ["unknown exit head 'highway'"]),
    "exit layers without the last": (["model.exit_layers='1,2'"], ["no exit at the last layer"]),
    "unknown policy in the config": (["task.exit_policy=entropi"], ["unknown exit policy 'entropi'"]),
    "unknown exit weighting": (["criterion.exit_weighting=descending"], ["unknown exit_weighting"]),
}


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_bad_training_input(case, mr_bin, guarded_save_dir):
    overrides, words = TRAIN_CASES[case]
    save = guarded_save_dir
    assert_refused(save, lambda: hydra_train("mr_multi_exit", f"task.data={mr_bin}", f"checkpoint.save_dir={save}",
                                             *overrides), *words)


def test_restore_from_a_checkpoint_of_another_architecture(plain_roberta, mr_bin, guarded_save_dir):
    save = guarded_save_dir
    assert_refused(save, lambda: hydra_train("mr_multi_exit", f"task.data={mr_bin}", f"checkpoint.save_dir={save}",
                                             f"checkpoint.restore_file={plain_roberta}", "+model.encoder_layers=2"),
                   "does not fit", "2-layer exit_roberta", "not in this model", "restore it into")


VALIDATE_CASES = {
    "unknown policy": (["--exit-policy", "entropi", "--exit-threshold", "0.1"], ["unknown exit policy"]),
    "threshold out of range": (["--exit-policy", "normalized_entropy", "--exit-threshold", "1.5"],
                               ["1.5 is out of range", "[0, 1]"]),
    "entropy above ln C": (["--exit-policy", "entropy", "--exit-threshold", "0.9"], ["out of range", "0.6931"]),
    "patience below 1": (["--exit-policy", "patience", "--exit-patience", "0"], ["patience=0 is below 1"]),
    "threshold missing": (["--exit-policy", "max_prob"], ["needs a threshold"]),
    "missing split": (["--valid-subset", "dev"], ["split 'dev' is missing", "valid"]),
}


@pytest.mark.parametrize("case", sorted(VALIDATE_CASES))
def test_bad_validation_input(case, trained, mr_bin):
    flags, words = VALIDATE_CASES[case]
    command = [str(BIN / "fairseq-validate"), str(mr_bin), "--path", str(trained / "checkpoint_best.pt"),
               "--user-dir", "user_dir", "--task", "early_exit_sentence_prediction", "--batch-size", "16", "--cpu",
               *flags]
    assert_refused(trained, lambda: run(command), *words)


def test_validation_of_a_missing_data_directory(trained):
    proc = run([str(BIN / "fairseq-validate"), "/nonexistent/data", "--path", str(trained / "checkpoint_best.pt"),
                "--user-dir", "user_dir", "--task", "early_exit_sentence_prediction", "--batch-size", "16", "--cpu"])
    assert_one_clear_error(proc, "does not exist")


class Untrusted:
    """Any class outside torch's allow-list: a pickle of it could run arbitrary code on load."""


def write_restore_file(kind: str, tmp_path: Path, plain_roberta: Path) -> Path:
    path = tmp_path / f"{kind}.pt"
    if kind == "corrupted":
        path.write_bytes(b"\x00not a checkpoint" * 100)
    elif kind == "truncated":
        path.write_bytes(plain_roberta.read_bytes()[:50_000])
    elif kind == "untrusted":
        torch.save({"model": {}, "payload": Untrusted()}, path)
    return path


RESTORE_CASES = {
    "missing": ["does not exist", "train from scratch"],
    "corrupted": ["is not a readable checkpoint"],
    "truncated": ["is not a readable checkpoint"],
    "untrusted": ["weights-only loader refuses", "Untrusted", "trust"],
}


@pytest.mark.parametrize("kind", sorted(RESTORE_CASES))
def test_bad_restore_file(kind, plain_roberta, mr_bin, tmp_path, guarded_save_dir):
    path = write_restore_file(kind, tmp_path, plain_roberta)
    save = guarded_save_dir
    assert_refused(save, lambda: hydra_train("mr_multi_exit", f"task.data={mr_bin}", f"checkpoint.save_dir={save}",
                                             f"checkpoint.restore_file={path}"), *RESTORE_CASES[kind])


def test_an_empty_validation_split(trained, mr_bin, tmp_path):
    from fairseq.data import indexed_dataset

    data = tmp_path / "data"
    shutil.copytree(mr_bin, data)
    for key in ("input0", "label"):  # an empty split, as fairseq-preprocess writes for an empty file
        builder = indexed_dataset.make_builder(str(data / key / "empty.bin"), impl="mmap", vocab_size=10_000)
        builder.finalize(str(data / key / "empty.idx"))
    proc = run([str(BIN / "fairseq-validate"), str(data), "--path", str(trained / "checkpoint_best.pt"),
                "--user-dir", "user_dir", "--task", "early_exit_sentence_prediction", "--batch-size", "16",
                "--cpu", "--valid-subset", "empty"])
    assert_one_clear_error(proc, "split 'empty'", "holds no sentences")
