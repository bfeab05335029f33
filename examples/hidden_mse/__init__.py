"""Worked example: a user-written criterion with one more loss term, as a fairseq user dir.

    fairseq-hydra-train --config-dir configs --config-name mr_hidden_mse task.data=... checkpoint.save_dir=...

``hidden_mse`` is PABEE's joint loss plus ``hid_mse``: every exit's [CLS] state is pulled towards
the next exit's (a stop-gradient target, read from ``teacher``). Subclassing the base criterion
and declaring the term is all it takes: the term is logged, validation runs under every exit
policy, and with ``learn_weights: true`` and the ``clo`` optimizer its weight is learned.
"""
from dataclasses import dataclass, field

import torch.nn.functional as F
from fairseq.criterions import register_criterion

import leebert_plugin  # noqa: F401  (registers the plugin: one user dir per run)
from leebert_plugin.criterions.multi_exit import MultiExitConfig, MultiExitCriterion


@dataclass
class HiddenMSEConfig(MultiExitConfig):
    learn_weights: bool = field(default=True, metadata={"help": "learn the term weights (clo)"})


@register_criterion("hidden_mse", dataclass=HiddenMSEConfig)
class HiddenMSECriterion(MultiExitCriterion):
    needs_exit_states = True  # ask the model for every exit's hidden states

    def term_names(self, exit_layers, stage=1):
        return super().term_names(exit_layers, stage) + ["hid_mse"]

    def loss_terms(self, model, sample, exits, targets, teacher, stage=1):
        terms = super().loss_terms(model, sample, exits, targets, teacher, stage)
        students = [h[0] for h in exits.exit_states[:-1]]  # [CLS] of exits 1..M-1: B x C
        targets_cls = [h[0].detach() for h in teacher.exit_states[1:]]  # of exits 2..M, constant
        terms["hid_mse"] = sum(F.mse_loss(s, t, reduction="none").mean(-1).sum()
                               for s, t in zip(students, targets_cls))
        return terms
