"""Evaluating a trained exit model over a split: real early-exit passes, and exact replays.

``run`` is a real batched early-exit pass (the code fairseq-validate runs) with its metrics,
speed-ups and wall-clock. ``trace`` records every exit's logits at full depth once; ``replay``
then gives, for any policy and threshold, the exit each sample would take. For models without
skip gates the replay is exact: an exit's decision depends only on that exit's logits, which do
not depend on which other samples are still in the batch (tests/test_evaluate.py checks it
against real passes). Sweeps over many thresholds cost one pass instead of one per threshold.

Every function runs on one device: ``device`` when given (the model is moved there and every batch
is moved there as it runs; the batches stay where :func:`batches` made them, on the CPU, as
fairseq's loaders do), else the device the model is on. Wall-clock is read through
:class:`~leebert_plugin.runtime.devices.Stopwatch`, which waits for a GPU's queued kernels.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from fairseq import checkpoint_utils
from torch import Tensor

from leebert_plugin.errors import UsageError
from leebert_plugin.runtime.devices import DeviceLike, Stopwatch, place, resolve_device, to_device
from leebert_plugin.exits import glue_metrics
from leebert_plugin.exits.flops import full_model_flops, plain_flops, sample_flops, spent_flops, unit_flops
from leebert_plugin.exits.policies import ExitPolicy


def load(checkpoint: Union[str, Path], data: Union[str, Path, None] = None,
         device: DeviceLike = None) -> Tuple[torch.nn.Module, object]:
    """A trained checkpoint in eval mode on ``device`` (default: CUDA if available, else the CPU)
    and its task; ``data`` replaces the data folder it was trained on (for its dictionaries and
    splits). The device is checked before the checkpoint is read, so a refused one costs nothing."""
    target = resolve_device(device)
    overrides = {"data": str(data)} if data else None
    state = trained_state(checkpoint, overrides)
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)], arg_overrides=overrides,
                                                                    state=state)
    return models[0].eval().to(target), task


TASK = "early_exit_sentence_prediction"


def trained_state(checkpoint: Union[str, Path], overrides: Optional[Dict] = None) -> Dict:
    """The checkpoint's contents, refused in one line unless a fine-tuning run of :data:`TASK` (or of
    a task derived from it) saved them: an encoder that ``convert_hf_bert.py`` wrote (task
    ``masked_lm``) or another fairseq model would otherwise fail deep inside fairseq, while it sets
    up a task whose data is not there."""
    from fairseq.tasks import TASK_REGISTRY

    from leebert_plugin.fairseq_patches.safe_loading import check_path
    from leebert_plugin.tasks.early_exit_sentence_prediction import EarlyExitSentencePredictionTask

    if "://" not in str(checkpoint):  # a local path (fairseq's PathManager reads the others)
        check_path(str(checkpoint))
    try:  # fairseq's upgrade of the state assumes a training checkpoint: a flat tensor dict ends in KeyError
        state = checkpoint_utils.load_checkpoint_to_cpu(str(checkpoint), overrides)
        name = getattr(state["cfg"].task, "_name", None)
    except (KeyError, AttributeError, TypeError) as e:
        raise UsageError(f"{checkpoint} is not a fairseq training checkpoint ({type(e).__name__} {e} reading it)",
                         "pass checkpoint_best.pt or checkpoint_last.pt of a fine-tuning run; an export folder's "
                         "model.pt loads with EarlyExitClassifier.from_pretrained(FOLDER)") from None
    if not isinstance(TASK_REGISTRY.get(name), type) or not issubclass(TASK_REGISTRY[name], EarlyExitSentencePredictionTask):
        raise UsageError(f"{checkpoint} was saved by task {name!r}, not by a fine-tuning run of {TASK}",
                         f"pass checkpoint_best.pt or checkpoint_last.pt of a run trained with --user-dir user_dir "
                         f"and task {TASK}; an encoder that convert_hf_bert.py wrote is fine-tuned first")
    return state


def batches(task, subset: str, batch_size: int) -> List[dict]:
    """The split's batches in a fixed order."""
    task.load_dataset(subset)
    itr = task.get_batch_iterator(dataset=task.dataset(subset), max_sentences=batch_size,
                                  max_positions=task.max_positions(), seed=1).next_epoch_itr(shuffle=False)
    return list(itr)


