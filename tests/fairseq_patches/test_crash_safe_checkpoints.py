"""Crash-safe checkpoints: every checkpoint file a run writes is whole or absent.

A run is killed with SIGKILL at 20 points inside its saves (half of a new checkpoint written, half
of the copy onto ``checkpoint_last.pt`` written, a complete file just before it replaces the old
one; ``tests/kill_probe``). After every kill the same command is launched again: it resumes from
the last whole ``checkpoint_last.pt``, and every loss it logs equals the uninterrupted run's.
"""
import os
import shlex
import shutil

import pytest
import torch

from conftest import hydra_train
from helpers import BIN, ROOT, assert_refused, json_records, run
from leebert_plugin.fairseq_patches.checkpoint_files import atomic_write, damaged_fix, is_intact, resume_command

UPDATES = 40
# the first four kill the first save of a fresh run (no progress); each later one kills the
# second save of a resumed run, after one whole save (two updates of progress)
KILLS = ["write:1", "copy:1", "replace:1", "replace:2"] + ["write:2", "copy:2", "replace:3", "replace:4"] * 4


def _command(mr_bin, save):
    return ["mr_multi_exit", f"task.data={mr_bin}", f"checkpoint.save_dir={save}",
            f"common.user_dir={ROOT / 'tests' / 'kill_probe'}", "optimization.max_epoch=2",
            f"optimization.max_update={UPDATES}", "lr_scheduler.warmup_updates=2", "dataset.batch_size=16",
            "common.log_interval=1", "checkpoint.save_interval_updates=2"]


def _losses(stdout: str) -> dict:
    return {int(r["num_updates"]): r["loss"] for r in json_records(stdout, "train_inner")}


@pytest.fixture(scope="module")
def straight(mr_bin, tmp_path_factory):
    """The uninterrupted run: its save dir and its losses per update."""
    save = tmp_path_factory.mktemp("straight")
    proc = hydra_train(*_command(mr_bin, save))
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = _losses(proc.stdout)
    assert sorted(losses) == list(range(1, UPDATES + 1))
    return save, losses


def test_sigkill_inside_saves_twenty_times_then_the_same_command_resumes_to_the_same_losses(mr_bin, tmp_path,
                                                                                            monkeypatch, straight):
    straight_dir, expected = straight

    save = tmp_path / "killed"
    seen = {}
    for kill in KILLS:
        monkeypatch.setenv("LEEBERT_KILL_AT", kill)
        proc = hydra_train(*_command(mr_bin, save))
        assert proc.returncode == -9, (kill, proc.returncode, proc.stderr[-2000:])
        for ckpt in save.glob("checkpoint*.pt"):
            assert is_intact(ckpt), (kill, ckpt.name)  # whole or absent, never half
        seen.update(_losses(proc.stdout))
    monkeypatch.delenv("LEEBERT_KILL_AT")
    last = hydra_train(*_command(mr_bin, save))
    assert last.returncode == 0, last.stderr[-3000:]
    resumed = _losses(last.stdout)
    assert min(resumed) > 2  # it resumed where the kills left it, not from scratch
    seen.update(resumed)
    assert seen == {u: expected[u] for u in seen} and max(seen) == UPDATES
    a = torch.load(straight_dir / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    b = torch.load(save / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0, msg=key)


def test_a_failed_write_leaves_the_old_file_and_no_partial_file(tmp_path):
    target = tmp_path / "checkpoint_last.pt"
    target.write_bytes(b"old")

    def fail_halfway(f):
        f.write(b"new, but not all of it")
        raise OSError("disk full")

    try:
        atomic_write(str(target), fail_halfway)
    except OSError:
        pass
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["checkpoint_last.pt"]
    atomic_write(str(target), lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["checkpoint_last.pt"]


def test_the_resume_command_is_this_command_with_the_restore_file():
    hydra = ["/x/fairseq-hydra-train", "--config-name", "mr_leebert", "checkpoint.restore_file=old.pt"]
    assert resume_command("/s/checkpoint_1_4.pt", hydra) == \
        "/x/fairseq-hydra-train --config-name mr_leebert checkpoint.restore_file=/s/checkpoint_1_4.pt"
    argparse = ["fairseq-train", "data", "--restore-file", "old.pt", "--user-dir", "user_dir"]
    assert resume_command("/s/c.pt", argparse) == "fairseq-train data --user-dir user_dir --restore-file /s/c.pt"


def test_a_damaged_last_checkpoint_names_the_newest_intact_one_and_the_command_that_resumes(mr_bin, tmp_path,
                                                                                           straight):
    save = tmp_path / "save"
    shutil.copytree(straight[0], save, ignore=shutil.ignore_patterns("hydra"))
    (save / "checkpoint_last.pt").write_bytes(b"")  # what a kill inside fairseq's own copy left
    os.utime(save / "checkpoint_best.pt", (1, 1))  # the newest intact one is then the last numbered one
    newest = max(save.glob("checkpoint_*_*.pt"), key=lambda p: p.stat().st_mtime)
    cmd = [str(BIN / "fairseq-hydra-train"), "--config-dir", "configs", "--config-name",
           *_command(mr_bin, save), "optimization.max_update=42"]
    told = {}

    def resume():
        proc = run(cmd)
        told["line"] = proc.stderr
        return proc

    assert_refused(save, resume, "checkpoint_last.pt is not a readable checkpoint", "the file is empty",
                   f"the newest intact checkpoint here is {newest}", f"checkpoint.restore_file={newest}")
    fix = next(line for line in told["line"].splitlines() if line.startswith("leebert-plugin: error:"))
    proc = run(shlex.split(fix.split("resume from it: ", 1)[1]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(_losses(proc.stdout)) == [41, 42]


def test_a_damaged_checkpoint_outside_a_resume_names_the_intact_one_without_a_resume_command(tmp_path):
    torch.save({"model": {}}, tmp_path / "checkpoint_1_4.pt")
    (tmp_path / "checkpoint_last.pt").write_bytes(b"")
    validate = damaged_fix(str(tmp_path / "checkpoint_last.pt"), ["/x/fairseq-validate", "data", "--path", "p"])
    assert validate == f"use the newest intact checkpoint here, {tmp_path / 'checkpoint_1_4.pt'}"
    train = damaged_fix(str(tmp_path / "checkpoint_last.pt"), ["/x/fairseq-train", "data"])
    assert train.endswith(f"resume from it: /x/fairseq-train data --restore-file {tmp_path / 'checkpoint_1_4.pt'}")
