"""Outputs replaced whole by one writer (leebert_plugin.runtime.outputs): a kill -9 at any step of a
swap leaves the old folder or the new one, the next run leaves no hidden leftovers, a second
writer is refused in one line, a full disk is one line that keeps the old output."""
import errno
import json
import os
import signal
import socket
from pathlib import Path

import pytest

from leebert_plugin.errors import UsageError
from leebert_plugin.runtime import outputs

STEPS = ("rename", "replace", "exchange", "remove")  # every step of a swap that changes a name


def _fill(folder: Path, version: str) -> None:
    (folder / "sub").mkdir()
    (folder / "a.txt").write_text(f"{version} a\n")
    (folder / "sub" / "b.txt").write_text(f"{version} b\n" * 1000)


def _content(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def _versions(tmp_path: Path) -> dict:
    made = {}
    for version in ("old", "new"):
        (tmp_path / version).mkdir()
        _fill(tmp_path / version, version)
        made[version] = _content(tmp_path / version)
    return made


def _killed_at(step: int, target: Path) -> bool:
    """In a forked child, replace ``target`` by the new folder, killed with SIGKILL at the
    ``step``-th name change of the swap; True when the kill happened (False: it finished first)."""
    pid = os.fork()
    if pid == 0:  # the child: only file operations, no threads
        calls = {"n": 0}

        def dying(name, real):
            def call(*a, **k):
                calls["n"] += 1
                if calls["n"] == step:
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(*a, **k)
            return call
        os.rename, os.replace = dying("rename", os.rename), dying("replace", os.replace)
        outputs.exchange, outputs._remove = dying("exchange", outputs.exchange), dying("remove", outputs._remove)
        try:
            with outputs.replacing(target) as stage:
                _fill(stage, "new")
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_a_kill_at_every_step_of_the_swap_leaves_old_or_new_and_the_next_run_cleans_up(exchange, tmp_path,
                                                                                         monkeypatch):
    if not exchange:
        monkeypatch.setenv("LEEBERT_NO_RENAME_EXCHANGE", "1")
    versions = _versions(tmp_path)
    parent = tmp_path / "outputs"
    parent.mkdir()
    target = parent / "out"
    seen = set()
    step = 1
    while True:
        if target.exists():
            outputs._remove(target)
        with outputs.replacing(target) as stage:
            _fill(stage, "old")
        assert sorted(p.name for p in parent.iterdir()) == ["out"]
        killed = _killed_at(step, target)
        found = _content(outputs.loadable(target))  # the loader's view: renames a backup back
        assert found in (versions["old"], versions["new"]), (step, sorted(p.name for p in parent.iterdir()))
        seen.add("old" if found == versions["old"] else "new")
        with outputs.replacing(target) as stage:  # the next run
            _fill(stage, "new")
        assert sorted(p.name for p in parent.iterdir()) == ["out"], step  # no staging, backup or lock left
        assert _content(target) == versions["new"]
        if not killed:
            break
        step += 1
    assert seen == {"old", "new"} and step >= 3  # kills before and after the swap, a finished run last


def test_a_killed_two_rename_swap_is_recovered_by_the_loader(tmp_path, monkeypatch):
    """Killed between the renames: the target is missing, the old folder is whole under its backup
    name; loading renames it back (and reads it in place while a live writer holds the lock)."""
    versions = _versions(tmp_path)
    target = tmp_path / "out"
    os.rename(tmp_path / "old", outputs.hidden(target, outputs.BACKUP))
    lock = outputs.hidden(target, "lock")
    lock.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": "now"}))
    assert _content(outputs.loadable(target)) == versions["old"] and not target.exists()  # writer alive: in place
    lock.unlink()
    assert outputs.loadable(target) == target and _content(target) == versions["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "out"]


def test_a_second_writer_is_refused_in_one_line_and_changes_nothing(tmp_path):
    target = tmp_path / "out"
    with outputs.replacing(target) as stage:
        _fill(stage, "old")
    before = _content(target)
    lock = outputs.hidden(target, "lock")  # a live run (this test's parent process) holds the output
    lock.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": "a while ago"}))
    with pytest.raises(UsageError, match=f"{target} is in use by another run .pid {os.getppid()} on this host") as err:
        with outputs.replacing(target) as stage:
            _fill(stage, "new")
    assert "\n" not in str(err.value) and "write to another folder" in str(err.value)
    assert _content(target) == before and sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "out"]


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with outputs.replacing(tmp_path / "out") as stage:
            _fill(stage, "new")
        outputs.write_text(tmp_path / "out" / "c.txt", "c")
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755  # tempfile.mkdtemp made it 0700
    assert (tmp_path / "out" / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "out" / "c.txt").stat().st_mode & 0o777 == 0o644


def _full_fsync(real):
    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if ".staging-" in path or path.endswith(".partial"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)
    return fsync


def test_a_full_disk_is_one_line_naming_disk_and_folder_and_keeps_the_old_output(tmp_path, monkeypatch):
    target = tmp_path / "out"
    with outputs.replacing(target) as stage:
        _fill(stage, "old")
    outputs.write_text(target / "c.txt", "old c")
    before = _content(target)
    monkeypatch.setattr(os, "fsync", _full_fsync(os.fsync))
    disk = outputs.mount_point(tmp_path)
    with pytest.raises(UsageError, match=f"the disk mounted at {disk} is full .* while writing into {target}:") as err:
        with outputs.replacing(target) as stage:
            _fill(stage, "new")
    assert "\n" not in str(err.value) and "another disk" in err.value.fix
    with pytest.raises(UsageError, match=f"the disk mounted at {disk} is full .* while writing into {target}:"):
        outputs.write_text(target / "c.txt", "new c")
    assert _content(target) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_full_disk_behind_torchs_runtime_error_is_recognised(tmp_path):
    """torch.save into a file object reports the file's ENOSPC as a RuntimeError whose context it is."""
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    except RuntimeError as exc:
        assert outputs.is_disk_full(exc)
    assert not outputs.is_disk_full(RuntimeError("other")) and not outputs.is_disk_full(OSError(errno.EACCES, "no"))


@pytest.mark.parametrize("make, words", [
    (lambda tmp: (tmp / "f").write_text("x") and tmp / "f", ["is a file, not a folder"]),
    (lambda tmp: (tmp / "f").write_text("x") and tmp / "f" / "out", ["lies under", "which is a file"]),
])
def test_an_output_argument_is_checked_before_the_work(make, words, tmp_path):
    with pytest.raises(UsageError) as err:
        outputs.check_folder(make(tmp_path), "--out")
    assert all(w in str(err.value) for w in words)


def test_torchs_errno_less_runtime_error_counts_as_a_full_disk_only_when_the_disk_is_nearly_full(tmp_path, monkeypatch):
    """torch.save given a path reports a full disk as ``RuntimeError: ... unexpected pos`` with no
    errno: taken for a full disk when less than 1 MiB is free there, passed on otherwise."""
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    for free, expected in ((10_000, UsageError), (10 << 30, RuntimeError)):
        monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path, free=free: usage(1 << 40, 0, free))
        with pytest.raises(expected):
            with outputs.disk_space(tmp_path):
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 334208 vs 334160")
