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
"""
import math
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, TextIO

import torch

from leebert_plugin.devices import fairseq_device_args, fairseq_env
from leebert_plugin.errors import UsageError
from leebert_plugin.launch import BIN, ROOT, hydra_command, json_records, launch_two_processes, quiet_env

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
DECISION_TOL = 1e-4  # |criterion - threshold| under which a decision may tip between devices
# seconds on one GPU: data + all training runs + ddp per method (2) + exits + bench = 420 of the 480 allowed.
# On 2 CPU cores the self-test took 0 + 123 + 11 and 12 + 16 + 5 (tiny bench): the GPU's startup and steps are faster
BUDGETS = {"data": 30, "train": 150, "ddp": 60, "exits": 60, "bench": 60}


@dataclass
class Result:
    """One check's outcome: ``status`` PASS, FAIL or SKIP, a one-line ``reason`` (why it failed
    or was skipped, or what it measured), and its wall-clock seconds."""

    name: str
    status: str
    reason: str = ""
    seconds: float = 0.0

    def line(self) -> str:
        """``STATUS name (N.N s)[: reason]``, the line the script prints."""
        return f"{self.status} {self.name} ({self.seconds:.1f} s)" + (f": {self.reason}" if self.reason else "")


class CheckFailed(Exception):
    """A check's verdict FAIL, with its one-line reason."""


class CheckSkipped(Exception):
    """A check that cannot run here, with the reason."""


def one_line(text: str, limit: int = 300) -> str:
    """``text`` folded onto one line and cut to ``limit`` characters, for a reason."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_check(name: str, check: Callable[[], str], budget: Optional[float] = None) -> Result:
    """Run ``check`` (which returns what it measured, or raises :class:`CheckFailed` or
    :class:`CheckSkipped`) and time it. Any other exception is a FAIL too, named by its type, so
    that one broken check never stops the others. Over ``budget`` seconds: a FAIL."""
    start = time.perf_counter()
    try:
        status, reason = "PASS", check()
    except CheckSkipped as e:
        status, reason = "SKIP", str(e)
    except CheckFailed as e:
        status, reason = "FAIL", str(e)
    except Exception as e:  # a UsageError too
        status, reason = "FAIL", f"{type(e).__name__}: {e}"
    seconds = time.perf_counter() - start
    if status == "PASS" and budget is not None and seconds > budget:
        status, reason = "FAIL", f"took {seconds:.0f} s, over its budget of {budget:.0f} s; {reason}"
    return Result(name, status, one_line(reason or ""), seconds)


def exit_status(results: Sequence[Result]) -> int:
    """1 if any check failed, else 0 (a SKIP is no failure)."""
    return int(any(r.status == "FAIL" for r in results))


def summary(results: Sequence[Result]) -> str:
    """The closing line: how many checks passed, failed and were skipped."""
    counts = {s: sum(r.status == s for r in results) for s in ("PASS", "FAIL", "SKIP")}
    return f"gpu check: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped"


def report(results: Sequence[Result], out: TextIO = sys.stdout) -> int:
    """Print every result's line and the summary; the exit status (:func:`exit_status`)."""
    for r in results:
        print(r.line(), file=out)
    print(summary(results), file=out)
    return exit_status(results)


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


# ---- exit decisions: one device against another ---------------------------------------------------
@dataclass
class Agreement:
    """Per-sample decisions of two runs: how many samples, how many differ, and how many of those
    are excused (their criterion within the tolerance of the threshold)."""

    samples: int
    differ: int
    excused: int

    @property
    def ok(self) -> bool:
        return self.differ == self.excused

    def describe(self) -> str:
        return f"{self.differ} of {self.samples} differ, {self.excused} of them within the tolerance"


