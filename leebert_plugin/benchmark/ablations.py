"""The ablations of LeeBERT (and the shared choices applied to PABEE), as variants of a method.

A variant is a method of :data:`~leebert_plugin.benchmark.recipe.METHODS` with a few hydra
overrides on top of the shared recipe; it trains under the same budget, seeds and choice on dev
as every other run of the matrix, in ``OUT/<variant>/seed<k>/`` beside the methods' own runs, and
is compared with its method at the recipe's defaults (its reference) by the same paired
differences (:func:`leebert_plugin.benchmark.report.ablation_comparisons`).

What each ablation asks (``methods.md``; the defaults are the configs'):

* ``distill``: every exit learns from every other (``lae``) or from the later ones only (``lle``).
* ``weights``: the loss-term weights learned by ``clo`` or fixed at their start. Fixed weights
  train with ``exit_adam`` on every batch, so this also removes the meta step's cost.
* ``meta``: the meta step's rule: ``clo`` (crossed, both splits) against DARTS second and first order.
* ``temperature``, ``kd_weight``, ``w_lr``, ``interval``: the distillation temperature (2 and 4,
  both above the default 1: distillation usually runs warmer than 1), the
  distillation terms' total weight (0.5 and 2 around 1), the weights' learning rate (3e-4 and 3e-2
  around the fixed 3e-3 of the configs before issue 38; the default now derives it from the run's
  length, ``optim/bilevel.py``, and an explicit value overrides that) and the meta-step interval
  (5 and 30 around 10).
* ``smartbert_gates``: what might keep SmartBERT's skip gates from collapsing (BENCHMARKS.md,
  "What was tried for SmartBERT's collapse"): gates that start closed (bias -3, skip probability
  about 0.05; Adam moves the bias by about lr an update at most, so they stay near closed unless
  their weights open them: ``--skip-gate-bias``'s help), soft gate weights for all of stage 1, a
  regulariser 4x smaller than the recipe's (0.005: its 0.04 x 6 / 12 for MiniLM, over 4), and the
  three together. SmartBERT trains its authors' schedule (``recipe.SMARTBERT``: 3 soft + 2 hard
  stage-1 epochs, 4 of stage 2) in every setting.
* ``exit_pooling``, ``exit_lr_scale``: the exits' input ([CLS] instead of the token mean) and their
  learning rate (x1 instead of x10), for LeeBERT and PABEE alike, so that neither method is
  credited with a shared choice.
"""
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from leebert_plugin.errors import UsageError

# The config's keys that exit_adam lacks, deleted when a variant switches to it. hydra cannot delete a
# key whose value is null (it reports that the key does not exist), so ``w_lr: null`` is set first.
CLO_ONLY = ("~optimizer.mode", "optimizer.w_lr=0", "~optimizer.w_lr", "~optimizer.w_travel",
            "~optimizer.w_weight_decay", "~optimizer.w_betas", "~optimizer.w_update_interval", "~optimizer.xi",
            "~optimizer.fd_eps")


@dataclass(frozen=True)
class Variant:
    name: str  # its folder and its row in the tables
    method: str  # the METHODS entry it changes; its reference
    overrides: Tuple[str, ...]


def _leebert(suffix: str, *overrides: str) -> Variant:
    return Variant(f"leebert-{suffix}", "leebert", overrides)


_CLOSED, _ALL_SOFT, _SMALL_LAMBDA = ("+model.skip_gate_bias=-3",), ("task.soft_gate_epochs=${task.stage1_epochs}",), \
    ("criterion.gate_lambda=0.005",)


ABLATIONS: Dict[str, Tuple[Variant, ...]] = {
    "distill": (_leebert("lle", "criterion.distill=lle"),),
    "weights": (_leebert("fixed", "criterion.learn_weights=false", "optimizer._name=exit_adam", *CLO_ONLY),),
    "meta": (_leebert("darts2", "optimizer.mode=darts2"), _leebert("darts1", "optimizer.mode=darts1")),
    "temperature": (_leebert("T2", "criterion.temperature=2.0"), _leebert("T4", "criterion.temperature=4.0")),
    "kd_weight": (_leebert("kd0.5", "criterion.kd_weight=0.5"), _leebert("kd2", "criterion.kd_weight=2.0")),
    "w_lr": (_leebert("wlr3e-4", "optimizer.w_lr=0.0003"), _leebert("wlr3e-2", "optimizer.w_lr=0.03")),
    "interval": (_leebert("every5", "optimizer.w_update_interval=5"),
                 _leebert("every30", "optimizer.w_update_interval=30")),
    "smartbert_gates": (Variant("smartbert-closed", "smartbert", _CLOSED),
                        Variant("smartbert-allsoft", "smartbert", _ALL_SOFT),
                        Variant("smartbert-lambda0.005", "smartbert", _SMALL_LAMBDA),
                        Variant("smartbert-closed-allsoft-lambda0.005", "smartbert", _CLOSED + _ALL_SOFT + _SMALL_LAMBDA)),
    "exit_pooling": (_leebert("cls", "+model.exit_pooling=cls"),
                     Variant("pabee-cls", "pabee", ("+model.exit_pooling=cls",))),
    "exit_lr_scale": (_leebert("exitlr1", "+optimizer.exit_lr_scale=1.0"),
                      Variant("pabee-exitlr1", "pabee", ("+optimizer.exit_lr_scale=1.0",))),
}


def variants(names: Sequence[str]) -> List[Variant]:
    """The variants of ``names``: ablations (``all``: every one) or single variants by their own name
    (``leebert-darts2``), each once, in the order given (an ablation's variants in table order)."""
    by_name = {v.name: v for group in ABLATIONS.values() for v in group}
    unknown = [n for n in names if n != "all" and n not in ABLATIONS and n not in by_name]
    if unknown:
        raise UsageError(f"unknown ablation {unknown[0]!r}",
                         f"use 'all', some of {', '.join(ABLATIONS)}, or variants such as {', '.join(list(by_name)[:3])}")
    chosen = list(ABLATIONS) if "all" in names else names
    picked = [v for name in chosen for v in (ABLATIONS[name] if name in ABLATIONS else (by_name[name],))]
    return list(dict.fromkeys(picked))
