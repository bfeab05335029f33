"""``exit_roberta``: fairseq's RoBERTa with an exit classifier after every (or selected) layer."""
import argparse
import logging
from typing import List, Optional

import torch
import torch.nn as nn
from fairseq.models import register_model, register_model_architecture
from fairseq.models.roberta.model import (
    RobertaModel,
    base_architecture,
    roberta_large_architecture,
)
from fairseq.utils import safe_getattr

from leebert_plugin.errors import UsageError
from leebert_plugin.exits.policies import ExitPolicy
from leebert_plugin.models.checkpoint_fit import check_state_dict_fits
from leebert_plugin.modules.bert_embeddings import PositionsAndSegments, set_layer_norm_eps
from leebert_plugin.modules.exit_heads import EXIT_HEAD_REGISTRY
from leebert_plugin.modules.exit_loop import early_exit_pass, full_depth_pass
from leebert_plugin.modules.skip_gate import LayerProjectors, SkipGates
from leebert_plugin.optim.exit_adam import EXIT_PARAM
from leebert_plugin.runtime.option_checks import check_options

logger = logging.getLogger(__name__)


def parse_exit_layers(spec: str, num_layers: int) -> List[int]:
    """``"2,4,6"`` -> ``[2, 4, 6]``; empty means every layer. The last layer must carry an exit."""
    if not str(spec).strip():
        return list(range(1, num_layers + 1))
    try:
        given = [int(tok) for tok in str(spec).split(",") if tok.strip()]
    except ValueError:
        raise UsageError(f"exit_layers={spec!r} is not a comma-separated list of layer numbers",
                         "write it like --exit-layers 2,4,6")
    layers = sorted(set(given))
    if given != layers:  # one line, so that a typo like 4,2,4 is seen
        logger.warning(f"exit_layers={spec!r} read as {','.join(map(str, layers))} (sorted, each layer once)")
    if not layers or layers[0] < 1 or layers[-1] > num_layers:
        raise UsageError(f"exit_layers={spec!r} names layers outside 1..{num_layers}",
                         f"use layer numbers from 1 to {num_layers}")
    if layers[-1] != num_layers:
        raise UsageError(f"exit_layers={spec!r} has no exit at the last layer ({num_layers})",
                         f"add {num_layers} to --exit-layers")
    return layers


