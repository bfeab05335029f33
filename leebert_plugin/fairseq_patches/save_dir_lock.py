"""One run per save dir: a lock file the job's rank 0 holds for the run's lifetime.

Two runs on one ``checkpoint.save_dir`` overwrite each other's checkpoints, and fairseq says
nothing. Before a training run reads or writes a checkpoint (fairseq's
``checkpoint_utils.load_checkpoint``, the resume, which only training calls), rank 0 creates
``SAVE_DIR/leebert.lock`` holding its pid, host and start time; the file is removed when the
process exits. The lock appears whole: the holder is written to a file of this process's own,
fsynced, then hard-linked to the lock's name, which fails when the name exists (an atomic create,
like ``O_EXCL``, but never an empty lock that a second run would take for a stale one). The workers of the same job share it: rank 0's
verdict is broadcast, so every rank of a refused job stops with the same line instead of waiting
at the next collective.

A lock whose process is gone (same host, no such pid: a run killed with SIGKILL) is stale: it is
taken over after one warning line. The takeover renames the lock to a name of this process's own
and removes it only if it is still the stale holder it judged: two runs that find the same stale
lock cannot both take it over (the second would otherwise delete the first's fresh lock; it puts
it back and is refused). A lock from another host cannot be checked from here and is refused; the
line says which file to delete if that run is really gone. Files of a process's own
(``leebert.lock.<new|old>.<pid>.<host>``) that a SIGKILL left behind are removed by the next run
on the same host. Without hard links the lock is created with ``O_EXCL`` and written after
(:func:`_link`). :func:`acquire_lock` is the same lock for any file: the plugin's other outputs
(exports, data folders, sweeps) hold theirs through :mod:`leebert_plugin.runtime.outputs`.
"""
import atexit
import errno
import json
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Callable, Optional

from fairseq import checkpoint_utils, distributed_utils

from leebert_plugin.errors import UsageError
from leebert_plugin.fairseq_patches.wrapping import wrap_once

logger = logging.getLogger(__name__)

LOCK_NAME = "leebert.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, but belongs to someone else
        pass
    return True


def _command_of(pid: int) -> Optional[str]:
    """The command line of process ``pid`` (Linux's ``/proc``), or None where it cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip() or None


def _in_use(what: str, path: Path, holder: dict, elsewhere: str) -> UsageError:
    """The refusal for a lock whose pid is alive on this host. A pid can be reused (the machine
    restarted, the run was killed and its number handed out again), which the plugin cannot tell
    for sure: the line shows what that process is and how to clear the lock once the user has."""
    pid, command = holder["pid"], _command_of(holder["pid"])
    detail = f"its command: {command[:80]}" if command else "its command cannot be read here"
    if command is not None and not any(w in command for w in ("fairseq", "hydra", "leebert")):
        detail += "; not a run of the plugin by the look of it: perhaps its pid was reused after a restart"
    return UsageError(f"{what} is in use by another run (pid {pid} on this host, started {holder.get('started')}; "
                      f"{detail})", f"wait for it to finish (or stop it), or {elsewhere}; if ps -p "
                      f"{pid} -o pid,lstart,args shows no run on {what} (a reused pid), delete {path} and start again")


def _read(path: Path) -> Optional[dict]:
    try:
        holder = json.loads(path.read_text())
        return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None
    except (OSError, ValueError):
        return None


def _release(path: Path, pid: int) -> None:
    holder = _read(path)
    if holder is not None and holder["pid"] == pid and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


def _write(f, holder: dict) -> None:
    json.dump(holder, f)
    f.flush()
    os.fsync(f.fileno())


def _own(path: Path, kind: str, holder: dict) -> Path:
    """A file beside the lock that only this process uses: ``kind`` ``new`` (the holder before it is
    linked to the lock's name) or ``old`` (a stale lock being taken over)."""
    return path.with_name(f"{path.name}.{kind}.{holder['pid']}.{holder['host']}")


_OWN = re.compile(r"(?:(?:new|old)\.)?([0-9]{1,9})\.(.+)")  # after "leebert.lock.": [kind.]pid.host
_NO_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS)


def _sweep(path: Path, host: str) -> None:
    """Remove the files of processes of this host that are gone (a SIGKILL between creating such a
    file and removing it; ``leebert.lock.<pid>.<host>`` is the name earlier versions used)."""
    for f in path.parent.glob(f"{path.name}.*.*"):
        own = _OWN.fullmatch(f.name[len(path.name) + 1:])
        if own is not None and own.group(2) == host and not _alive(int(own.group(1))):
            try:
                f.unlink()
            except OSError:
                pass  # gone already, or not ours to remove: it only costs a file


