"""fairseq's DDP backends with the plugin: which ones are supported, and ``pytorch_ddp`` on CPU.

Supported: ``pytorch_ddp`` (alias ``c10d``, fairseq's default), ``legacy_ddp`` (alias
``no_c10d``). Every method runs under each of them because of one rule the model, the criteria
and the task keep: every parameter that gets a gradient in a step is used inside the wrapped
model's ``forward``, and nothing runs a backward through the wrapper outside the normal training
step (the bi-level meta step works on the unwrapped model, with weights DDP never sees).

Refused in one line: ``fully_sharded`` (needs fairscale and flattens the parameters, so the exits'
learning rate, stage 2's freezing and the meta step's parameter perturbations cannot address a
parameter) and ``slowmo`` (fairscale's local SGD: ranks drift apart between averaging rounds,
while the meta step and the stage switch need identical ranks).

fairseq's ``pytorch_ddp`` branch passes ``device_ids=[device_id]`` whatever the device, which
torch refuses for a CPU module ("device_ids ... only work with single-device/multiple-device GPU
modules"). CPU clusters (gloo) exist, and it is how CI exercises the GPU default: for a module
whose parameters are all on the CPU the plugin drops ``device_ids``/``output_device``, as torch
asks; GPU modules are wrapped exactly as fairseq does.
"""
from typing import Dict, List, Optional

from fairseq.models import distributed_fairseq_model
from torch.nn.parallel import DistributedDataParallel

from leebert_plugin.errors import UsageError

SUPPORTED = ("pytorch_ddp", "c10d", "legacy_ddp", "no_c10d")
REFUSED = {
    "fully_sharded": "it needs fairscale and flattens the parameters, which the exits' learning rate, "
                     "stage 2's freezing and the bi-level meta step must address one by one",
    "slowmo": "its local SGD lets ranks drift apart between averaging rounds, while the meta step "
              "and the stage switch need identical ranks",
}


def check_backend(backend: str, find_unused_parameters: bool = True, world_size: int = 1, use_bmuf: bool = False,
                  zero_sharding: str = "none") -> None:
    """Refuse a DDP backend the plugin cannot run, naming the supported ones; and, with several
    workers under torch's DDP, ``find_unused_parameters=false``: some parameters get no gradient
    in a step (RoBERTa's LM head always, what stage 2 freezes, the exits a stage does not train),
    and DDP would wait for them ("Expected to have finished reduction in the prior iteration").

    Two of fairseq's other ways to spread training are refused for the same reasons as the
    backends above: BMUF (``optimization.use_bmuf``: fairseq then wraps no DDP at all and the ranks
    train apart between block syncs, as under slowmo) and optimizer-state sharding
    (``distributed_training.zero_sharding=os``: fairscale's OSS, which the plugin does not install,
    holding each rank's share of a state the two-stage switch rebuilds whole)."""
    if backend not in SUPPORTED:
        why = REFUSED.get(backend, "fairseq does not know it")
        raise UsageError(f"distributed_training.ddp_backend={backend} is not supported by leebert-plugin: {why}",
                         "use distributed_training.ddp_backend=pytorch_ddp (fairseq's default) or legacy_ddp")
    if use_bmuf:
        raise UsageError("optimization.use_bmuf=true is not supported by leebert-plugin: under BMUF the ranks train "
                         "apart between block syncs, while the meta step and the stage switch need identical ranks",
                         "drop use_bmuf; fairseq's default pytorch_ddp averages every step")
    if zero_sharding not in (None, "none"):
        raise UsageError(f"distributed_training.zero_sharding={zero_sharding} is not supported by leebert-plugin: it "
                         "needs fairscale, which the plugin does not install, and shards the optimizer state that "
                         "stage 2 rebuilds whole", "use distributed_training.zero_sharding=none (the default)")
    if backend in ("pytorch_ddp", "c10d") and world_size > 1 and not find_unused_parameters:
        raise UsageError("distributed_training.find_unused_parameters=false under pytorch_ddp: some parameters get no "
                         "gradient in a step (RoBERTa's unused LM head, stage 2's frozen part), and DDP would wait for them",
                         "set distributed_training.find_unused_parameters=true (the plugin's configs do)")


class DeviceAwareDDP(DistributedDataParallel):
    """torch's DDP, without ``device_ids``/``output_device`` for a module that lives on the CPU."""

    def __init__(self, module, device_ids: Optional[list] = None, output_device=None, **kwargs):
        if not any(p.is_cuda for p in module.parameters()):
            device_ids = output_device = None
        check_same_model(module, kwargs.get("process_group"))
        super().__init__(module, device_ids=device_ids, output_device=output_device, **kwargs)


def model_difference(shapes: List[Dict[str, tuple]]) -> Optional[str]:
    """The first difference between the ranks' models (``shapes[r]``: rank r's parameter name ->
    shape), said as rank 0's tensor against the other rank's; None when every rank has rank 0's."""
    first = shapes[0]
    for rank, other in enumerate(shapes[1:], start=1):
        for name in sorted(set(first) | set(other)):
            if first.get(name) != other.get(name):
                def said(r, shape):
                    return f"missing on rank {r}" if shape is None else f"{list(shape)} on rank {r}"
                return (f"rank {rank} built another model than rank 0 ({len(other)} parameters against {len(first)}): "
                        f"{name} is {said(0, first.get(name))} and {said(rank, other.get(name))}")
    return None


def check_same_model(module, process_group=None) -> None:
    """Every rank has built the same model, else one line on every rank (torch's own check ends in
    a traceback per rank, "DDP expects same model across all ranks"). Ranks build different models
    when their settings or data folders differ (another dict.txt changes the embedding's size)."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size(process_group) < 2:
        return
    mine = {name: tuple(p.shape) for name, p in module.named_parameters()}
    shapes: List[Dict[str, tuple]] = [{} for _ in range(dist.get_world_size(process_group))]
    dist.all_gather_object(shapes, mine, group=process_group)
    difference = model_difference(shapes)
    if difference is not None:
        raise UsageError(difference, "give every rank the same settings and the same data folder (its dict.txt "
                                     "sets the embedding's size), then start the job again")


def install() -> None:
    """Make fairseq's ``pytorch_ddp`` branch build :class:`DeviceAwareDDP` (once per process)."""
    distributed_fairseq_model.DistributedDataParallel = DeviceAwareDDP
