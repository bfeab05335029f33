#!/usr/bin/env python3
"""The plugin's first run on a GPU: every method x precision, two ranks on one GPU, exit decisions
against the CPU, and the wall-clock table (leebert_plugin/benchmark/gpu_check says what each check asserts).

    python scripts/gpu_check.py                          # on CUDA, under 8 minutes on one GPU
    python scripts/gpu_check.py --device cpu --quick     # the CPU self-test of the same checks
    python scripts/gpu_check.py --checks train exits --work /tmp/gpu-check --jobs 4

Prints PASS, FAIL (with a one-line reason) or SKIP per check with its seconds, then a summary;
exits 1 if any check failed. Run logs and checkpoints stay in the work folder (printed first).
"""
import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

import leebert_plugin  # noqa: F401  (registers everything)
from leebert_plugin import cli
from leebert_plugin.benchmark import gpu_check as gc
from leebert_plugin.runtime.devices import resolve_device
from leebert_plugin.errors import UsageError


def main() -> int:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda, cuda:<index> or cpu (default: cuda)")
    p.add_argument("--quick", action="store_true", help="fewer updates and a tiny benchmark model (the CPU self-test)")
    p.add_argument("--work", type=Path, default=None, help="folder for the data, logs and checkpoints (default: a new "
                                                            "temporary folder, kept)")
    p.add_argument("--jobs", type=int, default=None, help="training runs at a time (default: 4 on CUDA, 1 on the CPU)")
    p.add_argument("--checks", nargs="+", default=list(gc.CHECKS), choices=gc.CHECKS, help="which checks to run")
    args = p.parse_args()
    # fairseq's INFO lines (and the CPU's pin_memory warning) of the in-process checks would bury ours
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("fairseq").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    device = resolve_device(args.device)
    jobs = args.jobs if args.jobs is not None else (4 if device.type == "cuda" else 1)
    if jobs < 1:
        raise UsageError(f"--jobs {jobs} is below 1", "pass --jobs 1 or more")
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"gpu check on {device} ({name}), torch {torch.__version__}, {jobs} job(s), work folder {work}", flush=True)

    start = time.perf_counter()
    results = []

    def emit(result: gc.Result) -> None:
        results.append(result)
        print(result.line(), flush=True)

    def prepare() -> str:
        gc.prepare_data(work)
        return f"the bundled data's slice {gc.SIZES} in {work / 'data'}"

    emit(gc.run_check("data", prepare, gc.BUDGETS["data"] if device.type == "cuda" else None))
    if results[-1].status == "PASS":
        gc.run_all(gc.Setup(device, work, work / "data", quick=args.quick, jobs=jobs), args.checks, emit)
    print(gc.summary(results) + f" (wall clock {time.perf_counter() - start:.0f} s)")
    return gc.exit_status(results)


if __name__ == "__main__":
    sys.exit(cli.run(main))
