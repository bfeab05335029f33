"""SIGKILL in the middle of an epoch, then resume: the run continues exactly where it was."""
import os
import signal
import subprocess

from helpers import BIN, ROOT, json_records, run

WATCHED = ("loss", "ce_", "kd_", "w_", "hypergrad", "gate_reg", "contrast")


def command(config, save, *overrides):
    return [str(BIN / "fairseq-hydra-train"), "--config-dir", "configs", "--config-name", config,
            f"checkpoint.save_dir={save}", "common.log_interval=1", *overrides]


def run_and_kill(cmd, after_update: int) -> None:
    """Start training and SIGKILL it once update ``after_update`` has been logged."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    marker = f'"num_updates": "{after_update}"'
    for line in proc.stdout:
        if "train_inner" in line and marker in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL, "training ended before it could be killed"


def assert_same_continuation(straight_stdout: str, resumed_stdout: str, first_update: int) -> None:
    a = {int(r["num_updates"]): r for r in json_records(straight_stdout, "train_inner")}
    b = {int(r["num_updates"]): r for r in json_records(resumed_stdout, "train_inner")}
    assert b and min(b) == first_update, sorted(b)
    for update, record in b.items():
        for key, value in record.items():
            if key.startswith(WATCHED):
                assert a[update][key] == value, (update, key, a[update][key], value)


def check(config, tmp_path, overrides, kill_after, last_saved):
    straight = run(command(config, tmp_path / "straight", *overrides))
    assert straight.returncode == 0, straight.stderr[-3000:]
    run_and_kill(command(config, tmp_path / "killed", *overrides), kill_after)
    assert (tmp_path / "killed" / "checkpoint_last.pt").exists()
    resumed = run(command(config, tmp_path / "killed", *overrides))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_continuation(straight.stdout, resumed.stdout, last_saved + 1)
    return resumed


def test_kill_and_resume_with_clo(mr_bin, tmp_path):
    overrides = [f"task.data={mr_bin}", "optimization.max_epoch=1", "optimization.max_update=12",
                 "lr_scheduler.warmup_updates=2", "dataset.batch_size=16", "optimizer.w_update_interval=2",
                 "optimizer.w_lr=0.05", "checkpoint.save_interval_updates=5"]
    check("mr_leebert", tmp_path, overrides, kill_after=7, last_saved=5)


def test_kill_and_resume_in_smartbert_stage_2(mr_bin, tmp_path):
    # 400 sentences / 32 = 13 updates per epoch: stage 1 is updates 1-13, the kill lands in stage 2
    overrides = [f"task.data={mr_bin}", "optimization.max_epoch=2", "optimization.max_update=1000",
                 "lr_scheduler.warmup_updates=2", "dataset.batch_size=32", "task.stage1_epochs=1",
                 "task.soft_gate_epochs=1", "checkpoint.save_interval_updates=17"]
    resumed = check("mr_smartbert", tmp_path, overrides, kill_after=19, last_saved=17)
    assert "stage 2: restored" not in resumed.stdout  # the stage came back with the checkpoint