@register_model("exit_roberta")
class ExitRobertaModel(RobertaModel):
    """RoBERTa whose classification head is a set of exits (``exit_heads[name]``).

    The exits live outside ``classification_heads`` because RoBERTa's checkpoint upgrade assumes
    every head there has a single ``dense``/``out_proj`` pair.
    """

    # modules a plain RoBERTa checkpoint lacks: restoring one injects their fresh weights
    injected_modules = ("exit_heads", "skip_gates", "layer_projectors")

    @classmethod
    def build_model(cls, args, task):
        """Refuse NaN/inf options and widths fairseq's attention would assert on, before it builds
        the encoder."""
        check_options("model", args)
        dim, heads = safe_getattr(args, "encoder_embed_dim", None), safe_getattr(args, "encoder_attention_heads", None)
        if dim is not None and heads is not None and (heads < 1 or dim % heads):
            raise UsageError(f"encoder_embed_dim={dim} is not divisible by encoder_attention_heads={heads}",
                             "choose a number of heads that divides the width (the nearest: "
                             f"{min((h for h in range(1, dim + 1) if dim % h == 0), key=lambda h: abs(h - heads))})")
        return super().build_model(args, task)

    def __init__(self, args, encoder):
        super().__init__(args, encoder)
        if safe_getattr(args, "type_vocab_size", 0) > 0:  # BERT: segment embeddings next to the positions
            sentence_encoder = encoder.sentence_encoder
            sentence_encoder.embed_positions = PositionsAndSegments(
                sentence_encoder.embed_positions, args.type_vocab_size, args.encoder_embed_dim, encoder.dictionary.eos())
        set_layer_norm_eps(encoder, safe_getattr(args, "layer_norm_eps", 1e-5))
        if safe_getattr(args, "encoder_layerdrop", 0.0) > 0:
            raise UsageError("encoder_layerdrop > 0 cannot be combined with exits",
                             "set --encoder-layerdrop 0")
        if args.exit_head not in EXIT_HEAD_REGISTRY:
            raise UsageError(f"unknown exit head {args.exit_head!r}",
                             f"use one of {', '.join(sorted(EXIT_HEAD_REGISTRY))} (--exit-head)")
        self.exit_layers = parse_exit_layers(args.exit_layers, args.encoder_layers)
        self.exit_heads = nn.ModuleDict()
        self.skip_gates = (SkipGates(args.encoder_layers, args.encoder_embed_dim, dropout=args.attention_dropout,
                                     init_bias=args.skip_gate_bias) if args.skip_gates else None)
        self.layer_projectors = (LayerProjectors(args.encoder_layers, args.encoder_embed_dim)
                                 if args.layer_projectors else None)
        # soft or hard (straight-through) gate weights in training; the task sets it per epoch
        self.gate_mode = "hard"
        # two-stage training (SmartBERT, DeeBERT): saved with the weights, so it survives a resume
        self.register_buffer("training_stage", torch.ones((), dtype=torch.long))

    @property
    def active_gates(self) -> Optional[SkipGates]:
        """The skip gates a forward pass asks, or None: no gates, or gates off (``skip_threshold=1``,
        an evaluation mode: every layer runs, the gates are not evaluated and cost nothing)."""
        return self.skip_gates if self.skip_gates is not None and self.args.skip_threshold < 1 else None

    @property
    def stage(self) -> int:
        return int(self.training_stage)

    def stage2_parameters(self, head_name: str) -> List[nn.Parameter]:
        """What stage 2 trains: the parameters owned by exits 1..M-1 alone."""
        heads = self.exit_heads[head_name]
        return [p for k in range(len(self.exit_layers) - 1) for p in heads.exit_parameters(k)]

    def enter_stage2(self, head_name: str) -> None:
        """Freeze everything but the intermediate exits (backbone, gates, last exit, projectors)."""
        self.training_stage.fill_(2)
        keep = {id(p) for p in self.stage2_parameters(head_name)}
        for p in self.parameters():
            p.requires_grad_(id(p) in keep)

    @staticmethod
    def add_args(parser):
        RobertaModel.add_args(parser)
        parser.add_argument("--exit-layers", type=str, metavar="L1,L2,...",
                            help="1-based layers that carry an exit (empty: every layer); "
                                 "the last layer always needs one")
        parser.add_argument("--exit-head", type=str, metavar="TYPE",
                            help="exit classifier: pabee (one shared pooler + a linear layer per "
                                 "exit), deebert (a pooler per exit) or smartbert (small attention head)")
        parser.add_argument("--exit-pooling", type=str, metavar="cls|mean",
                            help="what pabee/deebert exits read: the first token's state (cls) or the "
                                 "mean over the sentence's tokens (mean; for mean-pooling encoders such as MiniLM)")
        parser.add_argument("--skip-gates", action="store_true",
                            help="a SmartBERT skip gate before every layer")
        parser.add_argument("--skip-threshold", type=float, metavar="TAU",
                            help="a layer is skipped when its gate's probability is >= TAU (0 < TAU < 1); "
                                 "1: gates off, an evaluation mode (every layer runs and no gate is evaluated; "
                                 "e.g. fairseq-validate --model-overrides \"{'skip_threshold': 1.0}\"); "
                                 "training refuses it")
        parser.add_argument("--skip-gate-bias", type=float, metavar="B",
                            help="initial bias of every skip gate's logit; unset: torch's default init, as in "
                                 "the authors' code (skip probabilities start near 0.5, so about half the layers "
                                 "are skipped from the first hard-gated update); negative starts from the full "
                                 "network (-3: about 0.05). Adam moves the bias by at most about lr per update, so "
                                 "after N updates it is within about N x lr of B (319 updates at lr 5e-5: 0.016): a "
                                 "gate started closed (B=-3) stays closed unless the gate's weights open it, which "
                                 "is what this start measures, not the method")
        parser.add_argument("--layer-projectors", action="store_true",
                            help="SmartBERT's stage-1 contrastive projectors of every layer input")
        parser.add_argument("--type-vocab-size", type=int, metavar="N",
                            help="segment (token-type) embeddings, BERT's: 2; RoBERTa has none (0). "
                                 "Segment ids come from the tokens: 1 after the first </s>")
        parser.add_argument("--layer-norm-eps", type=float, metavar="EPS",
                            help="epsilon of every LayerNorm (fairseq/RoBERTa 1e-5, BERT 1e-12)")

    @property
    def num_layers(self) -> int:
        return len(self.encoder.sentence_encoder.layers)

    def register_classification_head(self, name, num_classes=None, inner_dim=None, **kwargs):
        """Build the exits for head ``name`` (called by the sentence-prediction task)."""
        if name in self.exit_heads and self.exit_heads[name].num_classes != num_classes:
            logger.warning(f"re-registering exits {name!r} with {num_classes} classes")
        self.exit_heads[name] = EXIT_HEAD_REGISTRY[self.args.exit_head](
            num_exits=len(self.exit_layers),
            input_dim=self.args.encoder_embed_dim,
            inner_dim=inner_dim or self.args.encoder_embed_dim,
            num_classes=num_classes,
            activation_fn=self.args.pooler_activation_fn,
            pooler_dropout=self.args.pooler_dropout,
            attention_dropout=self.args.attention_dropout,
            pooling=safe_getattr(self.args, "exit_pooling", "cls"),
        )
        for p in self.exit_heads[name].parameters():  # exit_adam / clo give them their own lr
            setattr(p, EXIT_PARAM, True)

    def forward(
        self,
        src_tokens,
        features_only: bool = False,
        return_all_hiddens: bool = False,
        classification_head_name: Optional[str] = None,
        exit_policy: Optional[ExitPolicy] = None,
        return_exit_states: bool = False,
        exits_used: Optional[List[int]] = None,
        project: Optional[str] = None,
        gates_off: bool = False,
        **kwargs,
    ):
        """Without a head name: plain RoBERTa. With one: ``(logits, {"exits": ExitOutput})``.

        ``logits`` are the last exit's at full depth, or each sample's exit under ``exit_policy``.
        At full depth a criterion asks for what its loss uses, so that under DDP every parameter
        that gets a gradient is used here and nothing else is: ``exits_used`` (1-based layers;
        None: every exit), ``return_exit_states``, and ``project`` (SmartBERT's contrastive
        projections, computed here rather than by the criterion): ``"layers"`` projects every
        layer input through the stage-1 projectors, ``"exits"`` every used intermediate exit's
        states through its own projector. ``gates_off``: this pass runs every layer without asking
        the gates (as ``skip_threshold=1`` does for every pass).
        """
        if classification_head_name is None:
            return super().forward(src_tokens, features_only, return_all_hiddens, **kwargs)
        sentence_encoder, heads = self.encoder.sentence_encoder, self.exit_heads[classification_head_name]
        gates = None if gates_off else self.active_gates
        if exit_policy is not None:
            out = early_exit_pass(sentence_encoder, heads, self.exit_layers, src_tokens, exit_policy,
                                  gates=gates, skip_threshold=self.args.skip_threshold)
        else:
            out = full_depth_pass(sentence_encoder, heads, self.exit_layers, src_tokens, return_states=return_exit_states,
                                  gates=gates, gate_mode=self.gate_mode if self.training else "hard",
                                  skip_threshold=self.args.skip_threshold, exits_used=exits_used)
        if project is not None:
            self._project(out, classification_head_name, project)
        return out.logits, {"exits": out}

    def _project(self, out, head_name: str, project: str) -> None:
        if project == "layers":
            if self.layer_projectors is None:
                raise UsageError("the stage-1 contrastive loss needs the layer projectors",
                                 "set model.layer_projectors=true, or criterion.eta1=0")
            out.layer_projections = [self.layer_projectors(j, h) for j, h in enumerate(out.layer_inputs)]
        elif project == "exits":
            heads = self.exit_heads[head_name]
            if not hasattr(heads, "projections"):
                raise UsageError("the stage-2 contrastive loss needs smartbert exit heads",
                                 "set model.exit_head=smartbert, or criterion.eta2=0")
            out.exit_projections = [
                heads.projections(k, h, out.padding_mask) if z is not None and k < len(self.exit_layers) - 1 else None
                for k, (h, z) in enumerate(zip(out.exit_states, out.exit_logits))]
        else:
            raise ValueError(f"unknown projection {project!r}")

    def upgrade_state_dict_named(self, state_dict, name):
        """Inject fresh exits into a plain RoBERTa checkpoint, then check that the rest fits."""
        super().upgrade_state_dict_named(state_dict, name)
        prefix = name + "." if name else ""
        old_weights = [k for k in state_dict if k.startswith(f"{prefix}loss_weights.")]
        if old_weights:  # checkpoints of versions that kept LeeBERT's weights in the model
            logger.warning("checkpoint holds learned loss weights in the model (an older leebert-plugin): "
                           "they are dropped; the task keeps them now")
            for k in old_weights:
                del state_dict[k]
        for module_name in self.injected_modules:
            module_prefix = f"{prefix}{module_name}."
            module = getattr(self, module_name)
            if module is None or any(k.startswith(module_prefix) for k in state_dict):
                continue
            fresh = module.state_dict()
            if fresh:
                logger.info(f"checkpoint has no {module_name}: initialising them fresh")
            for k, v in fresh.items():
                state_dict[module_prefix + k] = v
        state_dict.setdefault(f"{prefix}training_stage", self.training_stage.clone())  # plain RoBERTa: stage 1
        if int(state_dict[f"{prefix}training_stage"]) == 2 and self.exit_heads:
            self.enter_stage2(next(iter(self.exit_heads)))  # a resumed stage 2 rebuilds its optimizer without the frozen part

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        """Upgrade (inject fresh modules), then, for a strict load, say in one line what does not fit."""
        if strict:
            self.upgrade_state_dict(state_dict)  # idempotent: fairseq's load upgrades again
            check_state_dict_fits(
                self, state_dict, "",
                f"this {self.num_layers}-layer exit_roberta (dim {self.args.encoder_embed_dim}, "
                f"exits at {self.exit_layers}, {self.args.exit_head} heads)",
            )
        return super().load_state_dict(state_dict, strict, model_cfg, args)


