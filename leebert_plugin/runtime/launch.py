"""Launching fairseq's command-line tools from Python, and reading their logs.

The tests and ``scripts/gpu_check.py`` start the same runs: ``fairseq-hydra-train`` with a bundled
config and overrides, two ranks as two processes (the README's launch: one process per rank, tcp
init, ``distributed_no_spawn``), and they read fairseq's ``--log-format json`` stat lines. This
module is the one place those commands and that parsing live.
"""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[2]  # the checkout: configs/ and user_dir/ live there
BIN = Path(sys.executable).parent  # fairseq's console scripts sit beside this Python
ATTEMPT_MARK = "===== train_with_progress: a new attempt (fairseq resumes from the save dir's checkpoint, if any)"


def quiet_env(base: Optional[Dict[str, str]] = None, **extra: str) -> Dict[str, str]:
    """``base`` (default: this process's environment) with Python's warnings off: fairseq and
    torch print deprecation warnings on every command, which would bury the lines that matter."""
    return dict(os.environ if base is None else base, PYTHONWARNINGS="ignore", **extra)


def run(cmd: List[str], cwd: Path = ROOT, timeout: float = 600,
        env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """``cmd`` run to its end in ``cwd`` (its output captured as text), in :func:`quiet_env` of
    ``env``; ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
    return subprocess.run(cmd, cwd=cwd, env=quiet_env(env), capture_output=True, text=True, timeout=timeout)


def json_records(stdout: str, tag: str) -> List[Dict[str, str]]:
    """The JSON stat lines fairseq prints with --log-format json for one subset tag."""
    out = []
    for line in stdout.splitlines():
        if (f"| {tag} |" in line or f"][{tag}][" in line) and "{" in line:
            out.append(json.loads(line[line.index("{"):]))
    return out


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now (for a rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hydra_command(config: str, save: Path, *overrides: str) -> List[str]:
    """``fairseq-hydra-train`` of the bundled ``configs/<config>.yaml`` saving into ``save``."""
    return [str(BIN / "fairseq-hydra-train"), "--config-dir", "configs", "--config-name", config,
            f"checkpoint.save_dir={save}", *overrides]


def rank_overrides(rank: int, init: str, backend: str, logs: Path) -> List[str]:
    """What makes one process rank ``rank`` of 2: gloo over tcp ``init``, DDP ``backend``, no
    spawning (fairseq's auto-launch counts GPUs), hydra's run folder per rank under ``logs``.
    gloo also all-reduces CUDA tensors, so two ranks can share one GPU (NCCL refuses that)."""
    return ["distributed_training.distributed_world_size=2", "distributed_training.distributed_backend=gloo",
            f"distributed_training.ddp_backend={backend}", f"distributed_training.distributed_init_method={init}",
            "distributed_training.distributed_no_spawn=true", f"distributed_training.distributed_rank={rank}",
            f"hydra.run.dir={logs}/hydra-rank{rank}"]


def launch_two_processes(config: str, save: Path, *overrides: str, logs: Optional[Path] = None,
                         backend: str = "pytorch_ddp", env: Optional[Dict[str, str]] = None,
                         base_env: Optional[Dict[str, str]] = None,
                         timeout: float = 300) -> List[subprocess.CompletedProcess]:
    """Two ranks of ``config`` as two processes (:func:`rank_overrides`; hydra's run folders under
    ``logs``, by default the save dir), run to their end. ``env``: per-rank additions to
    ``base_env`` (default: this environment), keyed ``"<rank>:NAME"``. Both processes are killed
    after ``timeout`` seconds, so a rank waiting for its peer never outlives the caller."""
    init = f"tcp://127.0.0.1:{free_port()}"
    procs = []
    for r in (0, 1):
        rank_env = quiet_env(base_env)
        rank_env.update({k.split(":", 1)[1]: v for k, v in (env or {}).items() if k.startswith(f"{r}:")})
        procs.append(subprocess.Popen(
            hydra_command(config, save, *overrides, *rank_overrides(r, init, backend, logs or save)),
            cwd=ROOT, env=rank_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [subprocess.CompletedProcess(p.args, p.returncode, *out) for p, out in zip(procs, outputs)]


def train_with_progress(cmd: List[str], log: Path, total_updates: int, desc: str,
                        env: Optional[Dict[str, str]] = None, cwd: Path = ROOT) -> Tuple[int, float]:
    """Run a fairseq training command with its whole output in ``log`` and a progress bar of its
    updates on stderr (tqdm over the ``num_updates`` of fairseq's json stat lines, so it needs
    ``--log-format json``); returns the exit status and the wall-clock seconds.

    The log is appended to, after a line that marks the new attempt: the callers resume a killed
    run from its save dir, and what the earlier attempt logged (SmartBERT's gate records of the
    epochs it finished, the losses before the kill) is part of that run's record. It is written
    line by line (``buffering=1``): a session's end kills this process without a flush, and a block
    buffer then lost the last lines of the attempt, a stage-1 epoch's gate record among them."""
    from tqdm import tqdm

    start = time.monotonic()
    earlier = log.is_file() and log.stat().st_size > 0
    with open(log, "a", buffering=1) as out, tqdm(total=total_updates, desc=desc, unit="update", leave=True,
                                     dynamic_ncols=True, file=sys.stderr) as bar:
        if earlier:
            out.write(f"{ATTEMPT_MARK}, {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            out.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, env=quiet_env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        for line in proc.stdout:
            out.write(line)
            done = _num_updates(line)
            if done is not None and done > bar.n:
                bar.update(min(done, total_updates) - bar.n)
        code = proc.wait()
    return code, time.monotonic() - start


def _num_updates(line: str) -> Optional[int]:
    """``num_updates`` of a fairseq json stat line, else None."""
    at = line.find('"num_updates": "')
    if at < 0:
        return None
    digits = line[at + len('"num_updates": "'):].split('"', 1)[0]
    return int(digits) if digits.isdigit() else None
