"""``multi_exit``: PABEE's weighted joint loss over all exits, and the base of every exit criterion.

A criterion here produces *named loss terms* (``ce_L3`` is the cross-entropy of the exit after
layer 3) and a *weight* for each; the loss is their weighted sum. A subclass that adds terms
(distillation, contrastive, hidden-state losses) overrides :meth:`term_names` and
:meth:`loss_terms`, and gets per-term logging, per-exit accuracy and validation under exit
policies without further code. :meth:`term_weights` is the single place weights come from:
fixed here, or the learned ones the task passes in (``learned``: LeeBERT's bi-level training owns
them, see ``optim/bilevel.py``). The criterion keeps no training state: the task passes the
training stage (``stage``, for two-stage training) and the weights to every call.
"""
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics
from fairseq.tasks import FairseqTask
from torch import Tensor

from leebert_plugin.errors import UsageError
from leebert_plugin.exits import glue_metrics
from leebert_plugin.exits.rank_meter import log_spearman
from leebert_plugin.modules.exit_loop import ExitOutput
from leebert_plugin.modules.loss_weights import spread

EXIT_WEIGHTINGS = ("uniform", "ascending")


@dataclass
class MultiExitConfig(FairseqDataclass):
    classification_head_name: str = field(
        default="sentence_classification_head",
        metadata={"help": "name of the exits' head (early_exit_sentence_prediction sets it)"},
    )
    regression_target: bool = field(
        default=False, metadata={"help": "MSE terms for a regression target (STS-B)"}
    )
    exit_weighting: str = field(
        default="ascending",
        metadata={"help": "fixed weights of the exits' losses: 'uniform' (1/n each) or "
                          "'ascending' (PABEE: the exit after layer i weighs i / sum of exit layers)"},
    )
    learn_weights: bool = field(
        default=False,
        metadata={"help": "give every loss term a learned weight (LeeBERT), moved by the clo optimizer's "
                          "meta step; with any other optimizer the fixed weights are used"},
    )
    weight_parametrization: str = field(
        default="group_softmax",
        metadata={"help": "learned weights: group_softmax (uniform start, each group of terms "
                          "sums to its scale) or global_softmax (one softmax over all terms)"},
    )


def exit_weights(layers: Sequence[int], mode: str) -> List[float]:
    """PABEE's joint loss weights (Zhou et al. 2020, Eq. 5: sum_i i*L_i / sum_i i), or uniform."""
    if mode == "uniform":
        return [1.0 / len(layers)] * len(layers)
    if mode == "ascending":
        return [layer / sum(layers) for layer in layers]
    raise UsageError(f"unknown exit_weighting {mode!r}", f"use one of {', '.join(EXIT_WEIGHTINGS)}")


