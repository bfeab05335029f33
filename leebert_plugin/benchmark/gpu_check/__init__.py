"""The GPU check (``scripts/gpu_check.py``): what a first run of the plugin on a CUDA machine must show.

1. ``train``: every method (PABEE-style multi_exit, LeeBERT/clo, SmartBERT, DeeBERT) under every
   precision (fp32, amp, bf16, fp16) trains a few updates of the tiny model on the bundled data:
   exit status 0 and a finite final training loss; LeeBERT's learned loss weights moved; the
   two-stage methods entered stage 2 and left its frozen part as the stage-1 checkpoint had it.
2. ``ddp``: two ranks on one device (gloo, which also all-reduces CUDA tensors; NCCL refuses two
   ranks on one GPU) under ``pytorch_ddp`` end with the same checkpoint as under ``legacy_ddp``.
3. ``exits``: the per-sample exit decisions on the device equal the CPU's, and batch 32 equals
   batch 1, except for samples whose criterion lies within a tolerance of the threshold (where
   the last bits of a GPU reduction may tip the decision); ``fairseq-validate``'s mean executed
   layers on the device and on the CPU agree within what those samples allow.
4. ``bench``: ``scripts/bench_speed.py``'s wall-clock table on the device (a report, not a gate).

Every check prints ``PASS``, ``FAIL`` (with a one-line reason) or ``SKIP`` (with why) and its
seconds; the exit status is 1 if any check failed. Checks on CUDA have time budgets (the whole
run must fit 8 minutes on one GPU): a check that runs over its budget fails. The training runs are
fairseq subprocesses, run a few at a time (``jobs``); their logs stay in the work folder.

The modules: :mod:`.results` (a check's outcome and the report), :mod:`.training` (setup, the
train and ddp checks), :mod:`.decisions` (exit decisions across devices), :mod:`.exits` (the
exits check); this one runs them and the bench check.
"""
import subprocess
import sys
from typing import Callable, List, Sequence

from leebert_plugin.benchmark.gpu_check.decisions import (Agreement, criterion_values, decisions_agree,
                                                          margins, mean_layers_allowance)
from leebert_plugin.benchmark.gpu_check.exits import exits_check
from leebert_plugin.benchmark.gpu_check.results import (CheckFailed, CheckSkipped, Result, exit_status, report,
                                                        run_check, summary)
from leebert_plugin.benchmark.gpu_check.training import (BUDGETS, SIZES, Setup, check_ddp, check_train,
                                                         failure_line, final_train_loss, frozen_mismatches,
                                                         loss_weights_moved, precision_overrides, prepare_data)
from leebert_plugin.runtime.launch import ROOT

__all__ = ["Agreement", "BUDGETS", "CHECKS", "CheckFailed", "CheckSkipped", "Result", "SIZES", "Setup", "bench_check",
           "criterion_values", "decisions_agree", "exit_status", "exits_check", "failure_line", "final_train_loss",
           "frozen_mismatches", "loss_weights_moved", "margins", "mean_layers_allowance", "precision_overrides",
           "prepare_data", "report", "run_all", "run_check", "summary"]


def bench_check(setup: Setup) -> str:
    """Check 4: ``scripts/bench_speed.py`` on the device at batch 1/8/32/128; prints its table."""
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_speed.py"), "--device", str(setup.device),
           "--batch-sizes", "1", "8", "32", "128"]
    if setup.quick:
        cmd += ["--layers", "4", "--dim", "64", "--heads", "2", "--ffn", "128", "--samples", "128", "--repeats", "2"]
    proc = subprocess.run(cmd, cwd=ROOT, env=setup.env(), capture_output=True, text=True, timeout=setup.timeout("bench"))
    if proc.returncode != 0:
        raise CheckFailed(failure_line(proc))
    print(proc.stdout.rstrip(), flush=True)
    return "table above (a report, not a gate)"


CHECKS = ("train", "ddp", "exits", "bench")


def run_all(setup: Setup, checks: Sequence[str] = CHECKS, emit: Callable[[Result], None] = lambda r: None
            ) -> List[Result]:
    """The chosen checks in order; ``emit`` sees each result as it comes (the script prints it)."""
    results: List[Result] = []

    def add(new: List[Result]) -> None:
        for r in new:
            emit(r)
        results.extend(new)

    if "train" in checks:
        add(check_train(setup))
    if "ddp" in checks:
        add(check_ddp(setup))
    if "exits" in checks:
        add([run_check("exits", lambda: exits_check(setup), setup.budget("exits"))])
    if "bench" in checks:
        add([run_check("bench", lambda: bench_check(setup), setup.budget("bench"))])
    return results