def _default_shape(args, layers: int, dim: int, ffn: int, heads: int) -> None:
    """Encoder size defaults of an arch (each still overridable)."""
    args.encoder_layers = safe_getattr(args, "encoder_layers", layers)
    args.encoder_embed_dim = safe_getattr(args, "encoder_embed_dim", dim)
    args.encoder_ffn_embed_dim = safe_getattr(args, "encoder_ffn_embed_dim", ffn)
    args.encoder_attention_heads = safe_getattr(args, "encoder_attention_heads", heads)


@register_model_architecture("exit_roberta", "exit_roberta")
def exit_base_architecture(args):
    args.exit_layers = safe_getattr(args, "exit_layers", "")
    args.exit_head = safe_getattr(args, "exit_head", "pabee")
    args.exit_pooling = safe_getattr(args, "exit_pooling", "cls")
    args.skip_gates = safe_getattr(args, "skip_gates", False)
    args.skip_threshold = safe_getattr(args, "skip_threshold", 0.5)
    args.skip_gate_bias = safe_getattr(args, "skip_gate_bias", None)
    args.layer_projectors = safe_getattr(args, "layer_projectors", False)
    args.type_vocab_size = safe_getattr(args, "type_vocab_size", 0)
    args.layer_norm_eps = safe_getattr(args, "layer_norm_eps", 1e-5)
    base_architecture(args)


