"""``early_exit_sentence_prediction``: fairseq's sentence_prediction, plus exit policies at validation.

Validation reports, next to the criterion's full-depth accuracy of every exit, the metric under
the configured exit policy, the mean number of executed layers, the layer speed-up and the exit
histogram. The exit settings are task fields, so ``fairseq-validate --exit-threshold X`` overrides
the value saved in the checkpoint.
"""
import logging
import os
import shutil
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq import checkpoint_utils, distributed_utils
from fairseq.logging import metrics
from fairseq.tasks import register_task
from fairseq.tasks.sentence_prediction import SentencePredictionConfig, SentencePredictionTask
from omegaconf import II, OmegaConf, open_dict

from leebert_plugin.data import checks
from leebert_plugin.data.bilevel_split import in_d2, subset_sample
from leebert_plugin.errors import UsageError
from leebert_plugin.exits import glue_metrics
from leebert_plugin.exits.flops import full_model_flops, sample_flops
from leebert_plugin.exits.policies import build_policy
from leebert_plugin.tasks.nonfinite import check_finite

logger = logging.getLogger(__name__)


@dataclass
class EarlyExitSentencePredictionConfig(SentencePredictionConfig):
    # plain fields, not interpolations of criterion.*: the task is the one source of truth and
    # hands them to the criterion, so fairseq-validate needs no --criterion flag
    classification_head_name: str = field(
        default="sentence_classification_head", metadata={"help": "name of the exits' head"}
    )
    regression_target: bool = field(default=False, metadata={"help": "regression (STS-B) target"})
    exit_policy: str = field(
        default="none",
        metadata={"help": "exit policy at validation: none, entropy, normalized_entropy, "
                          "max_prob, patience or pcee"},
    )
    exit_threshold: Optional[float] = field(
        default=None,
        metadata={"help": "threshold of the policy: entropy in nats [0, ln C]; normalized_entropy "
                          "and pcee in [0, 1]; max_prob in [0, 1]; unused by patience"},
    )
    exit_patience: int = field(
        default=1, metadata={"help": "consecutive agreeing (patience) or confident (pcee) exits; "
                                     "not --patience, which is fairseq's early stopping"}
    )
    stage1_epochs: int = field(
        default=0,
        metadata={"help": "two-stage training (SmartBERT, DeeBERT): epochs of stage 1; after them the task "
                          "reloads the best stage-1 checkpoint, freezes all but the intermediate exits and "
                          "trains those (stage 2) until optimization.max_epoch; 0: one stage"},
    )
    soft_gate_epochs: int = field(
        default=0, metadata={"help": "first epochs of stage 1 with soft gate weights; hard (straight-through) after"}
    )
    stage1_checkpoint: str = field(
        default="", metadata={"help": "checkpoint stage 2 starts from (default: SAVE_DIR/checkpoint_best.pt, "
                                      "kept as checkpoint_stage1_best.pt)"}
    )
    save_dir: str = II("checkpoint.save_dir")
    restore_file: str = II("checkpoint.restore_file")
    load_checkpoint_on_all_dp_ranks: bool = II("checkpoint.load_checkpoint_on_all_dp_ranks")
    d2_ratio: float = field(
        default=0.5,
        metadata={"help": "bi-level training (optimizer clo): share of the training set in D2, the "
                          "split that trains the loss weights; membership is a hash of id and seed"},
    )


