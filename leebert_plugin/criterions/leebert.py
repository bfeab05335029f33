"""``leebert``: every exit learns from the others (Zhu, ACL 2021), with learned term weights.

Terms: each exit's CE (``ce_L<m>``) and a distillation term for every ordered pair of exits
(``kd_L<m><L<t>``: student m learns from teacher t). The distillation form is not public; we
implement the reading of ``methods.md`` §6.4:

    kd_L<m><L<t> = T^2 * KL( stopgrad(softmax(z_t / T)) || softmax(z_m / T) )      (summed over the batch)

so each exit is trained only by its own student terms. Regression targets (STS-B) use
``MSE(z_m, stopgrad(z_t))`` instead. ``distill=lae`` pairs every exit with every other one
(M(M-1) terms), ``distill=lle`` only with later exits (M(M-1)/2).
"""
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from fairseq.criterions import register_criterion
from torch import Tensor

from leebert_plugin.criterions.multi_exit import MultiExitConfig, MultiExitCriterion, at_least_fp32
from leebert_plugin.errors import UsageError
from leebert_plugin.runtime.option_checks import check_options
from leebert_plugin.modules.exit_loop import ExitOutput

DISTILL_VARIANTS = ("lae", "lle")


@dataclass
class LeeBertConfig(MultiExitConfig):
    distill: str = field(
        default="lae",
        metadata={"help": "who learns from whom: lae (every exit from every other exit) or "
                          "lle (every exit from the later exits only)"},
    )
    temperature: float = field(default=1.0, metadata={"help": "distillation temperature T (terms scaled by T^2)"})
    kd_weight: float = field(
        default=1.0, metadata={"help": "what the distillation weights sum to (the CE weights sum to 1)"}
    )
    learn_weights: bool = field(
        default=True, metadata={"help": "learn the term weights (moved by the clo optimizer); "
                                        "false: fixed weights equal to the learned ones' start"}
    )
    exit_weighting: str = field(
        default="uniform", metadata={"help": "fixed weights of the CE terms: uniform or ascending"}
    )


def distill_pairs(exit_layers: Sequence[int], variant: str) -> List[Tuple[int, int]]:
    """(student, teacher) layer pairs for LAE (all ordered pairs) or LLE (teacher deeper)."""
    if variant not in DISTILL_VARIANTS:
        raise UsageError(f"unknown distillation variant {variant!r}",
                         f"set criterion.distill to one of {', '.join(DISTILL_VARIANTS)}")
    return [(s, t) for s in exit_layers for t in exit_layers
            if (s != t if variant == "lae" else t > s)]


@register_criterion("leebert", dataclass=LeeBertConfig)
class LeeBertCriterion(MultiExitCriterion):
    def __init__(self, cfg: LeeBertConfig, task):
        super().__init__(cfg, task)
        distill_pairs([1, 2], cfg.distill)  # fail early on a typo
        check_options("criterion", cfg)

    def term_names(self, exit_layers: Sequence[int], stage: int = 1) -> List[str]:
        return self.exit_term_names(exit_layers) + [
            f"kd_L{s}<L{t}" for s, t in distill_pairs(exit_layers, self.cfg.distill)
        ]

    def group_scales(self) -> Dict[str, float]:
        return {"kd": self.cfg.kd_weight}

    def fixed_weights(self, model, names: Sequence[str]) -> Dict[str, float]:
        weights = super().fixed_weights(model, names)
        kd = [n for n in names if n.startswith("kd_")]
        for n in kd:
            weights[n] = self.cfg.kd_weight / len(kd)
        return weights

    def loss_terms(self, model, sample, exits: ExitOutput, targets: Tensor, teacher: ExitOutput, stage: int = 1):
        terms = super().loss_terms(model, sample, exits, targets, teacher, stage)
        student = dict(zip(model.exit_layers, exits.exit_logits))
        taught = {layer: z.detach() for layer, z in zip(model.exit_layers, teacher.exit_logits)}
        pairs = distill_pairs(model.exit_layers, self.cfg.distill)
        if self.regression_target:
            for s, t in pairs:
                terms[f"kd_L{s}<L{t}"] = F.mse_loss(
                    at_least_fp32(student[s].view(-1)), at_least_fp32(taught[t].view(-1)), reduction="sum"
                )
            return terms
        T = self.cfg.temperature
        log_p = {layer: F.log_softmax(at_least_fp32(z) / T, dim=-1) for layer, z in student.items()}
        log_q = {layer: F.log_softmax(at_least_fp32(z) / T, dim=-1) for layer, z in taught.items()}
        for s, t in pairs:
            terms[f"kd_L{s}<L{t}"] = (T * T) * (log_q[t].exp() * (log_q[t] - log_p[s])).sum()
        return terms