def classification_metrics(pred: Tensor, target: Tensor, num_classes: int, positive: int) -> Dict[str, float]:
    """Accuracy, and F1 / MCC for binary tasks (x100)."""
    row = {"accuracy": 100.0 * float((pred == target).float().mean())}
    if num_classes == 2:
        counts = {k: float(v) for k, v in glue_metrics.confusion(pred, target, positive).items()}
        row.update(f1=glue_metrics.f1(counts), mcc=glue_metrics.mcc(counts))
    return row


@dataclass
class PassOutcomes:
    """What one real early-exit pass decided for each sample of a split, in the split's batch order."""

    ids: Tensor  # the dataset's sample ids
    pred: Tensor
    target: Tensor
    layers: Tensor  # layers run per sample
    flops: Tensor  # FLOPs spent per sample
    full_flops: Tensor  # FLOPs of the plain model per sample
    num_classes: int
    positive: int
    num_layers: int
    seconds: float

    def metrics(self) -> Dict[str, float]:
        """Metrics (x100), layer and FLOPs speed-up against the plain model, seconds in the model."""
        row = classification_metrics(self.pred, self.target, self.num_classes, self.positive)
        row.update(layer_speedup=self.num_layers / max(float(self.layers.float().mean()), 1e-9),
                   flops_speedup=float(self.full_flops.sum()) / max(float(self.flops.sum()), 1e-9),
                   seconds=self.seconds)
        return row


def pass_outcomes(model, task, data, policy: ExitPolicy, device: DeviceLike = None) -> PassOutcomes:
    """One real pass over ``data`` under ``policy``, sample by sample; the seconds are the forwards
    only (moving a batch to the device is not the model's time)."""
    target = place(model, device)
    head = task.cfg.classification_head_name
    pad = task.source_dictionary.pad()
    ids, preds, targets, layers, flops, full_flops = [], [], [], [], [], []
    watch = Stopwatch(target)
    with torch.no_grad():
        for sample in data:
            ids.append(sample["id"].view(-1).cpu())
            sample = to_device(sample, target)
            tokens = sample["net_input"]["src_tokens"]
            with watch:
                logits, extra = model(tokens, classification_head_name=head, exit_policy=policy)
            out = extra["exits"]
            lengths = tokens.ne(pad).sum(-1)
            preds.append(logits.argmax(-1).cpu())
            targets.append(sample["target"].view(-1).cpu())
            layers.append(out.layers_run.cpu())
            flops.append(sample_flops(model, head, lengths, out.layers_run, out.exits_run, out.gates_run).cpu())
            full_flops.append(full_model_flops(model, head, lengths).cpu())
    cat = torch.cat
    return PassOutcomes(cat(ids), cat(preds), cat(targets), cat(layers), cat(flops), cat(full_flops),
                        model.exit_heads[head].num_classes, glue_metrics.positive_class(task.label_dictionary),
                        model.num_layers, watch.seconds)


def run(model, task, data, policy: ExitPolicy, device: DeviceLike = None) -> Dict[str, float]:
    """One real pass over ``data`` under ``policy``: metrics, speed-ups, seconds in the model."""
    return pass_outcomes(model, task, data, policy, device).metrics()


def plain_forward(model, head: str, tokens: Tensor) -> Tensor:
    """The plain model: fairseq's encoder at full depth, then the last exit's classifier (the
    reference every wall-clock speed-up is measured against)."""
    features, _ = model.encoder.extract_features(tokens)
    padding_mask = tokens.eq(model.encoder.sentence_encoder.padding_idx)
    return model.exit_heads[head](len(model.exit_layers) - 1, features.transpose(0, 1), padding_mask)


