"""Where evaluation, benchmarks and the hub run, and how they are timed.

One device per command, as fairseq's own tools choose it: CUDA when torch has it, else the CPU
(``--device`` overrides). A CUDA request that this machine cannot meet is refused in one line
(:class:`~leebert_plugin.errors.UsageError`) before any model is loaded.

CUDA runs kernels asynchronously: a clock read right after a forward measures the launch, not the
work. :class:`Stopwatch` waits for the device before each clock read, so every wall-clock figure
of the scripts is the same measurement on a GPU as on the CPU.
"""
import argparse
import os
import time
from typing import Callable, Dict, List, Optional, Union

import torch
from fairseq import utils

from leebert_plugin.errors import UsageError

DeviceLike = Union[str, torch.device, None]


def resolve_device(name: DeviceLike = None) -> torch.device:
    """The device ``name`` names (``"cpu"``, ``"cuda"``, ``"cuda:1"``); None: CUDA if available,
    else the CPU. Other device types are refused: the plugin's models are tested on these two."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {str(name)!r}", "use cpu, cuda or cuda:<index>") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"device {str(name)!r} is not supported", "use cpu, cuda or cuda:<index>")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {str(name)!r} requested, but torch finds no CUDA device on this machine",
                             "pass cpu as the device (--device cpu), or run on a machine with a GPU and a CUDA "
                             "build of torch")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"device {str(name)!r} requested, but this machine has {torch.cuda.device_count()} "
                             "CUDA device(s)", f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device`` for a script; resolve it with :func:`resolve_device` right after parsing, so a
    refused device stops the script before it loads anything."""
    parser.add_argument("--device", default=None, metavar="DEVICE",
                        help="cpu, cuda or cuda:<index> (default: cuda if available, else cpu)")


def model_device(model: torch.nn.Module) -> torch.device:
    """The device the model's parameters are on."""
    return next(model.parameters()).device


def place(model: torch.nn.Module, device: DeviceLike = None) -> torch.device:
    """The device to run ``model`` on: ``device`` when given (the model is moved there and stays),
    else the one it is already on, so that repeated calls never move it back and forth."""
    if device is None:
        return model_device(model)
    target = resolve_device(device)
    model.to(target)
    return target


def to_device(sample, device: torch.device):
    """``sample`` (a batch: nested dicts, lists and tensors) with every tensor on ``device``;
    fairseq's ``apply_to_sample``, as its ``move_to_cuda``, but for any device."""
    return utils.apply_to_sample(lambda t: t.to(device, non_blocking=True), sample)


def synchronize(device: Optional[torch.device]) -> None:
    """Wait for the work queued on ``device``: a CUDA device's kernels; nothing on the CPU (its
    work is done when the call returns) or for None."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Wall-clock seconds summed over ``with stopwatch:`` blocks, the device synchronised before
    each clock read (see the module docstring). ``device`` None: nothing in this process to wait
    for (a subprocess, say)."""

    def __init__(self, device: Optional[torch.device] = None):
        self.device = device
        self.seconds = 0.0
        self._start = 0.0

    def __enter__(self) -> "Stopwatch":
        synchronize(self.device)  # work queued before the block is not the block's
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.seconds += time.perf_counter() - self._start


def seconds(fn, device: Optional[torch.device] = None) -> float:
    """Seconds of one call of ``fn()`` on ``device`` (a :class:`Stopwatch` around it)."""
    with Stopwatch(device) as watch:
        fn()
    return watch.seconds


def interleaved_seconds(variants: Dict[str, Callable[[int], object]], items: int, repeats: int,
                        device: Optional[torch.device] = None) -> Dict[str, List[float]]:
    """Seconds of each variant over ``items`` work items (``variant(j)`` does item ``j``), per repeat.

    The variants take turns item by item, their order rotated from one turn to the next (across
    repeats too, so that with fewer items than variants each still takes every place), and each
    variant's time in a repeat is the sum of its items: a slow spell of the machine (seconds, on a
    shared host) then falls on every variant alike, which whole passes one after another do not
    give, and no variant always runs right after another on the same input (warm caches)."""
    names = list(variants)
    out = {name: [] for name in names}
    turn = 0
    for _ in range(repeats):
        watches = {name: Stopwatch(device) for name in names}
        for j in range(items):
            turn += 1
            for r in range(len(names)):
                name = names[(turn - 1 + r) % len(names)]
                with watches[name]:
                    variants[name](j)
        for name in names:
            out[name].append(watches[name].seconds)
    return out


def ratios_per_repeat(times: Dict[str, List[float]], numerator: str, denominator: str) -> List[float]:
    """``times[numerator][r] / times[denominator][r]`` for each repeat ``r`` of
    :func:`interleaved_seconds`: a ratio of two variants timed in the same repeat, where a slow
    spell fell on both, so its spread over the repeats is the measurement's noise (a ratio of two
    medians taken over different repeats would hide it)."""
    return [n / d for n, d in zip(times[numerator], times[denominator], strict=True)]


def fairseq_device_args(device: torch.device, hydra: bool = False) -> List[str]:
    """What a fairseq subprocess (``fairseq-validate``, or ``fairseq-hydra-train`` with
    ``hydra``) needs to run on ``device``: the CPU flag for the CPU, nothing for CUDA (fairseq
    takes the GPU it finds; :func:`fairseq_env` says which)."""
    if device.type != "cpu":
        return []
    return ["common.cpu=true"] if hydra else ["--cpu"]


def fairseq_env(device: torch.device) -> Dict[str, str]:
    """The environment for a fairseq subprocess on ``device``: for CUDA, only that GPU visible
    (fairseq's own idiom, ``CUDA_VISIBLE_DEVICES``), because fairseq-train otherwise trains on every
    GPU it sees, which multiplies the batch and changes a benchmark's budget; ``cuda`` alone is the
    current device. Indices count among the GPUs already visible, as torch's do."""
    env = dict(os.environ)
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        visible = env.get("CUDA_VISIBLE_DEVICES")
        env["CUDA_VISIBLE_DEVICES"] = visible.split(",")[index] if visible else str(index)
    return env
