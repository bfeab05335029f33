"""``early_exit_sentence_prediction``: fairseq's sentence_prediction, plus exit policies at validation.

Validation reports, next to the criterion's full-depth accuracy of every exit, the metric under
the configured exit policy, the mean number of executed layers, the layer speed-up and the exit
histogram. The exit settings are task fields, so ``fairseq-validate --exit-threshold X`` overrides
the value saved in the checkpoint.
"""
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch
from fairseq import distributed_utils
from fairseq.logging import metrics
from fairseq.optim.amp_optimizer import AMPOptimizer
from fairseq.tasks import register_task
from fairseq.tasks.sentence_prediction import SentencePredictionConfig, SentencePredictionTask
from omegaconf import II, ListConfig, OmegaConf, open_dict

from leebert_plugin.cli import leave
from leebert_plugin.data import checks
from leebert_plugin.errors import UsageError
from leebert_plugin.exits import glue_metrics
from leebert_plugin.exits.flops import full_model_flops, sample_flops
from leebert_plugin.exits.policies import build_policy, parse_thresholds
from leebert_plugin.fairseq_patches import command_line, ddp
from leebert_plugin.modules.loss_weights import LossWeights
from leebert_plugin.optim import precision
from leebert_plugin.optim.bilevel import BilevelTraining
from leebert_plugin.runtime.option_checks import check_options
from leebert_plugin.tasks.nonfinite import check_finite
from leebert_plugin.tasks.stage_schedule import check_stage_epochs, updates_per_epoch
from leebert_plugin.tasks.two_stage import TwoStageTraining

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
                          "max_prob, patience, pcee or per_exit_entropy"},
    )
    exit_threshold: Optional[float] = field(
        default=None,
        metadata={"help": "threshold of the policy: entropy in nats [0, ln C]; normalized_entropy "
                          "and pcee in [0, 1]; max_prob in [0, 1]; unused by patience"},
    )
    exit_thresholds: str = field(
        default="",
        metadata={"help": "per_exit_entropy: comma-separated normalised-entropy thresholds in [0, 1], one per "
                          "exit but the last (scripts/benchmark.py's points.tsv lists calibrated ones)"},
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
    stage1_only: bool = field(
        default=False,
        metadata={"help": "two-stage training: train stage 1 alone (backbone, gates, last exit), on purpose. "
                          "Without it a run whose optimization.max_epoch or max_update ends inside stage 1 is "
                          "refused before its first update; with it, one that goes on past stage 1 is"},
    )
    # Read from other config groups. No help metadata on these: fairseq adds a field whose default is
    # an interpolation to argparse when it has help, a second --max-epoch etc. whose default (None)
    # would replace the owning group's (fairseq/dataclass/utils.py, gen_parser_from_dataclass).
    save_dir: str = II("checkpoint.save_dir")
    restore_file: str = II("checkpoint.restore_file")
    load_checkpoint_on_all_dp_ranks: bool = II("checkpoint.load_checkpoint_on_all_dp_ranks")
    # refused: fairseq then skips the copies onto checkpoint_last.pt / checkpoint_best.pt
    write_checkpoints_asynchronously: bool = II("checkpoint.write_checkpoints_asynchronously")
    ddp_backend: str = II("distributed_training.ddp_backend")
    find_unused_parameters: bool = II("distributed_training.find_unused_parameters")
    zero_sharding: str = II("distributed_training.zero_sharding")  # refused unless "none" (ddp.check_backend)
    use_bmuf: bool = II("optimization.use_bmuf")  # refused (ddp.check_backend)
    # the optimizer's settings: under clo they configure bi-level training (optim/bilevel.py)
    optimizer_settings: Any = II("optimizer")
    max_epoch: int = II("optimization.max_epoch")
    # the run's length: where stage 2 starts in updates (two-stage training), and the loss weights' lr
    # clo derives from it (optim/bilevel.py); known with the training epoch iterator
    max_update: int = II("optimization.max_update")
    update_freq: Any = II("optimization.update_freq")
    train_subset: str = II("dataset.train_subset")
    # the per-stage schedule (lr_scheduler._name=two_stage_linear) is set by the task, update by update
    lr: Any = II("optimization.lr")
    lr_scheduler_settings: Any = II("lr_scheduler")
    # checked against the longest sentence of every split before the first batch (data/checks.py)
    max_tokens: Optional[int] = II("dataset.max_tokens")
    # the precision settings, checked before fairseq builds its optimizer wrapper (optim/precision.py)
    common_settings: Any = II("common")
    d2_ratio: float = field(
        default=0.5,
        metadata={"help": "bi-level training (optimizer clo): share of the training set in D2, the "
                          "split that trains the loss weights; membership is a hash of id and seed"},
    )


# the task's fields that mirror another group's options (``II("optimization.lr")``): checked and named there
MIRRORED = frozenset(f.name for f in dataclasses.fields(EarlyExitSentencePredictionConfig)
                     if isinstance(f.default, str) and f.default.startswith("${"))


@register_task("early_exit_sentence_prediction", dataclass=EarlyExitSentencePredictionConfig)
class EarlyExitSentencePredictionTask(SentencePredictionTask):
    def __init__(self, cfg, data_dictionary, label_dictionary):
        super().__init__(cfg, data_dictionary, label_dictionary)
        self.bilevel: Optional[BilevelTraining] = None  # LeeBERT's learned loss weights (clo): bilevel_for
        self._bilevel_state = None  # (state, reset_optimizer) restored before the bi-level object was built
        self._train_batches: Optional[int] = None  # batches per epoch of the training split (get_batch_iterator)
        self.two_stage = self._two_stage(cfg) if cfg.stage1_epochs > 0 else None
        self._said_stage1_policy = False
        self.policy = build_policy(cfg.exit_policy, cfg.num_classes, cfg.exit_threshold, cfg.exit_patience,
                                   parse_thresholds(cfg.exit_thresholds))
        self.never_exit = build_policy("none", cfg.num_classes)

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        check_options("task", cfg, skip=MIRRORED)
        check_options("optimizer", _outer(cfg, "optimizer_settings", None))
        if cfg.num_classes is None or cfg.num_classes < 1:
            raise UsageError(f"num_classes={cfg.num_classes}", "set task.num_classes to the number of labels")
        checks.check_data_dir(cfg.data, cfg.regression_target)
        if not kwargs.get("from_checkpoint", False):  # training, not evaluation of a saved model
            # the running process group (fairseq initialises it before setting up the task)
            world = distributed_utils.get_data_parallel_world_size()
            # a task config built alone in Python has no distributed_training group to interpolate
            ddp.check_backend(_outer(cfg, "ddp_backend", "pytorch_ddp"), _outer(cfg, "find_unused_parameters", True),
                              world, _outer(cfg, "use_bmuf", False), _outer(cfg, "zero_sharding", "none"))
            cls._check_stages(cfg)
            precision.check_precision(_outer(cfg, "common_settings", None), torch.cuda.is_available())
            if _outer(cfg, "write_checkpoints_asynchronously", False):
                raise command_line.async_checkpoints_refused()
            checks.check_restore_file(cfg.restore_file, cfg.save_dir, world,
                                      world == 1 or cfg.load_checkpoint_on_all_dp_ranks)
        task = super().setup_task(cfg, **kwargs)
        if not cfg.regression_target:
            checks.check_num_classes(cfg.num_classes, task.label_dictionary, cfg.data, kwargs.get("from_checkpoint", False))
        return task

    @staticmethod
    def _check_stages(cfg) -> None:
        """Before training: a budget (``max_epoch``) that ends inside stage 1, or goes past it with
        ``stage1_only``; the per-stage schedule without two stages or without an end to decay to.
        ``max_update`` is checked once the updates of an epoch are known (:meth:`get_batch_iterator`)."""
        max_epoch, max_update = _outer(cfg, "max_epoch", 0), _outer(cfg, "max_update", 0)
        scheduler = _outer(cfg, "lr_scheduler_settings", None)
        per_stage = scheduler is not None and scheduler.get("_name") == "two_stage_linear"
        if cfg.stage1_epochs > 0:
            check_stage_epochs(cfg.stage1_epochs, max_epoch, max_update, cfg.stage1_only)
        elif cfg.stage1_only:
            raise UsageError("task.stage1_only=true without two-stage training (task.stage1_epochs=0)",
                             "set task.stage1_epochs to the epochs of stage 1, or task.stage1_only=false")
        if per_stage and cfg.stage1_epochs == 0:
            raise UsageError("lr_scheduler._name=two_stage_linear schedules the two stages of two-stage training, "
                             "and task.stage1_epochs=0 asks for one", "set task.stage1_epochs > 0, or use "
                             "lr_scheduler._name=polynomial_decay")
        if per_stage and max_epoch <= 0 and max_update <= 0:
            raise UsageError("lr_scheduler._name=two_stage_linear decays each stage to 0 at its end, and neither "
                             "optimization.max_epoch nor optimization.max_update ends the run",
                             "set optimization.max_epoch (stage 1 + stage 2 epochs)")

    @staticmethod
    def _two_stage(cfg) -> TwoStageTraining:
        """Two-stage training with the run's budget and, under ``two_stage_linear``, its per-stage schedule."""
        scheduler = _outer(cfg, "lr_scheduler_settings", None)
        per_stage = scheduler is not None and scheduler.get("_name") == "two_stage_linear"
        lr = _outer(cfg, "lr", [0.0])
        return TwoStageTraining(cfg, _outer(cfg, "max_epoch", 0) or 0, _outer(cfg, "max_update", 0) or 0,
                                float(lr[0] if isinstance(lr, (list, tuple, ListConfig)) else lr),
                                int(scheduler.get("warmup_updates", 0)) if per_stage else None)

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        if getattr(model, "exit_layers", None) is not None:  # the policy refuses a model it cannot decide for now,
            self.policy.check_model(len(model.exit_layers), model.active_gates is not None)  # not at validation
        if not from_checkpoint and getattr(model, "skip_gates", None) is not None and model.active_gates is None:
            raise UsageError(f"model.skip_threshold={model.args.skip_threshold} turns the skip gates off, an evaluation "
                             "mode, and this run trains them", "train with model.skip_threshold below 1 (0.5, the "
                             "authors'); evaluate with gates off by overriding it at validation")
        return model

    def load_dataset(self, split, combine=False, **kwargs):
        cfg = self.cfg
        checks.check_split(cfg.data, split, cfg.regression_target)
        checks.check_rows(cfg.data, split, self.source_dictionary, getattr(self, "label_dictionary", None),
                          cfg.regression_target, cfg.init_token, cfg.max_positions, str(cfg.shorten_method),
                          _outer(cfg, "max_tokens", None))
        checks.warn_unk_share(cfg.data, split, self.source_dictionary)
        return super().load_dataset(split, combine=combine, **kwargs)

    def build_criterion(self, cfg, from_checkpoint=False):
        """Hand the head name and target type to the criterion; refuse contradicting values."""
        check_options("criterion", cfg)
        criterion = self._build_criterion(cfg, from_checkpoint)
        learns = getattr(getattr(criterion, "cfg", None), "learn_weights", False)
        if from_checkpoint:
            return criterion
        if learns and self._bilevel_settings() is None:
            logger.warning("criterion.learn_weights=true without the clo optimizer: the loss-term weights stay "
                           "fixed at their start")
        if learns and self._bilevel_settings() is not None and self.cfg.stage1_epochs > 0:
            raise UsageError("learned loss-term weights (clo) are for one-stage training; with task.stage1_epochs > 0 "
                             "the terms change at the switch", "set criterion.learn_weights=false, or task.stage1_epochs=0")
        if not learns and self._bilevel_settings() is not None:
            # LeeBERT's terms at fixed weights (or PABEE's): clo is exit_adam plus the meta step, and
            # the meta step has nothing to learn, so the run is exit_adam's (no D1/D2 split). Refusing
            # would send the user to optimizer._name=exit_adam, which also means deleting every clo
            # key of the config (hydra cannot merge them into exit_adam's).
            learnable = self.cfg.stage1_epochs == 0  # learned weights are for one-stage training (above)
            logger.warning(f"criterion {cfg._name} with learn_weights=false under the clo optimizer: the loss-term "
                           "weights stay at their start, no meta step; the model trains as under exit_adam"
                           + (" (criterion.learn_weights=true learns them)" if learnable else ""))
        return criterion

    def _bilevel_settings(self):
        """The clo optimizer's settings, which configure bi-level training (None: another optimizer)."""
        settings = _outer(self.cfg, "optimizer_settings", None)
        return settings if settings is not None and settings.get("_name") == "clo" else None

    def bilevel_for(self, criterion, model) -> Optional[BilevelTraining]:
        """LeeBERT's bi-level training, when the criterion learns its term weights under ``clo``.

        The task owns it (the weights, their AdamW, the meta step), beside the model and
        fairseq's optimizer, and saves it in the checkpoint's ``task_state``. It is built on first
        use, when the model's exits (the terms' names) are known; a state restored before that
        (resume, ``fairseq-validate``) is applied then.
        """
        if self.bilevel is None and self._bilevel_settings() is not None and hasattr(criterion, "loss_weight_spec"):
            spec = criterion.loss_weight_spec(model.exit_layers)
            if spec is not None:
                self.bilevel = BilevelTraining(self._bilevel_settings(), spec["names"], spec["parametrization"],
                                               spec["group_scales"], self.cfg.d2_ratio, self.cfg.seed,
                                               next(model.parameters()).device, self.planned_updates())
                if self._bilevel_state is not None:
                    self.bilevel.load_state_dict(*self._bilevel_state)
        return self.bilevel

    def planned_updates(self) -> Optional[int]:
        """The updates this run will take, as fairseq's trainer stops it: ``optimization.max_update``,
        or ``max_epoch`` x the updates of an epoch (its training batches / ``update_freq``, known once
        the trainer built the epoch iterator), the smaller when both are set; None when neither is."""
        max_update = _outer(self.cfg, "max_update", 0) or 0
        max_epoch = _outer(self.cfg, "max_epoch", 0) or 0
        by_epochs = None
        if max_epoch > 0 and self._train_batches:
            by_epochs = max_epoch * updates_per_epoch(self._train_batches, self._update_freq())
        known = [n for n in (max_update if max_update > 0 else None, by_epochs) if n]
        return min(known) if known else None

    def get_batch_iterator(self, dataset, *args, **kwargs):
        """fairseq's iterator. That of the training split gives the updates of an epoch (its batches /
        ``update_freq``), known here before any update runs: the run's length under ``max_epoch``
        (:meth:`planned_updates`), and for a two-stage run the stages in updates, whose budget is
        checked here."""
        itr = super().get_batch_iterator(dataset, *args, **kwargs)
        train = self.datasets.get(_outer(self.cfg, "train_subset", "train"))
        if train is not None and dataset is train:
            self._train_batches = len(itr)
            if self.two_stage is not None:
                self.two_stage.plan_updates(updates_per_epoch(len(itr), self._update_freq(kwargs.get("epoch", 1))))
        return itr

    def _update_freq(self, epoch: int = 1) -> int:
        """``optimization.update_freq`` of ``epoch`` (fairseq's list holds one per epoch, the last repeated)."""
        freq = _outer(self.cfg, "update_freq", [1]) or [1]
        return int(freq[min(epoch, len(freq)) - 1] if isinstance(freq, (list, tuple, ListConfig)) else freq)

    def learned_loss_weights(self) -> Optional[Dict[str, float]]:
        """LeeBERT's learned loss-term weights by term name (``ce_L3``, ``kd_L3<L7``), from training or
        as the loaded checkpoint saved them (the hub, ``fairseq-validate``); None without them."""
        if self.bilevel is not None:
            weights = self.bilevel.weights
        elif self._bilevel_state is not None:
            weights = LossWeights.from_state(self._bilevel_state[0]["weights"])
        else:
            return None
        return dict(zip(weights.names, weights.weights().detach().cpu().tolist()))

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

    def begin_epoch(self, epoch, model):
        super().begin_epoch(epoch, model)
        if self.two_stage is not None:
            self.two_stage.begin_epoch(epoch, model)

    @staticmethod
    def stage(model) -> int:
        """The training stage, as the model records it (a stage-2 checkpoint fine-tuned further
        without task.stage1_epochs is still frozen as stage 2)."""
        return model.stage

    def learned_weights(self, criterion, model, stage: int):
        """The learned term weights the criterion is to use (None: its fixed ones)."""
        bilevel = self.bilevel_for(criterion, model)
        return None if bilevel is None else bilevel.current(criterion.term_names(model.exit_layers, stage=stage))

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        """One micro-batch: the stage's loss (on the D1/D2 batch the bi-level training asks for,
        after its meta step when due), ``backward``, and the check for non-finite values.

        Only fairseq's trainer calls this, and it answers any ``Exception`` from a train step by
        writing ``crash.pt`` into the save dir: a bad input found here (an empty D2, a NaN loss)
        leaves as ``SystemExit(line)`` (:func:`~leebert_plugin.cli.leave`), so the command ends in its one line
        with nothing written.
        """
        try:
            return self._train_step(sample, model, criterion, optimizer, update_num, ignore_grad)
        except UsageError as err:
            leave(str(err))

    def _train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad):
        model.train()
        model.set_num_updates(update_num)
        stage = (self.two_stage.before_step(model, optimizer, update_num) if self.two_stage is not None
                 else self.stage(model))
        batch, stats = sample, {}
        if self.bilevel_for(criterion, model) is not None:
            batch, stats = self._bilevel_update(sample, model, criterion, optimizer, update_num, ignore_grad)
        nothing_to_train = batch is None  # a darts batch without D1 examples
        device = sample["net_input"]["src_tokens"].device.type
        # fairseq's --amp: the forward under autocast, as fairseq's own train_step runs it
        with torch.autograd.profiler.record_function("forward"), \
                torch.autocast(device, enabled=isinstance(optimizer, AMPOptimizer)):
            loss, sample_size, logging_output = criterion(model, sample if nothing_to_train else batch, stage=stage,
                                                          learned=self.learned_weights(criterion, model, stage))
        if ignore_grad or nothing_to_train:
            loss *= 0
        with torch.autograd.profiler.record_function("backward"):
            optimizer.backward(loss)
        if nothing_to_train:  # keep the keys (workers sum them), count nothing
            sample_size = 0
            logging_output = {k: v * 0 if torch.is_tensor(v) else 0 for k, v in logging_output.items()}
        logging_output.update(stats)
        check_finite(loss, model, optimizer, update_num)  # before fairseq's step: nothing is overwritten
        return loss, sample_size, logging_output

    def _bilevel_update(self, sample, model, criterion, optimizer, update_num, ignore_grad):
        """Split the batch into D1/D2 and run the meta step when due (on the bare model: DDP must
        not see these passes). Returns the batch the model trains on and the meta-step figures."""
        split = next((name for name in self.datasets if name.startswith("train")), None)
        if split is not None:
            self.bilevel.check_split(len(self.datasets[split]))
        bare = _unwrapped(model)
        self.bilevel.to(next(bare.parameters()).device)
        b1, b2 = self.bilevel.split(sample)
        stats = {"meta_steps": 0, "meta_with_both": 0, "hypergrad_norm": 0.0}  # the same keys on every worker
        if self.bilevel.meta_due(update_num):
            with torch.autograd.profiler.record_function("clo-meta-step"):
                meta_batches = (None, None) if ignore_grad else (b1, b2)
                stats = self.bilevel.meta_step(bare, criterion, *meta_batches, update_num, optimizer.get_lr())
        return self.bilevel.training_batch(sample, b1), stats

    def dictionaries_sha256(self) -> str:
        return checks.dictionaries_sha256(self.source_dictionary, getattr(self, "label_dictionary", None))

    def check_resume(self, path: str, state: dict, criterion, reset_optimizer: bool, model_cfg=None) -> None:
        """Before fairseq's trainer reads a checkpoint it resumes from or restores without resetting
        the optimizer: the same criterion (fairseq asserts it deep inside, unless the optimizer is
        reset). The fix differs: a checkpoint of this save dir is resumed with its own criterion; one
        from elsewhere (``checkpoint.restore_file``) is started from with a fresh optimizer. A
        checkpoint of this save dir is also resumed with its own model settings (``model_cfg``,
        the run's: :func:`checks.changed_model_setting`)."""
        if model_cfg is not None and os.path.dirname(os.path.abspath(path)) == os.path.abspath(self.cfg.save_dir):
            cfg = state.get("cfg")
            changed = checks.changed_model_setting(cfg.get("model") if hasattr(cfg, "get") else None, model_cfg)
            if changed is not None:
                key, saved_value, value = changed
                raise UsageError(f"{path}, the checkpoint this run resumes, was trained with model.{key}={saved_value!r}; "
                                 f"this run asks for model.{key}={value!r}",
                                 f"resume with model.{key}={saved_value!r}, or start in another checkpoint.save_dir "
                                 f"(from its weights: checkpoint.restore_file={path} checkpoint.reset_optimizer=true)")
        history = state.get("optimizer_history") or [{}]
        saved = history[-1].get("criterion_name")
        if reset_optimizer or state.get("last_optimizer_state") is None or saved is None \
                or saved == type(criterion).__name__:
            return  # fairseq's trainer compares the criteria only when it would restore optimizer state
        cfg = state.get("cfg")  # a dict or DictConfig; None in an argparse-era checkpoint
        saved_cfg = cfg.get("criterion") if hasattr(cfg, "get") else None
        saved_name = saved_cfg.get("_name", saved) if hasattr(saved_cfg, "get") else saved
        name = getattr(getattr(criterion, "cfg", None), "_name", type(criterion).__name__)
        if os.path.dirname(os.path.abspath(path)) == os.path.abspath(self.cfg.save_dir):
            raise UsageError(f"the checkpoint being resumed in {self.cfg.save_dir} was trained with criterion "
                             f"{saved_name}, this run asks for {name}",
                             f"resume with criterion._name={saved_name}, or start in another checkpoint.save_dir "
                             "(from its weights: checkpoint.restore_file=... checkpoint.reset_optimizer=true)")
        raise UsageError(f"{path} was trained with criterion {saved_name}, this run asks for {name}, and its "
                         "optimizer state would be restored", "start from its weights with "
                         "checkpoint.reset_optimizer=true (or train with criterion._name=" + f"{saved_name})")

    def state_dict(self):
        state = dict(super().state_dict())
        state["dictionaries_sha256"] = self.dictionaries_sha256()
        if self.bilevel is not None:
            state["bilevel"] = self.bilevel.state_dict()
        elif self._bilevel_state is not None:  # restored, not used yet: passed on unchanged
            state["bilevel"] = self._bilevel_state[0]
        return state

    def load_state_dict(self, state_dict):
        self.restore_training_state(state_dict)

    def restore_training_state(self, state_dict, reset_optimizer: bool = False) -> None:
        """The saved bi-level state (weights, and their optimizer unless ``reset_optimizer``)."""
        state = dict(state_dict or {})
        checks.check_same_dictionaries(state.pop("dictionaries_sha256", None), self.dictionaries_sha256(), self.cfg.data)
        bilevel = state.pop("bilevel", None)
        super().load_state_dict(state)
        if bilevel is None:
            return
        if self.bilevel is not None:
            self.bilevel.load_state_dict(bilevel, reset_optimizer)
        else:  # restored before the first step built the object
            self._bilevel_state = (bilevel, reset_optimizer)

    def valid_step(self, sample, model, criterion):
        """Full-depth pass (criterion: every exit's accuracy), then the policy's batched pass."""
        model.eval()
        stage = self.stage(model)
        with torch.no_grad():
            loss, sample_size, logging_output = criterion(model, sample, stage=stage,
                                                          learned=self.learned_weights(criterion, model, stage))
        nsentences = sample["target"].numel()
        num_layers = model.num_layers
        # before stage 2 has trained the intermediate exits, a policy would only measure noise
        policy = self.policy if (self.two_stage is None or self.two_stage.exits_trained(model)) else self.never_exit
        if policy is not self.policy and self.policy.name != "none" and not self._said_stage1_policy:
            self._said_stage1_policy = True  # said once per process, on the first validation batch
            logger.warning(f"this model is in stage 1 of two-stage training (task.stage1_epochs={self.cfg.stage1_epochs}): "
                           f"its intermediate exits are not trained yet, so the exit policy {self.policy.name!r} is not "
                           f"applied; every sentence runs to the last exit"
                           + (", skipping the layers its gates skip" if model.active_gates is not None else "")
                           + ". Validate a stage-2 checkpoint (checkpoint_best.pt after stage 2) for early exit")
        lengths = sample["net_input"]["src_tokens"].ne(self.source_dictionary.pad()).sum(-1)
        if policy.name == "none" and model.active_gates is None:
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
        if model.active_gates is not None and self.stage(model) == 1:
            logging_output.update(self._gate_diagnostics(model, sample))
        return loss, sample_size, logging_output

    def _gate_diagnostics(self, model, sample) -> dict:
        """Stage 1 with gates: what the gates do on this batch, as sums the workers add up.

        The gate logits ``z = logit(g)`` of every layer and sentence on the gated full-depth pass
        (``g`` clamped to [1e-6, 1 - 1e-6], so |z| <= 13.8: a saturated sigmoid has lost the rest),
        summed and squared for their mean and spread; and the last exit's correct answers with
        the gates on (that pass) and off (every layer run), which tell a backbone that learned
        the task from gates that throw its layers away."""
        head = self.cfg.classification_head_name
        with torch.no_grad():
            on, extra = model(**sample["net_input"], features_only=True, classification_head_name=head)
            off, _ = model(**sample["net_input"], features_only=True, classification_head_name=head, gates_off=True)
        z = torch.logit(torch.stack(extra["exits"].gate_probs).float(), eps=1e-6)  # L x B
        out = {"gate_logit_sum": z.sum(), "gate_logit_sqsum": z.pow(2).sum(), "gate_logit_n": z.numel()}
        if not self.cfg.regression_target:
            targets = model.get_targets(sample, [on]).view(-1)
            out["ncorrect_gates_on"] = (on.argmax(-1) == targets).sum()
            out["ncorrect_gates_off"] = (off.argmax(-1) == targets).sum()
        return out

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        meta = sum(log.get("meta_steps", 0) for log in logging_outputs)
        if meta:
            norm = sum(log.get("hypergrad_norm", 0.0) for log in logging_outputs)
            metrics.log_scalar("hypergrad_norm", norm / meta, meta, round=6)
            both = sum(log.get("meta_with_both", 0) for log in logging_outputs)
            metrics.log_scalar("meta_with_both", both / meta, meta, round=3)  # share whose batch had D1 and D2
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
        _reduce_gate_diagnostics(logging_outputs, nsentences)
        for prefix in ("exit_L", "skip_L"):
            keys = sorted({k for log in logging_outputs for k in log if k.startswith(prefix)},
                          key=lambda k: int(k[len(prefix):]))
            for key in keys:
                count = sum(log.get(key, 0) for log in logging_outputs)
                metrics.log_scalar(key, 100.0 * float(count) / nsentences, nsentences, round=2)