def decisions_agree(a_layers: Sequence[int], b_layers: Sequence[int], margins: Sequence[float],
                    tol: float = DECISION_TOL) -> Agreement:
    """Compare two runs' per-sample exit layers. A sample may differ only if its ``margin`` (the
    distance of its criterion to the threshold at the exits it was checked at) is below ``tol``:
    there the last bits of the arithmetic decide, which differ between devices and batch sizes."""
    a, b, m = (torch.as_tensor(x) for x in (a_layers, b_layers, margins))
    if not a.shape == b.shape == m.shape or a.dim() != 1:
        raise ValueError(f"decisions_agree needs three vectors of one length, got {list(a.shape)}, "
                         f"{list(b.shape)}, {list(m.shape)}")
    differ = a != b
    return Agreement(int(a.numel()), int(differ.sum()), int((differ & (m < tol)).sum()))


CRITERIA = {  # policy -> the value its threshold is compared with, from one exit's logits (N x C)
    "normalized_entropy": lambda logits: _entropy(logits) / math.log(logits.size(-1)),
    "entropy": lambda logits: _entropy(logits),
    "max_prob": lambda logits: torch.softmax(logits.float(), -1).amax(-1),
}


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    from leebert_plugin.exits.policies import entropy

    return entropy(logits)


def criterion_values(policy: str, logits: torch.Tensor) -> torch.Tensor:
    """``E x N``: the policy's criterion at every exit (``logits``: ``E x N x C``)."""
    if policy not in CRITERIA:
        raise UsageError(f"the GPU check compares threshold policies only, not {policy!r}",
                         f"use one of {', '.join(sorted(CRITERIA))}")
    return torch.stack([CRITERIA[policy](exit_logits) for exit_logits in logits])


