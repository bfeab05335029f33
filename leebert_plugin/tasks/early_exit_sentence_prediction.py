"""``early_exit_sentence_prediction``: fairseq's sentence_prediction, plus exit policies at validation.

Validation reports, next to the criterion's full-depth accuracy of every exit, the metric under
the configured exit policy, the mean number of executed layers, the layer speed-up and the exit
histogram. The exit settings are task fields, so ``fairseq-validate --exit-threshold X`` overrides
the value saved in the checkpoint.
"""
import logging
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq.logging import metrics
from fairseq.tasks import register_task
from fairseq.tasks.sentence_prediction import SentencePredictionConfig, SentencePredictionTask
from omegaconf import OmegaConf, open_dict

from leebert_plugin.data import checks
from leebert_plugin.errors import UsageError
from leebert_plugin.exits.policies import build_policy

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
    patience: int = field(
        default=1, metadata={"help": "consecutive agreeing (patience) or confident (pcee) exits"}
    )


def _persist_defaults(cfg) -> None:
    """Write the merged task config back into the run's root config.

    fairseq-hydra-train merges registry defaults before it imports the user dir, so a yaml that
    omits a plugin field leaves it out of the saved checkpoint config; fairseq-validate's
    overrides only replace keys that exist there, and would then be ignored without a word.
    """
    if not OmegaConf.is_config(cfg):
        return
    root = cfg._get_parent()
    if root is None or "task" not in root or root.task is cfg:
        return
    with open_dict(root):
        for key in cfg:
            if key not in root.task:
                root.task[key] = cfg[key]


@register_task("early_exit_sentence_prediction", dataclass=EarlyExitSentencePredictionConfig)
class EarlyExitSentencePredictionTask(SentencePredictionTask):
    def __init__(self, cfg, data_dictionary, label_dictionary):
        super().__init__(cfg, data_dictionary, label_dictionary)
        self.policy = build_policy(cfg.exit_policy, cfg.num_classes, cfg.exit_threshold, cfg.patience)

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        if cfg.num_classes is None or cfg.num_classes < 1:
            raise UsageError(f"num_classes={cfg.num_classes}", "set task.num_classes to the number of labels")
        checks.check_data_dir(cfg.data, cfg.regression_target)
        task = super().setup_task(cfg, **kwargs)
        if not cfg.regression_target:
            checks.check_num_classes(cfg.num_classes, task.label_dictionary, cfg.data)
        _persist_defaults(cfg)
        return task

    def load_dataset(self, split, combine=False, **kwargs):
        checks.check_split(self.cfg.data, split, self.cfg.regression_target)
        return super().load_dataset(split, combine=combine, **kwargs)

    def build_criterion(self, cfg, from_checkpoint=False):
        """Hand the head name and target type to the criterion; refuse contradicting values."""
        if OmegaConf.is_config(cfg):
            with open_dict(cfg):
                for key in ("classification_head_name", "regression_target"):
                    mine = getattr(self.cfg, key)
                    if key in cfg and cfg[key] is not None and cfg[key] != mine:
                        raise UsageError(
                            f"criterion.{key}={cfg[key]!r} contradicts task.{key}={mine!r}",
                            f"set it on the task only (task.{key})",
                        )
                    cfg[key] = mine
        return super().build_criterion(cfg, from_checkpoint)

    def valid_step(self, sample, model, criterion):
        """Full-depth pass (criterion: every exit's accuracy), then the policy's batched pass."""
        loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        if self.cfg.regression_target:
            return loss, sample_size, logging_output
        nsentences = sample["target"].numel()
        num_layers = model.num_layers
        if self.cfg.exit_policy == "none":
            exit_layer = torch.full((nsentences,), num_layers, dtype=torch.long)
            layers_run = exit_layer
        else:
            with torch.no_grad():
                logits, extra = model(
                    **sample["net_input"],
                    features_only=True,
                    classification_head_name=self.cfg.classification_head_name,
                    exit_policy=self.policy,
                )
            exits = extra["exits"]
            exit_layer, layers_run = exits.exit_layer, exits.layers_run
            targets = model.get_targets(sample, [logits]).view(-1)
            logging_output["ncorrect"] = (logits.argmax(-1) == targets).sum()
        logging_output["layers_run"] = layers_run.sum()
        logging_output["layers_full"] = num_layers * nsentences
        for layer in model.exit_layers:
            logging_output[f"exit_L{layer}"] = (exit_layer == layer).sum()
        return loss, sample_size, logging_output

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        layers_run = sum(log.get("layers_run", 0) for log in logging_outputs)
        if not layers_run:
            return
        nsentences = sum(log.get("nsentences", 0) for log in logging_outputs)
        layers_full = sum(log.get("layers_full", 0) for log in logging_outputs)
        metrics.log_scalar("mean_layers", float(layers_run) / nsentences, nsentences, round=3)
        metrics.log_scalar("speedup", float(layers_full) / float(layers_run), nsentences, round=3)
        keys = sorted({k for log in logging_outputs for k in log if k.startswith("exit_L")},
                      key=lambda k: int(k[6:]))
        for key in keys:
            count = sum(log.get(key, 0) for log in logging_outputs)
            metrics.log_scalar(key, 100.0 * float(count) / nsentences, nsentences, round=2)
