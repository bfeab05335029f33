"""``smartbert``: SmartBERT's two training stages (Hu et al., IJCAI 2023; methods.md §3.4).

The task passes the stage (two-stage training, ``tasks/two_stage.py``: stage 2 after
``task.stage1_epochs``); the criterion asks the model's forward for what each stage's loss uses
(:meth:`forward_options`), so every parameter that gets a gradient is used inside the forward.

Stage 1 trains backbone, gates and the last exit:
    ce_L<L> (last exit, on the final gate-mixed state)  +  lambda * gate_reg  +  eta1 * contrast_layers
    gate_reg = 1 / sum_i mean_batch(g_i) on the soft gates (rewards skipping), per sentence; like the
               cross-entropies it enters the loss summed over the batch: B / sum_i mean_batch(g_i)
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
from leebert_plugin.runtime.option_checks import check_options
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

    def __init__(self, cfg: SmartBertConfig, task):
        super().__init__(cfg, task)
        check_options("criterion", cfg)
        if cfg.stage2_pairs not in STAGE2_PAIRS:
            raise UsageError(f"unknown stage2_pairs {cfg.stage2_pairs!r}", f"use one of {', '.join(STAGE2_PAIRS)}")

    def forward_options(self, exit_layers: Sequence[int], stage: int = 1) -> Dict:
        """Stage 1 uses the last exit only (the others must not run: DDP would wait for their
        gradients) and, for its contrastive term, every layer input's projection; stage 2 every
        exit (the last one is frozen) and the intermediate exits' projections."""
        if stage == 2:
            contrast = self.cfg.eta2 > 0
            return {"return_exit_states": contrast, "project": "exits" if contrast else None}
        contrast = self.cfg.eta1 > 0
        return {"return_exit_states": contrast, "project": "layers" if contrast else None,
                "exits_used": [exit_layers[-1]]}

    def term_names(self, exit_layers: Sequence[int], stage: int = 1) -> List[str]:
        if stage == 2:
            return [f"ce_L{layer}" for layer in exit_layers[:-1]] + ["contrast_exits"]
        return [f"ce_L{exit_layers[-1]}", "gate_reg", "contrast_layers"]

    def fixed_weights(self, model, names: Sequence[str]) -> Dict[str, float]:
        eta = self.cfg.eta2 if "contrast_exits" in names else self.cfg.eta1
        rest = 1 - eta if self.cfg.mix_with_eta else 1.0
        weights = {n: rest for n in names if n.startswith("ce_")}
        weights.update(gate_reg=rest * self.cfg.gate_lambda, contrast_layers=eta, contrast_exits=eta)
        return {n: weights[n] for n in names}

    def loss_terms(self, model, sample, exits: ExitOutput, targets: Tensor, teacher: ExitOutput,
                   stage: int = 1) -> Dict[str, Tensor]:
        all_ce = super().loss_terms(model, sample, exits, targets, teacher, stage)
        layers = model.exit_layers
        pad = exits.padding_mask if self.cfg.mask_padding else None
        bsz = targets.numel()
        zero = exits.logits.new_zeros(()).float()
        if stage == 2:
            terms = {f"ce_L{layer}": all_ce[f"ce_L{layer}"] for layer in layers[:-1]}
            contrast = zero
            proj = [p for p in exits.exit_projections if p is not None]
            if len(proj) > 1:
                npairs = len(proj) - 1 - (1 if self.cfg.stage2_pairs == "authors" else 0)
                contrast = sum(token_info_nce(proj[k], proj[k + 1], pad, self.cfg.t2, include_positive=False)
                               for k in range(npairs)) / (len(proj) - 1)
            terms["contrast_exits"] = contrast
            return terms
        terms = {f"ce_L{layers[-1]}": all_ce[f"ce_L{layers[-1]}"]}
        probs = exits.gate_probs
        terms["gate_reg"] = bsz / sum(g.mean() for g in probs) if probs else zero
        contrast = zero
        proj = exits.layer_projections
        if proj:
            contrast = sum(token_info_nce(proj[j], proj[j + 1], pad, self.cfg.t1, include_positive=True)
                           for j in range(len(proj) - 1))
        terms["contrast_layers"] = contrast
        return terms
