"""Outputs that are replaced whole, by one writer at a time, and a full disk said in one line.

Every command that writes a result the user keeps (training's checkpoints, ``export``,
``prepare_data``, the threshold sweep, the BERT converter, the benchmark's summaries) writes it
through this module:

- :func:`atomic_write` (one file): the bytes go to ``.NAME.<pid>.partial`` beside the file, are
  synced (``fsync``), and replace it by ``os.replace``, atomic on POSIX; the folder's entry is
  synced too. A reader sees the old file or the new one, never a mix.
- :func:`replacing` (a folder): the new folder is built whole in ``.NAME.staging-<pid>``
  beside it, then swapped in. A folder that exists cannot be replaced by one ``rename`` (POSIX
  renames a folder only onto an empty one), so the swap is, where the kernel offers it, Linux's
  ``renameat2(RENAME_EXCHANGE)``: both names trade places in one step, the old folder lands under
  the staging name and is deleted after. At every instant the target holds the old folder or the
  new one. Where the exchange is refused (another OS, a filesystem without it), the old folder is
  renamed to ``.NAME.replaced``, the new one renamed in, and the backup deleted: for the instant
  between the two renames the target is missing, but the old folder is whole under a known name,
  and :func:`settled` (called by the next writer, and by the loaders of exports and data folders)
  renames it back (``LEEBERT_NO_RENAME_EXCHANGE=1`` forces this variant: the tests run both). Chosen
  over a symlink to versioned folders, which would always be atomic but
  changes what the user sees at the target (a link whose copy or ``rm`` behaves differently).
- one writer per output: the folder's lock ``.NAME.lock`` beside it (the save-dir lock's
  machinery, :func:`~leebert_plugin.fairseq_patches.save_dir_lock.acquire_lock`), held while
  staging and swapping. A second run into the same output is refused in one line naming the
  first; the lock of a killed run is taken over. Holding it, the writer removes every hidden
  staging folder and backup a killed run left (:func:`settled`).

Outputs are created with the user's umask (``os.mkdir`` and ``open``, not ``tempfile.mkdtemp``,
whose folders are 0700). A write that fails because the disk is full (``ENOSPC``, or ``EDQUOT`` for
a quota) ends in one :class:`~leebert_plugin.errors.UsageError` naming the disk (its mount point and
free space) and the folder (:func:`disk_space`); the partial file or staging folder is removed and
what the target held before is kept.
"""
import ctypes
import ctypes.util
import errno
import fnmatch
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

from leebert_plugin.errors import UsageError

FULL = (errno.ENOSPC, errno.EDQUOT)
STAGING = "staging"
BACKUP = "replaced"
PathLike = Union[str, Path]


# ---- a full disk ---------------------------------------------------------------------------------
def is_disk_full(exc: Optional[BaseException]) -> bool:
    """Whether ``exc`` or an exception behind it (torch's writer turns a file object's ``OSError``
    into a ``RuntimeError`` whose context it is) is ``ENOSPC``/``EDQUOT``."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in FULL:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def mount_point(path: PathLike) -> Path:
    """The mount point of the disk that holds ``path`` (its nearest existing folder)."""
    p = Path(os.path.abspath(path))
    while not p.exists():
        p = p.parent
    while not os.path.ismount(p):
        p = p.parent
    return p


def disk_full_error(folder: PathLike) -> UsageError:
    disk = mount_point(folder)
    try:
        free = f"{shutil.disk_usage(disk).free / 2 ** 20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    return UsageError(f"the disk mounted at {disk} is full ({free}) while writing into {folder}: the partial "
                      f"write was removed and what {folder} held before is kept",
                      "free space on that disk, or write to a folder on another disk")


LOW = 1 << 20  # bytes free under which a failed write is taken for a full disk


def _nearly_full(folder: PathLike) -> bool:
    try:
        return shutil.disk_usage(mount_point(folder)).free < LOW
    except OSError:
        return False


@contextmanager
def disk_space(folder: PathLike) -> Iterator[None]:
    """A write inside that fails on a full disk raises :func:`disk_full_error` of ``folder``: an
    ``ENOSPC``/``EDQUOT`` behind the error, or an ``OSError``/``RuntimeError`` (torch's writer given
    a path reports a full disk as ``RuntimeError: ... unexpected pos``, without the errno) while
    less than :data:`LOW` bytes are free there."""
    try:
        yield
    except UsageError:
        raise
    except Exception as exc:
        if is_disk_full(exc) or (isinstance(exc, (OSError, RuntimeError)) and _nearly_full(folder)):
            raise disk_full_error(folder) from exc
        raise


def torch_save(obj, path: PathLike) -> None:
    """``torch.save`` through a Python file: a full disk then surfaces as the file's ``OSError``
    (``ENOSPC``) behind torch's ``RuntimeError``, which :func:`disk_space` recognises."""
    import torch

    with open(path, "wb") as f:
        torch.save(obj, f)