@register_task("early_exit_sentence_prediction", dataclass=EarlyExitSentencePredictionConfig)
class EarlyExitSentencePredictionTask(SentencePredictionTask):
    def __init__(self, cfg, data_dictionary, label_dictionary):
        super().__init__(cfg, data_dictionary, label_dictionary)
        self._model = None
        self._split_checked = False
        self._last_meta_update = -1
        self.policy = build_policy(cfg.exit_policy, cfg.num_classes, cfg.exit_threshold, cfg.exit_patience)
        self.never_exit = build_policy("none", cfg.num_classes)

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        if not 0.0 < cfg.d2_ratio < 1.0:
            raise UsageError(f"d2_ratio={cfg.d2_ratio} is outside (0, 1)", "set task.d2_ratio to e.g. 0.5")
        if cfg.num_classes is None or cfg.num_classes < 1:
            raise UsageError(f"num_classes={cfg.num_classes}", "set task.num_classes to the number of labels")
        checks.check_data_dir(cfg.data, cfg.regression_target)
        if not kwargs.get("from_checkpoint", False):  # training, not evaluation of a saved model
            # the running process group (fairseq initialises it before setting up the task)
            world = distributed_utils.get_data_parallel_world_size()
            checks.check_restore_file(cfg.restore_file, cfg.save_dir, world,
                                      world == 1 or cfg.load_checkpoint_on_all_dp_ranks)
        task = super().setup_task(cfg, **kwargs)
        if not cfg.regression_target:
            checks.check_num_classes(cfg.num_classes, task.label_dictionary, cfg.data)
        return task

    def load_dataset(self, split, combine=False, **kwargs):
        checks.check_split(self.cfg.data, split, self.cfg.regression_target)
        return super().load_dataset(split, combine=combine, **kwargs)

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        self._model = model  # build_criterion attaches the criterion's learned loss weights to it
        return model

    def build_criterion(self, cfg, from_checkpoint=False):
        """Hand the head name and target type to the criterion; refuse contradicting values.

        A criterion that learns its term weights gets them on the model here: fairseq builds the
        model, then the criterion, then (lazily) the optimizer, which so sees the weights.
        """
        criterion = self._build_criterion(cfg, from_checkpoint)
        spec = getattr(criterion, "loss_weight_spec", lambda model: None)(self._model)
        if spec is not None and self._model is not None:
            self._model.attach_loss_weights(**spec)
        return criterion

    def _build_criterion(self, cfg, from_checkpoint=False):
        if OmegaConf.is_config(cfg):
            defaults = {"classification_head_name": "sentence_classification_head", "regression_target": False}
            with open_dict(cfg):
                for key, default in defaults.items():
                    mine = getattr(self.cfg, key)
                    # a criterion value other than its default was set on purpose: it must agree
                    if key in cfg and cfg[key] not in (None, default, mine):
                        raise UsageError(
                            f"criterion.{key}={cfg[key]!r} contradicts task.{key}={mine!r}",
                            f"set it on the task only (task.{key})",
                        )
                    cfg[key] = mine
        return super().build_criterion(cfg, from_checkpoint)

    def _check_split(self) -> None:
        """Both D1 and D2 must hold examples; checked once, on the first bi-level update."""
        if self._split_checked:
            return
        split = next((name for name in self.datasets if name.startswith("train")), None)
        if split is None:
            return
        n = len(self.datasets[split])
        d2 = int(in_d2(torch.arange(n), self.cfg.seed, self.cfg.d2_ratio).sum())
        if d2 == 0 or d2 == n:
            empty = "D2" if d2 == 0 else "D1"
            raise UsageError(
                f"{empty} is empty: d2_ratio={self.cfg.d2_ratio} puts {d2} of the {n} training examples in D2",
                "use more training data or a d2_ratio nearer 0.5",
            )
        logger.info(f"bi-level split: {n - d2} examples in D1, {d2} in D2 (d2_ratio={self.cfg.d2_ratio})")
        self._split_checked = True

    def begin_epoch(self, epoch, model):
        """Two-stage training: set the gate mode, and switch to stage 2 after ``stage1_epochs``."""
        super().begin_epoch(epoch, model)
        if self.cfg.stage1_epochs <= 0:
            return
        in_stage1 = epoch <= self.cfg.stage1_epochs
        model.gate_mode = "soft" if in_stage1 and epoch <= self.cfg.soft_gate_epochs else "hard"
        if not in_stage1 and model.stage == 1:
            self._enter_stage2(model)

    def _read_stage1(self, path: str, default: str) -> dict:
        """The stage-1 checkpoint's model weights (kept as checkpoint_stage1_best.pt)."""
        if not os.path.isfile(path):
            raise UsageError(f"stage 2 needs a stage-1 checkpoint, and {path} does not exist",
                             "let stage 1 validate and save (task.stage1_epochs > 0, checkpoint.no_save=false) "
                             "or point task.stage1_checkpoint at one")
        kept = os.path.join(self.cfg.save_dir, "checkpoint_stage1_best.pt")
        if path == default and not os.path.exists(kept):
            shutil.copyfile(path, kept)
        return checkpoint_utils.load_checkpoint_to_cpu(path)["model"]

    def _enter_stage2(self, model) -> None:
        default = os.path.join(self.cfg.save_dir, "checkpoint_best.pt")
        path = self.cfg.stage1_checkpoint or default
        # rank 0 wrote the checkpoint and reads it; the other ranks may have raced ahead of its
        # save, or not see its disk: they get the weights from rank 0 (only the weights: the
        # broadcast unpickles weights-only, and the saved cfg is an omegaconf object)
        distributed = distributed_utils.get_data_parallel_world_size() > 1
        first = not distributed or distributed_utils.get_data_parallel_rank() == 0
        weights = self._read_stage1(path, default) if first else None
        if distributed:
            weights = distributed_utils.broadcast_object(weights, src_rank=0,
                                                         group=distributed_utils.get_data_parallel_group())
        model.load_state_dict(weights, strict=True)
        model.enter_stage2(self.cfg.classification_head_name)
        # stage 2's best checkpoint is chosen among stage-2 epochs only
        if hasattr(checkpoint_utils.save_checkpoint, "best"):
            del checkpoint_utils.save_checkpoint.best
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.info(f"stage 2: restored {path}; training the intermediate exits only ({trainable} parameters)")

    @staticmethod
    def _drop_frozen(optimizer) -> None:
        """Stage 2 leaves the frozen parameters out of the optimizer (and their state with them)."""
        inner = getattr(optimizer, "optimizer", None)
        for group in getattr(inner, "param_groups", []):
            frozen = [p for p in group["params"] if not p.requires_grad]
            if frozen:
                for p in frozen:
                    inner.state.pop(p, None)
                group["params"] = [p for p in group["params"] if p.requires_grad]

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if getattr(model, "stage", 1) == 2:
            self._drop_frozen(optimizer)
        loss, sample_size, logging_output = self._train_step(sample, model, criterion, optimizer, update_num,
                                                             ignore_grad)
        check_finite(loss, model, optimizer, update_num)  # before fairseq's step: nothing is overwritten
        return loss, sample_size, logging_output

    def _train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        """With the clo optimizer: split the batch into D1/D2, run the meta step when due, then
        train the model (on both splits for clo, on D1 for darts). Otherwise the parent's step."""
        clo = _find_clo(optimizer)
        if clo is None:
            return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)
        clo.driven_by_task = True
        self._check_split()
        model.train()
        model.set_num_updates(update_num)
        d2 = in_d2(sample["id"], self.cfg.seed, self.cfg.d2_ratio)
        b1, b2 = subset_sample(sample, ~d2), subset_sample(sample, d2)
        stats = {"meta_steps": 0, "hypergrad_norm": 0.0}  # the same keys on every worker
        # decided by the update number alone, so every worker joins the meta step's all-reduce;
        # once per update, however many micro-batches (update_freq) it has
        if clo.meta_due(update_num) and update_num != self._last_meta_update:
            self._last_meta_update = update_num
            with torch.autograd.profiler.record_function("clo-meta-step"):
                meta_batches = (None, None) if ignore_grad else (b1, b2)
                stats = clo.meta_step(model, criterion, *meta_batches, seed=self.cfg.seed * 1_000_003 + update_num)
        batch = sample if clo.trains_on_both_splits() else b1
        nothing_to_train = batch is None  # a darts batch without D1 examples
        with torch.autograd.profiler.record_function("forward"):
            loss, sample_size, logging_output = criterion(model, sample if nothing_to_train else batch)
        if ignore_grad or nothing_to_train:
            loss *= 0
        with torch.autograd.profiler.record_function("backward"):
            optimizer.backward(loss)
        if nothing_to_train:  # keep the keys (workers sum them), count nothing
            sample_size = 0
            logging_output = {k: v * 0 if torch.is_tensor(v) else 0 for k, v in logging_output.items()}
        logging_output.update(stats)
        return loss, sample_size, logging_output

    def valid_step(self, sample, model, criterion):
        """Full-depth pass (criterion: every exit's accuracy), then the policy's batched pass."""
        loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        nsentences = sample["target"].numel()
        num_layers = model.num_layers
        # before stage 2 has trained the intermediate exits, a policy would only measure noise
        policy = self.policy if (self.cfg.stage1_epochs <= 0 or model.stage == 2) else self.never_exit
        lengths = sample["net_input"]["src_tokens"].ne(self.source_dictionary.pad()).sum(-1)
        if policy.name == "none" and model.skip_gates is None:
            exit_layer = torch.full((nsentences,), num_layers, dtype=torch.long)
            layers_run = exit_layer
            exits_run = torch.full_like(exit_layer, len(model.exit_layers))
            gates_run = torch.zeros_like(exit_layer)
        else:
            with torch.no_grad():
                logits, extra = model(
                    **sample["net_input"],
                    features_only=True,
                    classification_head_name=self.cfg.classification_head_name,
                    exit_policy=policy,
                )
            exits = extra["exits"]
            exit_layer, layers_run = exits.exit_layer, exits.layers_run
            exits_run, gates_run = exits.exits_run, exits.gates_run
            targets = model.get_targets(sample, [logits]).view(-1)
            if not self.cfg.regression_target:
                logging_output["ncorrect"] = (logits.argmax(-1) == targets).sum()
            glue_metrics.log_statistics(logging_output, "", logits, targets.type_as(logits) if self.cfg.regression_target
                                        else targets, self.cfg.regression_target, getattr(criterion, "positive", 1))
            if model.skip_gates is not None:
                logging_output["layers_skipped"] = exits.layers_skipped.sum()
                for i, count in enumerate(exits.skipped_per_layer.tolist(), start=1):
                    logging_output[f"skip_L{i}"] = count
        logging_output["layers_run"] = layers_run.sum()
        logging_output["layers_full"] = num_layers * nsentences
        head = self.cfg.classification_head_name
        logging_output["flops"] = float(sample_flops(model, head, lengths, layers_run, exits_run, gates_run).sum())
        logging_output["flops_full"] = float(full_model_flops(model, head, lengths).sum())
        for layer in model.exit_layers:
            logging_output[f"exit_L{layer}"] = (exit_layer == layer).sum()
        return loss, sample_size, logging_output

    @classmethod
    def logging_outputs_can_be_summed(cls, criterion) -> bool:
        """Regression validation logs its predictions as lists (Spearman's ranks): gather them
        across workers instead of summing (training stays on the summing fast path)."""
        gathers = getattr(criterion, "regression_target", False) and not criterion.training
        return criterion.logging_outputs_can_be_summed() and not gathers

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        meta = sum(log.get("meta_steps", 0) for log in logging_outputs)
        if meta:
            norm = sum(log.get("hypergrad_norm", 0.0) for log in logging_outputs)
            metrics.log_scalar("hypergrad_norm", norm / meta, meta, round=6)
        if not any("layers_full" in log for log in logging_outputs):
            return  # training steps carry no exit statistics
        layers_run = float(sum(log.get("layers_run", 0) for log in logging_outputs))
        nsentences = sum(log.get("nsentences", 0) for log in logging_outputs)
        layers_full = float(sum(log.get("layers_full", 0) for log in logging_outputs))
        metrics.log_scalar("mean_layers", layers_run / nsentences, nsentences, round=3)
        # every layer skipped by every sample (gates) is an unbounded layer speed-up
        metrics.log_scalar("speedup", layers_full / layers_run if layers_run else float("inf"), nsentences, round=3)
        flops = float(sum(log.get("flops", 0) for log in logging_outputs))
        flops_full = float(sum(log.get("flops_full", 0) for log in logging_outputs))
        metrics.log_scalar("gflops", flops / nsentences / 1e9, nsentences, round=4)
        metrics.log_scalar("flops_speedup", flops_full / flops if flops else float("inf"), nsentences, round=3)
        skipped = sum(log.get("layers_skipped", 0) for log in logging_outputs)
        if any("layers_skipped" in log for log in logging_outputs):
            metrics.log_scalar("mean_skipped", float(skipped) / nsentences, nsentences, round=3)
        for prefix in ("exit_L", "skip_L"):
            keys = sorted({k for log in logging_outputs for k in log if k.startswith(prefix)},
                          key=lambda k: int(k[len(prefix):]))
            for key in keys:
                count = sum(log.get(key, 0) for log in logging_outputs)
                metrics.log_scalar(key, 100.0 * float(count) / nsentences, nsentences, round=2)


def _find_clo(optimizer):
    """The CLOOptimizer, or None; refused under fp16/bf16/AMP wrappers."""
    from leebert_plugin.optim.clo import CLOOptimizer

    if isinstance(optimizer, CLOOptimizer):
        return optimizer
    for attr in ("fp32_optimizer", "wrapped_optimizer", "optimizer"):
        if isinstance(getattr(optimizer, attr, None), CLOOptimizer):
            raise UsageError(
                "the clo optimizer runs in fp32 only: its finite differences and its separate "
                "loss-weight optimizer do not survive fairseq's fp16/bf16/AMP wrappers",
                "set common.fp16=false common.bf16=false common.amp=false",
            )
    return None
