"""One run per save dir: a second run on a save dir in use is refused in one line naming the first;
the lock of a run that was killed is taken over."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers import BIN, ROOT, assert_one_clear_error, launch_two_processes, run
from leebert_plugin.fairseq_patches import save_dir_lock
from leebert_plugin.runtime.launch import quiet_env


def _command(mr_bin, save, updates):
    return [str(BIN / "fairseq-hydra-train"), "--config-dir", "configs", "--config-name", "mr_multi_exit",
            f"task.data={mr_bin}", f"checkpoint.save_dir={save}", "optimization.max_epoch=50",
            f"optimization.max_update={updates}", "lr_scheduler.warmup_updates=2", "dataset.batch_size=16",
            "checkpoint.save_interval_updates=5", "dataset.disable_validation=true"]


def test_a_second_run_on_a_save_dir_in_use_is_refused_and_a_killed_runs_lock_is_taken_over(mr_bin, tmp_path):
    save = tmp_path / "save"
    first = subprocess.Popen(_command(mr_bin, save, 100_000), cwd=ROOT, env=quiet_env(None),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = save / save_dir_lock.LOCK_NAME
        deadline = time.time() + 120
        while not list(save.glob("checkpoint_*_*.pt")) and time.time() < deadline:
            time.sleep(0.5)
        holder = json.loads(lock.read_text())
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        second = run(_command(mr_bin, save, 10))
        assert_one_clear_error(second, f"{save} is in use by another run", f"pid {first.pid} on this host",
                               "another checkpoint.save_dir")
        assert "Saved checkpoint" not in second.stdout + second.stderr and first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert json.loads(lock.read_text())["pid"] == first.pid  # a SIGKILL leaves it behind
    third = run(_command(mr_bin, save, 10))  # resumes from the killed run's last checkpoint
    assert third.returncode == 0, third.stderr[-3000:]
    assert "is gone; taking it over" in third.stdout + third.stderr
    assert not lock.exists()  # released at exit


def test_the_lock_is_released_at_exit_and_a_foreign_hosts_lock_is_refused(tmp_path):
    code = ("import os, sys; from leebert_plugin.fairseq_patches import save_dir_lock as L; "
            "assert L.acquire(sys.argv[1]) is None; assert L.acquire(sys.argv[1]) is None; "
            "print(os.getpid(), open(sys.argv[1] + '/leebert.lock').read())")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    pid, held = proc.stdout.split(" ", 1)
    assert json.loads(held)["pid"] == int(pid)  # held while it ran (twice: the same process)
    assert not (tmp_path / save_dir_lock.LOCK_NAME).exists()
    (tmp_path / save_dir_lock.LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "then"}))
    refused = save_dir_lock.acquire(str(tmp_path))
    assert refused is not None and "pid 1 on elsewhere" in str(refused)
    assert f"delete {tmp_path / save_dir_lock.LOCK_NAME}" in refused.fix


def test_both_ranks_of_a_job_on_a_save_dir_in_use_stop_with_the_same_line(mr_bin, tmp_path):
    save = tmp_path / "save"
    save.mkdir()
    lock = save / save_dir_lock.LOCK_NAME
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": "earlier"}  # a live run: this one
    lock.write_text(json.dumps(holder))
    ranks = launch_two_processes("mr_multi_exit", save, f"task.data={mr_bin}", "optimization.max_update=4",
                                 "dataset.batch_size=16", probe=False)
    for proc in ranks:
        assert_one_clear_error(proc, f"{save} is in use by another run", f"pid {os.getpid()} on this host")
    assert json.loads(lock.read_text()) == holder and not list(save.glob("*.pt"))


def test_the_lock_appears_with_its_holder_written(tmp_path, monkeypatch):
    """A second run that looks between the lock's creation and its content would take it for a
    stale one: the lock's name must appear only when the holder is in the file."""
    seen = []
    link = os.link

    def watching_link(src, dst):
        seen.append(json.loads(open(src).read())["pid"])  # the content is there before the name
        assert not os.path.exists(dst)
        link(src, dst)
        seen.append(json.loads(open(dst).read())["pid"])
    monkeypatch.setattr(save_dir_lock.os, "link", watching_link)
    assert save_dir_lock.acquire(str(tmp_path)) is None
    assert seen == [os.getpid(), os.getpid()]
    assert sorted(p.name for p in tmp_path.iterdir()) == [save_dir_lock.LOCK_NAME]  # no file of its own left
    save_dir_lock._release(tmp_path / save_dir_lock.LOCK_NAME, os.getpid())