def plain_seconds(model, task, data, device: DeviceLike = None) -> float:
    """Seconds of ``plain_forward`` over ``data`` (the forwards only, as in :func:`run`)."""
    target = place(model, device)
    head = task.cfg.classification_head_name
    watch = Stopwatch(target)
    with torch.no_grad():
        for sample in data:
            tokens = to_device(sample["net_input"]["src_tokens"], target)
            with watch:
                plain_forward(model, head, tokens)
    return watch.seconds


@dataclass
class ExitTrace:
    """Every exit's logits at full depth over a split: ``logits`` is ``E x N x C``.

    With ``layer_flops`` and ``exit_flops`` (per sample, the FLOPs of one layer and of one exit
    evaluation: :func:`~leebert_plugin.exits.flops.unit_flops`) a trace is all a replay and its
    score need, FLOPs included: :func:`save_traces` keeps it, and a run can be scored again
    without its checkpoint."""

    logits: Tensor
    targets: Tensor
    lengths: Tensor  # real tokens per sample
    exit_layers: List[int]
    num_layers: int
    positive: int
    gated: bool  # with skip gates, early exit checks no exit at a skipped layer: no exact replay
    ids: Optional[Tensor] = None  # the dataset's sample ids, in the order of ``targets``
    layer_flops: Optional[Tensor] = None
    exit_flops: Optional[Tensor] = None


_TENSORS = ("logits", "targets", "lengths", "ids", "layer_flops", "exit_flops")
_SCALARS = ("num_layers", "positive", "gated")
# what a saved trace holds; raise it when trace() or the FLOPs units change, so that older files are
# not replayed as if they held the new content (:func:`trace_format` tells a reader which it has)
TRACE_FORMAT = 1


def save_traces(path: Path, traces: Dict[str, ExitTrace]) -> None:
    """Write ``traces`` (split name -> trace) to one ``.npz``, whole or not at all (a partial file,
    renamed when complete). Logits stay float32: a replay of the saved trace is the replay of the
    pass that made it, decision for decision."""
    arrays = {}
    for split, t in traces.items():
        if "/" in split:
            raise ValueError(f"split name {split!r} has a '/'")
        arrays.update({f"{split}/{k}": getattr(t, k).numpy() for k in _TENSORS if getattr(t, k) is not None})
        arrays.update({f"{split}/{k}": np.asarray(getattr(t, k)) for k in _SCALARS})
        arrays[f"{split}/exit_layers"] = np.asarray(t.exit_layers)
    arrays["format"] = np.asarray(TRACE_FORMAT)
    partial = Path(path).with_name(Path(path).name + ".part.npz")
    try:
        np.savez_compressed(partial, **arrays)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def trace_format(path: Path) -> int:
    """The :data:`TRACE_FORMAT` the traces at ``path`` were saved under."""
    with np.load(path) as z:
        return int(z["format"]) if "format" in z.files else 0


def load_traces(path: Path) -> Dict[str, ExitTrace]:
    """The traces :func:`save_traces` wrote, by split name."""
    with np.load(path) as z:
        fields: Dict[str, Dict] = {}
        for key in z.files:
            if key == "format":
                continue
            split, name = key.split("/", 1)
            fields.setdefault(split, {})[name] = z[key]
    out = {}
    for split, f in fields.items():
        tensors = {k: torch.from_numpy(f[k]) for k in _TENSORS if k in f}
        out[split] = ExitTrace(exit_layers=[int(v) for v in f["exit_layers"]], num_layers=int(f["num_layers"]),
                               positive=int(f["positive"]), gated=bool(f["gated"]), **tensors)
    return out


