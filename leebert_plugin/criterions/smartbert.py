"""``smartbert``: SmartBERT's two training stages (Hu et al., IJCAI 2023; methods.md §3.4).

The stage is the model's (``training_stage``, switched by the task after ``task.stage1_epochs``).

Stage 1 trains backbone, gates and the last exit:
    ce_L<L> (last exit, on the final gate-mixed state)  +  lambda * gate_reg  +  eta1 * contrast_layers
    gate_reg = 1 / sum_i mean_batch(g_i) on the soft gates (rewards skipping)
    contrast_layers = sum_{j=0}^{L-2} InfoNCE_tok(P_j(h_j), P_{j+1}(h_{j+1}); t1), h_j = layer inputs
Stage 2 freezes all that and trains exits 1..L-1 on the raw layer outputs:
    sum_{i<L} ce_L<i>  +  eta2 * contrast_exits
    contrast_exits = 1/(L-2) sum_i InfoNCE_tok(Q_i(u_i), Q_{i+1}(u_{i+1}); t2, positive not in the denominator)

Where this differs from the authors' code, the code's behaviour is an option:
``mask_padding`` (false: padding tokens count, as in the code), ``mix_with_eta`` (true: the code's
(1 - eta) * [CE (+ lambda reg)] + eta * contrast instead of the plain sum), ``stage2_pairs=authors``
(the code's 9 of 10 pairs for 12 layers, still divided by 10). With gates off and eta = 0 this is
DeeBERT's two-stage training.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

from fairseq.criterions import register_criterion
from torch import Tensor

from leebert_plugin.criterions.contrastive import token_info_nce
from leebert_plugin.criterions.multi_exit import MultiExitConfig, MultiExitCriterion
from leebert_plugin.errors import UsageError
from leebert_plugin.modules.exit_loop import ExitOutput

STAGE2_PAIRS = ("all", "authors")


@dataclass
class SmartBertConfig(MultiExitConfig):
    gate_lambda: float = field(default=0.04, metadata={"help": "lambda: weight of the skip regulariser 1 / sum_i mean(g_i)"})
    eta1: float = field(default=0.01, metadata={"help": "weight of stage 1's cross-layer token contrastive loss"})
    eta2: float = field(default=0.05, metadata={"help": "weight of stage 2's cross-exit token contrastive loss"})
    t1: float = field(default=0.5, metadata={"help": "temperature of stage 1's contrastive loss"})
    t2: float = field(default=0.55, metadata={"help": "temperature of stage 2's contrastive loss"})
    mask_padding: bool = field(default=True, metadata={"help": "leave padding out of the contrastive losses "
                                                                "(the authors' code keeps it: false)"})
    mix_with_eta: bool = field(default=False, metadata={"help": "the authors' code's (1-eta)*[CE+reg] + eta*contrast "
                                                                "instead of the plain sum"})
    stage2_pairs: str = field(default="all", metadata={"help": "stage 2 exit pairs: all (L-2 consecutive pairs) or "
                                                               "authors (their L-3, divided by L-2)"})


@register_criterion("smartbert", dataclass=SmartBertConfig)
class SmartBertCriterion(MultiExitCriterion):
    needs_exit_states = True

    def __init__(self, cfg: SmartBertConfig, task):
        super().__init__(cfg, task)
        for name in ("gate_lambda", "eta1", "eta2"):
            if getattr(cfg, name) < 0:
                raise UsageError(f"{name}={getattr(cfg, name)} is negative", f"set criterion.{name} >= 0")
        for name in ("t1", "t2"):
            if getattr(cfg, name) <= 0:
                raise UsageError(f"{name}={getattr(cfg, name)} must be positive", f"set criterion.{name} > 0")
        if cfg.stage2_pairs not in STAGE2_PAIRS:
            raise UsageError(f"unknown stage2_pairs {cfg.stage2_pairs!r}", f"use one of {', '.join(STAGE2_PAIRS)}")
        self.stage = 1

    def compute_terms(self, model, sample, teacher=None):
        self.stage = model.stage  # the term list follows the model's stage
        if model.stage == 1 and self.cfg.eta1 > 0 and model.layer_projectors is None:
            raise UsageError("smartbert's stage-1 contrastive loss needs the layer projectors",
                             "set model.layer_projectors=true, or criterion.eta1=0")
        if model.stage == 2 and self.cfg.eta2 > 0 and not hasattr(model.exit_heads[self.classification_head_name],
                                                                  "projections"):
            raise UsageError("smartbert's stage-2 contrastive loss needs smartbert exit heads",
                             "set model.exit_head=smartbert, or criterion.eta2=0")
        return super().compute_terms(model, sample, teacher)

    def term_names(self, exit_layers: Sequence[int]) -> List[str]:
        if self.stage == 2:
            return [f"ce_L{layer}" for layer in exit_layers[:-1]] + ["contrast_exits"]
        return [f"ce_L{exit_layers[-1]}", "gate_reg", "contrast_layers"]

    def fixed_weights(self, model, names: Sequence[str]) -> Dict[str, float]:
        eta = self.cfg.eta2 if self.stage == 2 else self.cfg.eta1
        rest = 1 - eta if self.cfg.mix_with_eta else 1.0
        weights = {n: rest for n in names if n.startswith("ce_")}
        weights.update(gate_reg=rest * self.cfg.gate_lambda, contrast_layers=eta, contrast_exits=eta)
        return {n: weights[n] for n in names}

    def loss_terms(self, model, sample, exits: ExitOutput, targets: Tensor, teacher: ExitOutput) -> Dict[str, Tensor]:
        all_ce = super().loss_terms(model, sample, exits, targets, teacher)
        layers = model.exit_layers
        pad = exits.padding_mask if self.cfg.mask_padding else None
        bsz = targets.numel()
        zero = exits.logits.new_zeros(()).float()
        if self.stage == 2:
            terms = {f"ce_L{layer}": all_ce[f"ce_L{layer}"] for layer in layers[:-1]}
            heads = model.exit_heads[self.classification_head_name]
            contrast = zero
            if self.cfg.eta2 > 0 and len(layers) > 2:
                proj = [heads.projections(k, exits.exit_states[k], exits.padding_mask) for k in range(len(layers) - 1)]
                npairs = len(proj) - 1 - (1 if self.cfg.stage2_pairs == "authors" else 0)
                contrast = sum(token_info_nce(proj[k], proj[k + 1], pad, self.cfg.t2, include_positive=False)
                               for k in range(npairs)) / (len(proj) - 1)
            terms["contrast_exits"] = contrast
            return terms
        terms = {f"ce_L{layers[-1]}": all_ce[f"ce_L{layers[-1]}"]}
        probs = exits.gate_probs
        terms["gate_reg"] = bsz / sum(g.mean() for g in probs) if probs else zero
        contrast = zero
        if self.cfg.eta1 > 0 and exits.layer_inputs:
            proj = [model.layer_projectors(j, h) for j, h in enumerate(exits.layer_inputs)]
            contrast = sum(token_info_nce(proj[j], proj[j + 1], pad, self.cfg.t1, include_positive=True)
                           for j in range(len(proj) - 1))
        terms["contrast_layers"] = contrast
        return terms