def test_without_hard_links_the_lock_is_still_taken_and_refused_to_a_second_taker(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")  # what FAT and some FUSE mounts answer
    monkeypatch.setattr(save_dir_lock.os, "link", no_links)
    assert save_dir_lock.acquire(str(tmp_path)) is None
    lock = tmp_path / save_dir_lock.LOCK_NAME
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == [save_dir_lock.LOCK_NAME]
    with pytest.raises(FileExistsError):
        save_dir_lock._create(lock, {"pid": 1, "host": "x"})
    save_dir_lock._release(lock, os.getpid())


@pytest.mark.parametrize("links", [True, False], ids=["hard links", "no hard links"])
def test_two_runs_taking_over_one_stale_lock_do_not_both_hold_it(tmp_path, monkeypatch, links):
    """Run B finds a killed run's lock; before B removes it, run A (alive, this process's parent)
    takes it over. B must leave A's fresh lock in place and be refused, not delete it and proceed;
    also where the file system refuses hard links (A's lock is put back by a copy)."""
    if not links:
        def no_links(src, dst):
            raise PermissionError(1, "Operation not permitted")
        monkeypatch.setattr(save_dir_lock.os, "link", no_links)
    lock = tmp_path / save_dir_lock.LOCK_NAME
    host = socket.gethostname()
    dead = {"pid": 2 ** 22 + 12345, "host": host, "started": "long ago"}
    fresh = {"pid": os.getppid(), "host": host, "started": "just now"}
    lock.write_text(json.dumps(dead))
    alive = save_dir_lock._alive

    def judged_dead_then_taken(pid):
        if pid == dead["pid"]:
            lock.write_text(json.dumps(fresh))  # A's takeover lands between B's look and B's removal
            return False
        return alive(pid)
    monkeypatch.setattr(save_dir_lock, "_alive", judged_dead_then_taken)
    refused = save_dir_lock.acquire(str(tmp_path))
    assert refused is not None and f"pid {fresh['pid']} on this host" in str(refused)
    assert json.loads(lock.read_text()) == fresh  # A's lock, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == [save_dir_lock.LOCK_NAME]


def test_files_a_killed_run_left_beside_the_lock_are_removed_by_the_next_run(tmp_path):
    host = socket.gethostname()
    gone = 2 ** 22 + 54321  # above Linux's default pid_max: no such process
    stray = [tmp_path / f"{save_dir_lock.LOCK_NAME}.new.{gone}.{host}", tmp_path / f"{save_dir_lock.LOCK_NAME}.old.{gone}.{host}"]
    stray.append(tmp_path / f"{save_dir_lock.LOCK_NAME}.{gone}.{host}")  # the name earlier versions used
    kept = [tmp_path / f"{save_dir_lock.LOCK_NAME}.new.{gone}.other.host",  # another host's: cannot be checked
            tmp_path / f"{save_dir_lock.LOCK_NAME}.new.{os.getppid()}.{host}",  # a live process's
            tmp_path / f"{save_dir_lock.LOCK_NAME}.new.99999999999999999999.{host}",  # not a pid: not ours
            tmp_path / f"{save_dir_lock.LOCK_NAME}.new.\u00b2.{host}"]  # a digit to str.isdigit, not to int()
    for f in stray + kept:
        f.write_text("{}")
    assert save_dir_lock.acquire(str(tmp_path)) is None
    assert not any(f.exists() for f in stray) and all(f.exists() for f in kept)
    save_dir_lock._release(tmp_path / save_dir_lock.LOCK_NAME, os.getpid())