def trace(model, task, data, device: DeviceLike = None) -> ExitTrace:
    """Every exit's logits at full depth over ``data``, computed on ``device`` and kept on the CPU:
    replays and scores then run the same whatever the device, and hold no GPU memory."""
    target = place(model, device)
    head = task.cfg.classification_head_name
    per_batch, targets, lengths, ids = [], [], [], []
    with torch.no_grad():
        for sample in data:
            ids.append(sample["id"].view(-1).cpu())
            tokens = to_device(sample["net_input"]["src_tokens"], target)
            _, extra = model(tokens, classification_head_name=head)
            per_batch.append(torch.stack(extra["exits"].exit_logits).cpu())
            targets.append(sample["target"].view(-1).cpu())
            lengths.append(tokens.ne(task.source_dictionary.pad()).sum(-1).cpu())
    lengths = torch.cat(lengths)
    layer_flops, exit_flops = unit_flops(model, head, lengths)
    return ExitTrace(torch.cat(per_batch, 1), torch.cat(targets), lengths, list(model.exit_layers),
                     model.num_layers, glue_metrics.positive_class(task.label_dictionary),
                     model.skip_gates is not None, torch.cat(ids), layer_flops, exit_flops)


def replay(policy: ExitPolicy, t: ExitTrace) -> Tensor:
    """The exit index (0-based among the exits) each sample takes under ``policy``."""
    if t.gated:
        raise ValueError("a replay is exact only without skip gates: use run() per threshold")
    n = t.logits.size(1)
    state = policy.init_state(n, t.logits.device)
    exit_at = torch.full((n,), len(t.exit_layers) - 1, dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool)
    for k in range(len(t.exit_layers) - 1):
        leaves, state = policy.step(t.logits[k], state)
        exit_at[leaves & ~done] = k
        done |= leaves
    return exit_at


def oracle_exits(t: ExitTrace) -> Tensor:
    """The earliest exit whose prediction is right; the first exit when none is (the sample is
    lost anyway). No policy over these exits is faster at this accuracy."""
    right = t.logits.argmax(-1) == t.targets.unsqueeze(0)  # E x N
    return right.float().argmax(0)  # the first True, or 0 when there is none


def predictions(t: ExitTrace, exit_at: Tensor) -> Tensor:
    """The class each sample predicts when it leaves at exit ``exit_at`` (0-based among the exits)."""
    return t.logits.gather(0, exit_at.view(1, -1, 1).expand(1, -1, t.logits.size(-1)))[0].argmax(-1)


def layer_speedup(t: ExitTrace, exit_at: Tensor) -> float:
    """``L / mean layers run`` when the samples of ``t`` leave at ``exit_at``."""
    return t.num_layers / float(torch.tensor(t.exit_layers)[exit_at].float().mean())


def flops_speedup(t: ExitTrace, exit_at: Tensor) -> float:
    """The plain model's FLOPs over ``t`` (every layer, the last exit once) divided by those spent
    when the samples leave at ``exit_at``, every exit up to the chosen one evaluated:
    sum(L f_layer + f_exit) / sum(l_i f_layer + (k_i + 1) f_exit), per-sample units of the trace."""
    if t.layer_flops is None or t.exit_flops is None:
        raise ValueError("this trace has no FLOPs units (layer_flops, exit_flops): make it with trace()")
    layers = torch.tensor(t.exit_layers)[exit_at]
    full = plain_flops(t.layer_flops, t.exit_flops, t.num_layers)
    ran = spent_flops(t.layer_flops, t.exit_flops, layers, exit_at + 1)
    return float(full.sum()) / float(ran.sum())


def score(t: ExitTrace, exit_at: Tensor) -> Dict[str, float]:
    """Metrics and layer speed-up of the predictions taken at ``exit_at``, and the FLOPs speed-up
    when the trace has its FLOPs units."""
    row = classification_metrics(predictions(t, exit_at), t.targets, t.logits.size(-1), t.positive)
    row["layer_speedup"] = layer_speedup(t, exit_at)
    if t.layer_flops is not None and t.exit_flops is not None:
        row["flops_speedup"] = flops_speedup(t, exit_at)
    return row