def _reduce_gate_diagnostics(logging_outputs, nsentences: int) -> None:
    """``gate_logit_mean`` and ``gate_logit_std`` (over layers and sentences: sqrt(E[z^2] - E[z]^2)),
    ``last_acc_gates_on`` / ``last_acc_gates_off`` (%), when the batches carry them (stage 1 with gates)."""
    def total(key):
        return sum(float(log.get(key, 0)) for log in logging_outputs)
    if any("gate_logit_n" in log for log in logging_outputs):
        # sums over the whole validation (fairseq reduces batch by batch), the figures derived from them
        for key in ("gate_logit_sum", "gate_logit_sqsum", "gate_logit_n"):
            metrics.log_scalar_sum("_" + key, total(key))
        metrics.log_derived("gate_logit_mean", lambda m: round(m["_gate_logit_sum"].sum / m["_gate_logit_n"].sum, 3))
        metrics.log_derived("gate_logit_std", lambda m: round(max(0.0, m["_gate_logit_sqsum"].sum / m["_gate_logit_n"].sum
                                                                  - (m["_gate_logit_sum"].sum / m["_gate_logit_n"].sum) ** 2)
                                                              ** 0.5, 3))
    for mode in ("on", "off"):
        if any(f"ncorrect_gates_{mode}" in log for log in logging_outputs):
            metrics.log_scalar(f"last_acc_gates_{mode}", 100.0 * total(f"ncorrect_gates_{mode}") / nsentences,
                               nsentences, round=2)


def _unwrapped(model):
    """The model inside fairseq's DDP wrappers (ModuleProxyWrapper -> DistributedDataParallel ->
    model), where bi-level passes must run."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def _outer(cfg, key: str, default):
    """A task field interpolated from another config group, or ``default`` when the task config
    stands alone (built in Python rather than by fairseq's full config)."""
    if not OmegaConf.is_config(cfg):
        return getattr(cfg, key, default)
    value = OmegaConf.select(cfg, key, default=default, throw_on_resolution_failure=False)
    return default if value is None else value
