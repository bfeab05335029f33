"""The GPU check's setup and its training checks: every method under every precision, and DDP's two backends."""
import math
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from leebert_plugin.runtime.devices import fairseq_device_args, fairseq_env
from leebert_plugin.errors import UsageError
from leebert_plugin.runtime.launch import ROOT, hydra_command, json_records, launch_two_processes, quiet_env
from leebert_plugin.benchmark.gpu_check.results import CheckFailed, Result, one_line, run_check

HEAD = "sentence_classification_head"
PRECISIONS = {"fp32": [], "amp": ["common.amp=true"], "bf16": ["common.bf16=true"], "fp16": ["common.fp16=true"]}
# fairseq keeps --fp16's flat fp32 master copy on the current CUDA device; on the CPU, one copy per parameter
CPU_FP16 = ["common.fp16_no_flatten_grads=true"]
HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# the bundled data's slice: 160 training sentences are 5 updates an epoch at batch 32
SIZES = {"train": 160, "dev": 80, "test": 80}
SHORT = ["dataset.batch_size=32", "lr_scheduler.warmup_updates=2", "common.log_interval=1"]
ONE_STAGE = ["optimization.max_epoch=2"]
TWO_STAGES = ["task.stage1_epochs=1", "optimization.max_epoch=2", "optimization.max_update=1000"]  # 5 + 5 updates
METHODS = {  # name -> config, overrides
    "pabee": ("mr_multi_exit", ONE_STAGE),
    "leebert": ("mr_leebert", [*ONE_STAGE, "optimizer.w_update_interval=1", "optimizer.w_lr=0.05"]),
    "smartbert": ("mr_smartbert", [*TWO_STAGES, "task.soft_gate_epochs=1"]),
    "deebert": ("mr_deebert", TWO_STAGES),
}
TWO_STAGE_METHODS = ("smartbert", "deebert")
DDP_METHODS = ("pabee", "leebert")
DDP_ATOL = 1e-5  # a few Adam steps of lr <= 5e-4 from the same start; GPU sums may differ in the last bits
# RoBERTa's LM head, unused by the classifier: legacy_ddp all-reduces a zero gradient for it, so Adam's weight
# decay moves it there, while pytorch_ddp leaves it without a gradient and Adam skips it (seen: 1e-5 after 4 updates)
DDP_UNCOMPARED = ("encoder.lm_head.",)
# seconds on one GPU: data + all training runs + ddp per method (2) + exits + bench = 420 of the 480 allowed.
# On 2 CPU cores the self-test took 0 + 123 + 11 and 12 + 16 + 5 (tiny bench): the GPU's startup and steps are faster
BUDGETS = {"data": 30, "train": 150, "ddp": 60, "exits": 60, "bench": 60}


# ---- reading a run: its log and its checkpoints --------------------------------------------------
def final_train_loss(log: str) -> float:
    """The last training loss in fairseq's json log: the last epoch summary's ``train_loss``, else
    the last ``train_inner`` record's ``loss``. :class:`CheckFailed` if the log has neither."""
    epochs = [r for r in json_records(log, "train") if "train_loss" in r]
    if epochs:
        return float(epochs[-1]["train_loss"])
    inner = [r for r in json_records(log, "train_inner") if "loss" in r]
    if inner:
        return float(inner[-1]["loss"])
    raise CheckFailed("no training loss in the log")


def failure_line(proc: subprocess.CompletedProcess) -> str:
    """Why a fairseq command failed, in one line: the plugin's error line if it printed one, else
    the last line of its stderr (a traceback's last line names the exception)."""
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    ours = [l for l in lines if l.startswith("leebert-plugin: error:")]
    return f"exit status {proc.returncode}: " + one_line((ours or lines or ["(no output)"])[-1])


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's contents on the CPU (the plugin allow-lists what its checkpoints hold)."""
    import leebert_plugin  # noqa: F401  (safe loading's allow-list)

    if not path.exists():
        raise CheckFailed(f"{path} was not written")
    return torch.load(path, map_location="cpu")


def loss_weights_moved(checkpoint: dict) -> float:
    """Largest |logit| of LeeBERT's learned loss weights in ``checkpoint`` (they start at 0)."""
    try:
        logits = checkpoint["task_state"]["bilevel"]["weights"]["logits"]
    except (KeyError, TypeError):
        raise CheckFailed("the checkpoint holds no learned loss weights (task_state['bilevel'])") from None
    return float(logits.abs().max())