# ---- output arguments, checked before the work starts -------------------------------------------
def check_folder(out: PathLike, option: str, beside: bool = True) -> Path:
    """``out`` (given as ``option``) can become a folder this user writes: not a file, under no
    file, in a folder that may be written (``beside``: its parent, which receives the staging folder
    and the lock of :func:`replacing`; else ``out`` itself when it exists). Raises the one-line
    refusal; returns ``out``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{option} {out} is a file, not a folder", f"name a new folder with {option}")
    where = Path(os.path.abspath(out))
    if beside or not where.exists():
        where = where.parent
    while not where.exists():
        where = where.parent
    if not where.is_dir():
        raise UsageError(f"{option} {out} lies under {where}, which is a file", f"name a folder with {option}")
    if not os.access(where, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {out}: this user may not write into {where}",
                         f"name a folder you may write with {option}")
    return out


# ---- one file ------------------------------------------------------------------------------------
def sync_dir(folder: PathLike) -> None:
    fd = os.open(str(folder) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable) -> None:
    """``write(f)`` (``f`` a binary file) into ``.NAME.<pid>.partial`` beside ``path``, fsync it,
    then replace ``path`` by it. Partial files of killed runs are removed first."""
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    for stale in Path(folder).glob(f".{name}.*.partial"):  # left by a killed run
        stale.unlink(missing_ok=True)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.partial")
    try:
        with disk_space(folder):
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    sync_dir(folder)


def write_text(path: PathLike, text: str) -> None:
    """:func:`atomic_write` of ``text`` as UTF-8."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


# ---- one folder ----------------------------------------------------------------------------------
def hidden(target: Path, kind: str) -> Path:
    """A hidden name beside ``target``: ``.NAME.lock``, ``.NAME.replaced``, ``.NAME.staging-<pid>``."""
    return target.with_name(f".{target.name}.{kind}")


def _libc():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name, use_errno=True) if name else None
    except OSError:
        return None