def margins(values: torch.Tensor, threshold: float, checked: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per sample, the smallest |criterion - threshold| over the exits that decide (all but the
    last, where every sample leaves); ``checked`` (per sample, an exit index) limits that to the
    exits up to it: the later exits were never looked at. ``values``: ``E x N``."""
    distance = (values[:-1] - threshold).abs()
    if checked is not None:
        exits = torch.arange(distance.size(0)).unsqueeze(1)
        distance = distance.masked_fill(exits > checked.unsqueeze(0), math.inf)
    return distance.amin(0) if distance.numel() else torch.full((values.size(1),), math.inf)


def mean_layers_allowance(near: int, samples: int, layer_range: int, digits: int = 3) -> float:
    """How far two runs' mean executed layers may differ when ``near`` of ``samples`` may tip
    (each by at most ``layer_range`` layers) and each mean was printed to ``digits`` decimals."""
    return near * layer_range / samples + 10.0 ** -digits


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


def exit_layers(model, task, subset: str, batch_size: int, policy, device: torch.device) -> torch.Tensor:
    """Per sample (in id order), the layers the real batched early-exit pass ran on ``device``."""
    from leebert_plugin.devices import to_device
    from leebert_plugin.exits.evaluate import batches

    model.to(device)
    by_id = {}
    with torch.no_grad():
        for sample in batches(task, subset, batch_size):
            tokens = to_device(sample["net_input"]["src_tokens"], device)
            _, extra = model(tokens, classification_head_name=HEAD, exit_policy=policy)
            by_id.update(zip(sample["id"].tolist(), extra["exits"].layers_run.cpu().tolist()))
    return torch.tensor([by_id[i] for i in sorted(by_id)])


def full_depth_values(model, task, subset: str, policy: str) -> torch.Tensor:
    """``E x N``: every exit's criterion at full depth on the CPU, samples in id order."""
    from leebert_plugin.exits.evaluate import batches, trace

    data = batches(task, subset, 32)
    ids = torch.cat([s["id"] for s in data])
    logits = trace(model, task, data, "cpu").logits
    return criterion_values(policy, logits[:, ids.argsort()])


def validate_mean_layers(setup: Setup, checkpoint: Path, device: torch.device, policy: str, threshold: float) -> float:
    """``fairseq-validate``'s mean executed layers on ``valid`` under the policy, on ``device``."""
    cmd = [str(BIN / "fairseq-validate"), str(setup.data), "--path", str(checkpoint), "--user-dir", str(ROOT / "user_dir"),
           "--task", "early_exit_sentence_prediction", "--valid-subset", "valid", "--batch-size", "32",
           "--exit-policy", policy, "--exit-threshold", str(threshold), "--log-format", "json",
           *fairseq_device_args(device)]
    proc = subprocess.run(cmd, cwd=ROOT, env=quiet_env(fairseq_env(device)), capture_output=True, text=True,
                          timeout=setup.timeout("exits"))
    if proc.returncode != 0:
        raise CheckFailed(f"fairseq-validate on {device}: {failure_line(proc)}")
    records = json_records(proc.stdout, "valid")
    if not records:
        raise CheckFailed(f"fairseq-validate on {device} printed no valid record")
    return float(records[-1]["valid_mean_layers"])


def exits_check(setup: Setup, policy: str = "normalized_entropy", threshold: float = 0.5) -> str:
    """Check 3: train a tiny multi_exit model on the device (50 updates at a high lr, so that its
    exits' confidences spread and the decisions at ``threshold`` are mixed), then compare its exit
    decisions on the device with the CPU's (batch 32), batch 32 with batch 1 on the device, and
    fairseq-validate's mean executed layers on both devices."""
    from leebert_plugin.exits.evaluate import load
    from leebert_plugin.exits.policies import build_policy

    save = fresh(setup.work / "exits")
    cmd = hydra_command("mr_multi_exit", save, f"task.data={setup.data}", *setup.device_overrides(), *SHORT,
                        "optimization.max_epoch=10", "optimization.lr=[2e-3]", f"hydra.run.dir={save}/hydra",
                        "checkpoint.no_epoch_checkpoints=true")
    proc = subprocess.run(cmd, cwd=ROOT, env=setup.env(), capture_output=True, text=True, timeout=setup.timeout("exits"))
    if proc.returncode != 0:
        raise CheckFailed(f"training: {failure_line(proc)}")
    checkpoint = save / "checkpoint_last.pt"
    model, task = load(checkpoint, setup.data, "cpu")
    values = full_depth_values(model, task, "valid", policy)
    num_classes = model.exit_heads[HEAD].num_classes
    rule = build_policy(policy, num_classes, threshold)
    cpu32 = exit_layers(model, task, "valid", 32, rule, torch.device("cpu"))
    dev32 = exit_layers(model, task, "valid", 32, rule, setup.device)
    dev1 = exit_layers(model, task, "valid", 1, rule, setup.device)
    exit_at = torch.tensor(list(model.exit_layers))

    def agree(a, b):
        checked = torch.maximum(torch.searchsorted(exit_at, a), torch.searchsorted(exit_at, b))
        return decisions_agree(a, b, margins(values, threshold, checked))

    devices, batch = agree(cpu32, dev32), agree(dev32, dev1)
    near = int((margins(values, threshold) < DECISION_TOL).sum())
    on_cpu = validate_mean_layers(setup, checkpoint, torch.device("cpu"), policy, threshold)
    on_device = validate_mean_layers(setup, checkpoint, setup.device, policy, threshold)
    allowed = mean_layers_allowance(near, cpu32.numel(), int(exit_at[-1] - exit_at[0]))
    about = (f"{policy} < {threshold:g}: mean layers {float(cpu32.float().mean()):.3f}; {setup.device} vs cpu: "
             f"{devices.describe()}; batch 32 vs 1: {batch.describe()}; fairseq-validate mean layers "
             f"{on_device:.3f} vs {on_cpu:.3f} (allowed {allowed:.3f}, {near} samples near the threshold)")
    if len(set(cpu32.tolist())) < 2:
        raise CheckFailed(f"every sample left at one exit, nothing to compare: {about}")
    if not (devices.ok and batch.ok and abs(on_device - on_cpu) <= allowed):
        raise CheckFailed(about)
    return about


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