def rounded_like(value: torch.Tensor, precision: str, like: torch.Tensor) -> torch.Tensor:
    """``value`` as a run in ``precision`` holds it: rounded to bf16/fp16 for those, then in the
    dtype of ``like`` (the saved tensor it is compared with)."""
    if precision in HALF_DTYPES and value.is_floating_point():
        value = value.to(HALF_DTYPES[precision])
    return value.to(like.dtype)


def frozen_mismatches(stage1: Dict[str, torch.Tensor], final: Dict[str, torch.Tensor], names: Sequence[str],
                      precision: str) -> List[str]:
    """The ``names`` (stage 2's frozen tensors) whose final value is not exactly the stage-1 one
    (rounded to the run's precision)."""
    return [k for k in names if k not in final or not torch.equal(final[k], rounded_like(stage1[k], precision, final[k]))]


# ---- the checks --------------------------------------------------------------------------------
@dataclass
class Setup:
    """What every check needs: the device, the work folder, the preprocessed data, the options."""

    device: torch.device
    work: Path
    data: Path
    quick: bool = False
    jobs: int = 1
    logs: Dict[str, Path] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def budget(self, check: str) -> Optional[float]:
        """The check's time budget: enforced on CUDA; none on the CPU (a self-test of the logic)."""
        return BUDGETS[check] if self.cuda else None

    def timeout(self, check: str) -> float:
        """A subprocess's limit: its check's budget on CUDA, ten times that on the CPU."""
        return BUDGETS[check] * (1 if self.cuda else 10)

    def device_overrides(self) -> List[str]:
        """The mr_* configs say ``common.cpu: true``; on CUDA that must be undone."""
        return fairseq_device_args(self.device, hydra=True) or ["common.cpu=false"]

    def env(self) -> Dict[str, str]:
        return quiet_env(fairseq_env(self.device))


def fresh(folder: Path) -> Path:
    """``folder``, emptied: fairseq resumes from a ``checkpoint_last.pt`` it finds, and a second
    run of the check in the same work folder must start from scratch."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def prepare_data(work: Path) -> Path:
    """The bundled movie-review data's slice (:data:`SIZES`) preprocessed once into ``work/data``
    (reused when there)."""
    from leebert_plugin.data.sentencepiece_glue import preprocess_subset

    data = work / "data"
    if not (data / "label" / "dict.txt").exists():
        preprocess_subset(ROOT / "data" / "mr", data, SIZES, vocab_size=600)
    return data


def precision_overrides(precision: str, cuda: bool) -> List[str]:
    """The ``common.*`` flags of ``precision``; fp16 off CUDA keeps one master per parameter."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}", f"use one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision] + ([] if cuda or precision != "fp16" else CPU_FP16)


def train_run(setup: Setup, method: str, precision: str) -> str:
    """One short training run of ``method`` in ``precision``, judged; returns what it measured."""
    config, overrides = METHODS[method]
    save = fresh(setup.work / "train" / f"{method}-{precision}")
    cmd = hydra_command(config, save, f"task.data={setup.data}", *setup.device_overrides(), *SHORT, *overrides,
                        *precision_overrides(precision, setup.cuda), f"hydra.run.dir={save}/hydra",
                        "checkpoint.no_epoch_checkpoints=true")
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=setup.env(), capture_output=True, text=True,
                              timeout=setup.timeout("train"))
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"did not finish in {setup.timeout('train'):.0f} s") from None
    (save / "train.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise CheckFailed(f"{failure_line(proc)} (log: {save / 'train.log'})")
    loss = final_train_loss(proc.stdout)
    if not math.isfinite(loss):
        raise CheckFailed(f"final train loss {loss}")
    found = [f"loss {loss:.3f}"]
    if method == "leebert":
        moved = loss_weights_moved(load_checkpoint(save / "checkpoint_last.pt"))
        if moved == 0:
            raise CheckFailed("the learned loss weights did not move")
        found.append(f"weights moved {moved:.2g}")
    if method in TWO_STAGE_METHODS:
        found.append(check_stage2(setup, save, proc.stdout, precision))
    return ", ".join(found)


def check_stage2(setup: Setup, save: Path, log: str, precision: str) -> str:
    """Stage 2 happened, and its frozen part is the stage-1 checkpoint's (rounded to the precision)."""
    from leebert_plugin.exits.evaluate import load
    from leebert_plugin.tasks.two_stage import frozen_in_stage2

    if "stage 2: restored" not in log:
        raise CheckFailed("no 'stage 2: restored' in the log: stage 2 never began")
    final = load_checkpoint(save / "checkpoint_last.pt")["model"]
    stage1 = load_checkpoint(save / "checkpoint_stage1_best.pt")["model"]
    model, _ = load(save / "checkpoint_last.pt", setup.data, "cpu")
    names = frozen_in_stage2(model, HEAD)
    wrong = frozen_mismatches(stage1, final, names, precision)
    if wrong:
        raise CheckFailed(f"stage 2 changed {len(wrong)} frozen tensors, e.g. {wrong[0]}")
    return f"stage 2 kept {len(names)} frozen tensors"


def check_train(setup: Setup) -> List[Result]:
    """Check 1: every method x precision, :attr:`Setup.jobs` runs at a time; one result each."""
    runs = [(m, p) for m in METHODS for p in PRECISIONS]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=setup.jobs) as pool:
        futures = [pool.submit(run_check, f"train {m} {p}", lambda m=m, p=p: train_run(setup, m, p)) for m, p in runs]
        results = [f.result() for f in futures]
    total = time.perf_counter() - start
    budget = setup.budget("train")
    over = budget is not None and total > budget
    results.append(Result("train (all runs)", "FAIL" if over else "PASS",
                          f"{total:.0f} s for {len(runs)} runs, {setup.jobs} at a time"
                          + (f", over its budget of {budget:.0f} s" if over else ""), total))
    return results