@register_model_architecture("exit_roberta", "exit_roberta_base")
def exit_roberta_base_architecture(args):
    exit_base_architecture(args)


@register_model_architecture("exit_roberta", "exit_roberta_large")
def exit_roberta_large_architecture(args):
    roberta_large_architecture(args)
    exit_base_architecture(args)


@register_model_architecture("exit_roberta", "exit_roberta_tiny")
def exit_roberta_tiny_architecture(args):
    """4 layers, 64 dims: for tests and the bundled demo, trains in seconds on a CPU."""
    _default_shape(args, layers=4, dim=64, ffn=128, heads=2)
    exit_base_architecture(args)


@register_model_architecture("exit_roberta", "exit_bert_base")
def exit_bert_base_architecture(args):
    """bert-base (12 x 768): segment embeddings, LayerNorm eps 1e-12, 512 positions; import with
    scripts/convert_hf_bert.py."""
    args.type_vocab_size = safe_getattr(args, "type_vocab_size", 2)
    args.layer_norm_eps = safe_getattr(args, "layer_norm_eps", 1e-12)
    exit_base_architecture(args)


@register_model_architecture("exit_roberta", "exit_bert_large")
def exit_bert_large_architecture(args):
    roberta_large_architecture(args)
    exit_bert_base_architecture(args)


