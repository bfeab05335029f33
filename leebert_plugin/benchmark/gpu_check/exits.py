"""The exits check: per-sample exit decisions on the device against the CPU's, and batch 32 against batch 1."""
import subprocess
from pathlib import Path

import torch

from leebert_plugin.runtime.devices import fairseq_device_args, fairseq_env
from leebert_plugin.runtime.launch import BIN, ROOT, hydra_command, json_records, quiet_env
from leebert_plugin.benchmark.gpu_check.decisions import (DECISION_TOL, criterion_values, decisions_agree, margins,
                                                          mean_layers_allowance)
from leebert_plugin.benchmark.gpu_check.results import CheckFailed
from leebert_plugin.benchmark.gpu_check.training import HEAD, SHORT, Setup, failure_line, fresh


def exit_layers(model, task, subset: str, batch_size: int, policy, device: torch.device) -> torch.Tensor:
    """Per sample (in id order), the layers the real batched early-exit pass ran on ``device``."""
    from leebert_plugin.runtime.devices import to_device
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