def ddp_overrides(setup: Setup) -> List[str]:
    """Two ranks of batch 16 (the single run's 32 per update), dropout off, a few updates, no
    validation (both runs must draw nothing at random after initialisation)."""
    return [f"task.data={setup.data}", *setup.device_overrides(), "dataset.batch_size=16",
            "lr_scheduler.warmup_updates=2", "common.log_interval=1", "optimization.max_epoch=2",
            f"optimization.max_update={4 if setup.quick else 6}", "model.dropout=0.0", "model.attention_dropout=0.0",
            "dataset.disable_validation=true", "checkpoint.no_epoch_checkpoints=true"]


def largest_difference(a: dict, b: dict, skip: Sequence[str] = ()) -> float:
    """Largest |a - b| over the floating tensors of two state dicts with the same keys, but for
    those whose names start with one of ``skip``."""
    if sorted(a) != sorted(b):
        raise CheckFailed(f"the checkpoints hold different tensors: {sorted(set(a) ^ set(b))[:3]}")
    return max((float((a[k].double() - b[k].double()).abs().max()) for k in a
                if torch.is_tensor(a[k]) and a[k].is_floating_point() and a[k].numel()
                and not k.startswith(tuple(skip))), default=0.0)


def ddp_run(setup: Setup, method: str, backend: str) -> dict:
    """Both ranks of ``method`` under DDP ``backend``; rank 0's last checkpoint."""
    config, overrides = METHODS[method]
    save = fresh(setup.work / "ddp" / f"{method}-{backend}")
    extra = ["optimizer.w_update_interval=2", "optimizer.w_lr=0.05"] if method == "leebert" else []
    try:
        done = launch_two_processes(config, save, *ddp_overrides(setup), *extra, backend=backend,
                                    base_env=fairseq_env(setup.device), timeout=setup.timeout("ddp"))
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"{backend}: the ranks did not finish in {setup.timeout('ddp'):.0f} s") from None
    for rank, proc in enumerate(done):
        (save / f"rank{rank}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise CheckFailed(f"{backend} rank {rank}: {failure_line(proc)} (log: {save / f'rank{rank}.log'})")
    return load_checkpoint(save / "checkpoint_last.pt")


def ddp_check(setup: Setup, method: str) -> str:
    """Check 2 for one method: pytorch_ddp's final checkpoint against legacy_ddp's."""
    with ThreadPoolExecutor(max_workers=2 if setup.jobs > 1 else 1) as pool:
        ours, legacy = pool.map(lambda backend: ddp_run(setup, method, backend), ("pytorch_ddp", "legacy_ddp"))
    diff = largest_difference(ours["model"], legacy["model"], DDP_UNCOMPARED)
    if method == "leebert":
        diff = max(diff, largest_difference(ours["task_state"]["bilevel"]["weights"],
                                            legacy["task_state"]["bilevel"]["weights"]))
    if diff > DDP_ATOL:
        raise CheckFailed(f"pytorch_ddp and legacy_ddp differ by {diff:.2e} (tolerance {DDP_ATOL:g})")
    return f"pytorch_ddp = legacy_ddp within {DDP_ATOL:g} (largest difference {diff:.1e}; LM head not compared)"


def check_ddp(setup: Setup) -> List[Result]:
    """Check 2: two ranks on the one device for each of :data:`DDP_METHODS`."""
    return [run_check(f"ddp {m}", lambda m=m: ddp_check(setup, m), setup.budget("ddp")) for m in DDP_METHODS]