@register_criterion("multi_exit", dataclass=MultiExitConfig)
class MultiExitCriterion(FairseqCriterion):
    needs_exit_states = False  # subclasses set True to receive every exit's hidden states
    outer_groups = ("ce", "mse")  # terms whose unweighted sum is the bi-level outer objective

    def __init__(self, cfg: MultiExitConfig, task):
        super().__init__(task)
        self.cfg = cfg
        self.classification_head_name = cfg.classification_head_name
        self.regression_target = cfg.regression_target
        self.positive = glue_metrics.positive_class(getattr(task, "label_dictionary", None))
        exit_weights([1], cfg.exit_weighting)  # fail early on a typo
        if cfg.learn_weights and isinstance(task, FairseqTask) and not hasattr(task, "learned_weights"):
            raise UsageError(f"criterion.learn_weights=true needs the early_exit_sentence_prediction task, which trains "
                             f"the weights; {type(task).__name__} would leave them at their start",
                             "set task._name=early_exit_sentence_prediction (--task early_exit_sentence_prediction)")

    # ---- the extension points -------------------------------------------------------------
    def exit_term_names(self, exit_layers: Sequence[int]) -> List[str]:
        """``ce_L<i>`` (or ``mse_L<i>``): each exit's own loss."""
        kind = "mse" if self.regression_target else "ce"
        return [f"{kind}_L{layer}" for layer in exit_layers]

    def term_names(self, exit_layers: Sequence[int], stage: int = 1) -> List[str]:
        """Names of the loss terms in training stage ``stage``, in order; :meth:`loss_terms` must
        return exactly these."""
        return self.exit_term_names(exit_layers)

    def forward_options(self, exit_layers: Sequence[int], stage: int = 1) -> Dict:
        """What the loss of ``stage`` needs from the model's full-depth forward (keyword arguments
        of ``ExitRobertaModel.forward``): here every exit, and the exits' states if asked for.
        In training, the forward computes nothing else (under DDP an exit computed but left out
        of the loss stalls the gradient reduction); at validation every exit runs."""
        return {"return_exit_states": self.needs_exit_states}

    def loss_terms(
        self, model, sample, exits: ExitOutput, targets: Tensor, teacher: ExitOutput, stage: int = 1
    ) -> Dict[str, Tensor]:
        """Each exit's summed CE (or MSE) over the batch.

        A term that treats something as a constant (a stop-gradient target, e.g. a teacher's
        prediction) must read it from ``teacher``, detached: in training ``teacher`` is ``exits``
        itself; the hypergradient passes the unperturbed pass there, so that its finite
        differences see the stop-gradient (methods.md §2.5).
        """
        terms = {}
        for layer, logits in zip(model.exit_layers, exits.exit_logits):
            if logits is None:  # an exit the stage does not train (see forward_options)
                continue
            if self.regression_target:
                terms[f"mse_L{layer}"] = F.mse_loss(
                    at_least_fp32(logits.view(-1)), at_least_fp32(targets), reduction="sum"
                )
            else:
                lprobs = F.log_softmax(at_least_fp32(logits), dim=-1)
                terms[f"ce_L{layer}"] = F.nll_loss(lprobs, targets, reduction="sum")
        return terms

    def group_scales(self) -> Dict[str, float]:
        """What each group of learned weights sums to (``ce`` terms: 1; others: 1 unless overridden)."""
        return {}

    def fixed_weights(self, model, names: Sequence[str]) -> Dict[str, float]:
        """Weights without learning: the exit weighting for the exits' own terms, 1 elsewhere."""
        fixed = dict(zip(self.exit_term_names(model.exit_layers),
                         exit_weights(model.exit_layers, self.cfg.exit_weighting)))
        return {name: fixed.get(name, 1.0) for name in names}

    def term_weights(self, model, names: Sequence[str], learned: Optional[Dict[str, Tensor]] = None) -> Dict:
        """The learned weights the task passed (constants: only the meta step moves them), else fixed."""
        if self.cfg.learn_weights and learned is not None:
            return {name: learned[name] for name in names}
        return self.fixed_weights(model, names)

    def loss_weight_spec(self, exit_layers: Sequence[int]) -> Optional[Dict]:
        """Arguments of the learned ``LossWeights`` when this criterion learns weights, else None."""
        if not self.cfg.learn_weights:
            return None
        return {"names": self.term_names(exit_layers),
                "parametrization": self.cfg.weight_parametrization,
                "group_scales": self.group_scales()}

    def compute_terms(self, model, sample, teacher: Optional[ExitOutput] = None, stage: int = 1):
        """Run the model at full depth; return (terms, exits, targets). See :meth:`loss_terms`."""
        options = self.forward_options(model.exit_layers, stage)
        if not model.training:
            options.pop("exits_used", None)  # every exit's accuracy is reported
        _, extra = model(
            **sample["net_input"],
            features_only=True,
            classification_head_name=self.classification_head_name,
            **options,
        )
        exits: ExitOutput = extra["exits"]
        targets = sample["target"].view(-1)
        terms = self.loss_terms(model, sample, exits, targets, exits if teacher is None else teacher, stage=stage)
        expected = self.term_names(model.exit_layers, stage=stage)
        if list(terms) != expected:
            raise RuntimeError(
                f"{type(self).__name__}.loss_terms returned {list(terms)[:4]}..., "
                f"but term_names declares {expected[:4]}...: they must agree, in order"
            )
        return terms, exits, targets

    def outer_objective(self, terms: Dict[str, Tensor]) -> Tensor:
        """Bi-level outer objective: the unweighted sum of the exits' own losses (methods.md §6.1)."""
        return sum(v for name, v in terms.items() if name.split("_", 1)[0] in self.outer_groups)

    # ---- fairseq's criterion contract -----------------------------------------------------
    def forward(self, model, sample, reduce=True, stage: int = 1, learned: Optional[Dict[str, Tensor]] = None):
        """Return (loss, sample_size = number of sentences, logging_output) for training stage
        ``stage``, with the ``learned`` term weights (by name) if the task has them."""
        terms, exits, targets = self.compute_terms(model, sample, stage=stage)
        weights = self.term_weights(model, list(terms), learned)
        loss = sum(weights[name] * value for name, value in terms.items())
        sample_size = targets.numel()
        logging_output = {
            "loss": loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample_size,
            "sample_size": sample_size,
        }
        for name, value in terms.items():
            logging_output[f"term:{name}"] = value.data
        if self.cfg.learn_weights and learned is not None:
            # weight x sentences, so that summing over workers and steps gives a weighted mean
            values = torch.stack([torch.as_tensor(w) for w in weights.values()]).tolist()  # one sync
            for name, w in zip(weights, values):
                logging_output[f"weight:{name}"] = w * sample_size
        if not self.regression_target:
            for layer, logits in zip(model.exit_layers, exits.exit_logits):
                if logits is not None:
                    logging_output[f"ncorrect_L{layer}"] = (logits.argmax(-1) == targets).sum()
            if exits.exit_logits[-1] is not None:
                logging_output["ncorrect"] = logging_output[f"ncorrect_L{model.exit_layers[-1]}"]
        if not model.training:  # GLUE's F1 / MCC / Pearson, per exit and for the final prediction
            for layer, logits in zip(model.exit_layers, exits.exit_logits):
                glue_metrics.log_statistics(logging_output, f"_L{layer}", logits, targets,
                                            self.regression_target, self.positive)
            glue_metrics.log_statistics(logging_output, "", exits.exit_logits[-1], targets,
                                        self.regression_target, self.positive)
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        """Loss and terms in bits per sentence; ``accuracy`` and ``acc_L<i>`` for every exit."""
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        sample_size = total("sample_size")
        nsentences = total("nsentences")
        if not sample_size:
            return
        metrics.log_scalar("loss", total("loss") / sample_size / math.log(2), sample_size, round=3)
        keys = sorted({k for log in logging_outputs for k in log}, key=_layer_order)
        learned = {}
        for key in keys:
            if key.startswith("term:"):
                metrics.log_scalar(key[5:], total(key) / sample_size / math.log(2), sample_size, round=3)
            elif key.startswith("weight:"):
                learned[key[7:]] = total(key) / sample_size
                metrics.log_scalar("w_" + key[7:], learned[key[7:]], sample_size, round=4)
        for group, far in spread(learned).items():  # how far from uniform (loss_weights.spread)
            metrics.log_scalar(f"wkl_{group}", far["kl_uniform"], sample_size, round=5)
            metrics.log_scalar(f"wratio_{group}", far["max_min_ratio"], sample_size, round=4)
        if "ncorrect" in keys:
            metrics.log_scalar("accuracy", 100.0 * total("ncorrect") / nsentences, nsentences, round=2)
        for key in keys:
            if key.startswith("ncorrect_L"):
                metrics.log_scalar(f"acc_{key[9:]}", 100.0 * total(key) / nsentences, nsentences, round=2)
        totals = {k: total(k) for k in keys if k.split("_L")[0] in glue_metrics.CONFUSION + glue_metrics.MOMENTS}
        suffixes = [""] + sorted({k[k.index("_L"):] for k in totals if "_L" in k}, key=_layer_order)
        glue_metrics.log_exact(totals, suffixes)
        for suffix in suffixes:
            if f"sxy{suffix}" in totals:
                log_spearman(logging_outputs, f"preds{suffix}", f"spearman{suffix}")

    def logging_outputs_can_be_summed(self) -> bool:
        """False in regression validation, which logs its predictions as lists (Spearman's ranks):
        fairseq then gathers the logging outputs across workers instead of summing them. Training
        stays on the summing fast path. An instance method, so the answer follows the mode under
        any task (fairseq's tasks ask the criterion they are given)."""
        return not (self.regression_target and not self.training)


def at_least_fp32(x: Tensor) -> Tensor:
    """fp16/bf16 -> fp32 for numerically safe losses; fp32 and fp64 stay as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _layer_order(key: str):
    """Sort ``x_L10`` after ``x_L9``."""
    head, _, tail = key.rpartition("_L")
    return (head, int(tail)) if tail.isdigit() else (key, -1)