def _link(src: Path, dst: Path) -> None:
    """Give ``src``'s content the name ``dst`` at once, or raise ``FileExistsError`` when ``dst``
    exists. Where hard links are refused (FAT, some FUSE and SMB mounts), ``dst`` is created with
    ``O_EXCL`` and written after: there another run may see it empty for an instant."""
    try:
        os.link(src, dst)
        return
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in _NO_LINKS:
            raise
    content = src.read_bytes()
    fd = os.open(dst, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())


def _take_over(path: Path, stale: Optional[dict], me: dict) -> None:
    """Remove the lock ``path`` if it still holds ``stale`` (None: unreadable). It is renamed to a
    file of this process's own first (atomic: of two runs, only one gets the file); a lock that is
    no longer the stale one (another run took it over meanwhile) is put back. While it is away, a
    third run could take the free name: then that run and the one whose lock was moved both hold
    the save dir. That needs three runs on one save dir within the same few microseconds, after a
    kill; two are covered."""
    mine = _own(path, "old", me)
    try:
        os.rename(path, mine)
    except FileNotFoundError:
        return  # another run removed it first
    try:
        if _read(mine) != stale:
            try:
                _link(mine, path)  # another run's fresh lock: back where it was
            except FileExistsError:
                pass  # the third run of the docstring
    finally:
        mine.unlink(missing_ok=True)


def _create(path: Path, holder: dict) -> None:
    """Create ``path`` holding ``holder``, whole (:func:`_link` of a file of this process's own),
    or raise ``FileExistsError`` when it exists."""
    mine = _own(path, "new", holder)
    try:
        with open(mine, "w") as f:
            _write(f, holder)
        _link(mine, path)
    finally:
        mine.unlink(missing_ok=True)


def acquire(save_dir: str) -> Optional[UsageError]:
    """Take ``save_dir``'s lock for this process. Returns None, or the refusal when another live
    run holds it."""
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return acquire_lock(Path(save_dir) / LOCK_NAME, str(save_dir), "pass another checkpoint.save_dir",
                        "start one run per checkpoint.save_dir")


def acquire_lock(path: Path, what: str, elsewhere: str, one_run: str) -> Optional[UsageError]:
    """Take the lock file ``path`` guarding ``what`` (a save dir, an output folder) for this process,
    released when it exits (or by :func:`release_lock`). Returns None, or the refusal when another
    live run holds it; ``elsewhere``: the fix's other way (``pass another checkpoint.save_dir``),
    ``one_run``: the fix when runs keep taking it."""
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    _sweep(path, me["host"])
    for _ in range(3):
        try:
            _create(path, me)
        except FileExistsError:
            holder = _read(path)
            if holder is not None and (holder["pid"], holder.get("host")) == (me["pid"], me["host"]):
                return None  # this process holds it already
            if holder is not None and holder.get("host") != me["host"]:
                return UsageError(
                    f"{what} is in use by another run (pid {holder['pid']} on {holder.get('host')}, started "
                    f"{holder.get('started')})", f"wait for it, or {elsewhere}; if that run is gone, delete {path}")
            if holder is not None and _alive(holder["pid"]):
                return _in_use(what, path, holder, elsewhere)
            logger.warning(f"{path}: the run that held it ({holder or 'unreadable'}) is gone; taking it over")
            _take_over(path, holder, me)
            continue
        atexit.register(_release, path, me["pid"])
        return None
    return UsageError(f"could not take the lock {path}: other runs keep taking it", one_run)


def release_lock(path: Path) -> None:
    """Remove the lock ``path`` if this process holds it (before it exits)."""
    _release(path, os.getpid())


def hold_save_dir(save_dir: str) -> None:
    """Rank 0 takes the lock; every rank of the job raises the same UsageError if it is refused."""
    world = distributed_utils.get_data_parallel_world_size()
    refused = acquire(save_dir) if distributed_utils.get_global_rank() == 0 else None
    verdict = None if refused is None else (refused.problem, refused.fix)
    if world > 1:
        verdict = distributed_utils.broadcast_object(verdict, src_rank=0, group=distributed_utils.get_global_group())
    if verdict is not None:
        raise UsageError(*verdict)


def locked(load: Callable) -> Callable:
    """Wrap fairseq's ``checkpoint_utils.load_checkpoint`` (training's resume): lock first."""

    def load_checkpoint(cfg, trainer, **passthrough_args):
        if not cfg.no_save:
            hold_save_dir(cfg.save_dir)
        return load(cfg, trainer, **passthrough_args)

    return load_checkpoint


def install() -> None:
    wrap_once(checkpoint_utils, "load_checkpoint", locked)