@register_model_architecture("exit_roberta", "exit_bert_minilm_l6")
def exit_bert_minilm_l6_architecture(args):
    """all-MiniLM-L6-v2's shape (6 x 384, 12 heads, FFN 1536), the offline benchmark backbone."""
    _default_shape(args, layers=6, dim=384, ffn=1536, heads=12)
    exit_bert_base_architecture(args)


@register_model_architecture("exit_roberta", "exit_bert_tiny")
def exit_bert_tiny_architecture(args):
    """BERT-Tiny's shape (2 x 128, 2 heads, FFN 512)."""
    _default_shape(args, layers=2, dim=128, ffn=512, heads=2)
    exit_bert_base_architecture(args)


def arch_layers(arch: str) -> int:
    """The encoder depth that architecture ``arch`` of ``exit_roberta`` sets (its registered
    defaults applied to empty settings): what a run of it builds, without building it."""
    from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_NAME_REGISTRY

    if ARCH_MODEL_NAME_REGISTRY.get(arch) != "exit_roberta":
        names = sorted(a for a, m in ARCH_MODEL_NAME_REGISTRY.items() if m == "exit_roberta")
        raise UsageError(f"{arch!r} is not an architecture of the exit_roberta model", f"use one of {', '.join(names)}")
    args = argparse.Namespace()
    ARCH_CONFIG_REGISTRY[arch](args)
    return int(args.encoder_layers)


class _DictionaryOnly:
    """What ``build_model`` reads of a task: its dictionary."""

    def __init__(self, dictionary):
        self.source_dictionary = dictionary


def random_exit_model(dictionary, num_classes: int, architecture=exit_base_architecture, seed: int = 0,
                      head: str = "sentence_classification_head", **args) -> ExitRobertaModel:
    """An exit model with random weights (``torch.manual_seed(seed)`` first, so the same arguments
    give the same weights) and the exits of ``head`` registered, in eval mode, on the CPU: the
    model of the benchmarks without a checkpoint and of the tests. ``args`` are model arguments on
    top of ``architecture``'s defaults (``encoder_layers=6``, ``exit_layers="2,4"``, ...)."""
    torch.manual_seed(seed)
    margs = argparse.Namespace(**args)
    architecture(margs)
    model = ExitRobertaModel.build_model(margs, _DictionaryOnly(dictionary))
    model.register_classification_head(head, num_classes=num_classes)
    return model.eval()