_LIBC = _libc()
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` in one step (``renameat2(RENAME_EXCHANGE)``); False where the
    system or the filesystem does not offer it (then nothing was changed)."""
    if os.environ.get("LEEBERT_NO_RENAME_EXCHANGE") == "1":  # tests run the fallback swap this way
        return False
    rename2 = getattr(_LIBC, "renameat2", None)
    if rename2 is None:
        return False
    if rename2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def settled(target: PathLike) -> Path:
    """``target`` after a writer killed mid-swap: its backup renamed back when ``target`` is
    missing, the backup deleted when ``target`` is there. Returns ``target``. A loader calls it too:
    then, while a live writer holds the folder's lock, nothing is moved and the whole old folder is
    read from the backup's name (the path returned)."""
    target = Path(target)
    backup = hidden(target, BACKUP)
    if not (backup.exists() or backup.is_symlink()):
        return target
    if target.exists():
        _remove(backup)  # killed after the new folder was in: the old one is not needed
    else:
        os.rename(backup, target)  # killed between the two renames: the old folder comes back
        sync_dir(target.parent)
    return target


def clean(target: Path) -> None:
    """Remove the staging folders killed writers left beside ``target`` (the caller holds its lock)."""
    settled(target)
    for stage in target.parent.glob(f".{target.name}.{STAGING}-*"):
        _remove(stage)


def loadable(target: PathLike) -> Path:
    """The folder to read for ``target``: ``target``, or the whole old folder when a writer was
    killed between the two renames of the fallback swap (renamed back under the lock if no writer
    holds it, else read where it is)."""
    target = Path(target)
    if target.exists() or not hidden(target, BACKUP).exists():
        return target
    try:
        with locked(target):
            return settled(target)
    except UsageError:  # a live writer is mid-swap: its backup is the old folder, whole
        return hidden(target, BACKUP)
    except OSError:  # a folder this user may read but not write: read the backup where it is
        return hidden(target, BACKUP)


@contextmanager
def locked(target: PathLike, lock: Optional[Path] = None) -> Iterator[Path]:
    """Hold ``target``'s lock (``lock``, by default ``.NAME.lock`` beside it) inside, or raise the
    one-line refusal."""
    from leebert_plugin.fairseq_patches.save_dir_lock import acquire_lock, release_lock

    target = Path(target)
    lock = lock or hidden(target, "lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    refused = acquire_lock(lock, str(target), "write to another folder", f"start one run per output {target}")
    if refused is not None:
        raise refused
    try:
        yield lock
    finally:
        release_lock(lock)


def _swap(stage: Path, target: Path) -> None:
    """Put ``stage`` at ``target``; the old folder, if any, is deleted (see the module's docstring)."""
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        os.replace(stage, target)  # a new (or empty) target: one rename
    elif exchange(stage, target):
        sync_dir(target.parent)
        _remove(stage)  # the old folder, under the staging name
        return
    else:
        backup = hidden(target, BACKUP)
        os.rename(target, backup)
        os.rename(stage, target)
        sync_dir(target.parent)
        _remove(backup)
    sync_dir(target.parent)


def _sync_tree(folder: Path) -> None:
    """fsync every file and folder under ``folder``: a power cut after the swap keeps the new data."""
    for root, dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        sync_dir(root)


@contextmanager
def replacing(target: PathLike) -> Iterator[Path]:
    """``with replacing(OUT) as stage:`` build the new folder in ``stage`` (a new empty folder
    beside ``OUT``); when the block ends without an exception it is put at ``OUT`` whole, replacing
    what was there. ``OUT``'s lock is held from the start (enter it before the long work: a second
    writer is refused at once). A failure (a bad input found late, a full disk) or a kill anywhere
    leaves ``OUT`` as it was or whole and new. The caller checks first that ``OUT`` may be replaced."""
    target = Path(os.path.abspath(target))
    with locked(target):
        clean(target)
        stage = hidden(target, f"{STAGING}-{os.getpid()}")
        try:
            with disk_space(target):
                os.mkdir(stage)  # the user's umask (tempfile.mkdtemp would make it 0700)
                yield stage
                _sync_tree(stage)
                _swap(stage, target)
        finally:
            _remove(stage)


def carry_over(out: Path, stage: Path, replaced: Sequence[str]) -> None:
    """The entries of ``out`` that the new folder does not replace (a user's notes, a spm.model kept
    there) into ``stage``, hard-linked where the filesystem allows (else copied): the swap replaces
    the folder whole, and they must outlive it. ``replaced``: the names (or ``fnmatch`` patterns)
    the writer makes or drops."""
    if not out.is_dir():
        return
    for entry in out.iterdir():
        if any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in replaced) or (stage / entry.name).exists():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, stage / entry.name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, stage / entry.name)


def _link_or_copy(src, dst) -> None:
    if not Path(src).is_symlink():
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst, follow_symlinks=False)


@contextmanager
def files_of(folder: PathLike, first: str) -> Iterator[Path]:
    """``with files_of(OUT, "sweep.tsv"):`` hold the lock of a set of files in ``OUT`` (a sweep's
    table and plot) for the whole run, each then written with :func:`atomic_write`: each is whole,
    old or new, and a second run into ``OUT`` is refused at once. The set is not swapped as one: its
    files are read one by one. The lock is ``.FIRST.lock`` inside ``OUT``, which may be the working
    folder."""
    folder = Path(os.path.abspath(folder))
    folder.mkdir(parents=True, exist_ok=True)
    with locked(folder, hidden(folder / first, "lock")):
        yield folder
