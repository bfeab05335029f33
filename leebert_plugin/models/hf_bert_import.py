"""Hugging Face BERT directory -> fairseq checkpoint of an ``exit_bert_*`` model plus ``dict.txt``.

The HF tensors are renamed to fairseq's RoBERTa encoder (post-LN, the same layer maths), the
embedding rows are reordered to the fairseq dictionary (``leebert_plugin.data.wordpiece_vocab``),
and the position rows shifted by fairseq's ``padding_idx + 1`` offset. The checkpoint holds only
tensors and plain containers, so torch's weights-only loader reads it; it restores with
``checkpoint.restore_file``, which injects fresh exits, like a plain RoBERTa checkpoint.
"""
import argparse
import json
import logging
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from fairseq import options
from fairseq.data import Dictionary
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.models import ARCH_CONFIG_REGISTRY
from omegaconf import OmegaConf
from torch import Tensor

from leebert_plugin.data.wordpiece_vocab import fairseq_order, load_vocab, write_dict
from leebert_plugin.errors import UsageError
from leebert_plugin.models.checkpoint_fit import check_state_dict_fits
from leebert_plugin.models.exit_roberta import ExitRobertaModel
from leebert_plugin.runtime.outputs import carry_over, check_folder, replacing, torch_save

logger = logging.getLogger(__name__)

PADDING_IDX = 1  # fairseq's <pad>; learned positions start at padding_idx + 1
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_accurate", "gelu_pytorch_tanh": "gelu_accurate", "relu": "relu"}
# registered exit_bert archs and the shape each stands for: (layers, dim, heads, ffn)
ARCH_SHAPES = {
    "exit_bert_base": (12, 768, 12, 3072),
    "exit_bert_large": (24, 1024, 16, 4096),
    "exit_bert_minilm_l6": (6, 384, 12, 1536),
    "exit_bert_tiny": (2, 128, 2, 512),
}
# fairseq layer i <- HF encoder.layer.i (the part after the layer prefix)
LAYER_KEYS = {
    "self_attn.q_proj": "attention.self.query",
    "self_attn.k_proj": "attention.self.key",
    "self_attn.v_proj": "attention.self.value",
    "self_attn.out_proj": "attention.output.dense",
    "self_attn_layer_norm": "attention.output.LayerNorm",
    "fc1": "intermediate.dense",
    "fc2": "output.dense",
    "final_layer_norm": "output.LayerNorm",
}
ENCODER = "encoder.sentence_encoder."
# the config.json fields the model's shape is read from (the others have BERT's defaults)
SHAPE_FIELDS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
                "max_position_embeddings")
OUTPUTS = ("model.pt", "dict.txt", "vocab.txt", "convert.json")


def read_config(hf_dir: Path) -> dict:
    """``config.json``, refused unless it describes a BERT encoder this import reproduces exactly."""
    path = hf_dir / "config.json"
    if not path.is_file():
        raise UsageError(f"{hf_dir} has no config.json, so it is not a Hugging Face model directory",
                         "point the converter at the folder holding config.json, model.safetensors and vocab.txt")
    config = json.loads(path.read_text(encoding="utf-8"))
    model_type = config.get("model_type", "?")
    if model_type != "bert":
        raise UsageError(f"{path} describes a {model_type!r} model ({config.get('architectures')}), not BERT",
                         "convert a BERT checkpoint (model_type 'bert'); RoBERTa checkpoints in fairseq's "
                         "format restore directly with checkpoint.restore_file")
    if config.get("hidden_act") not in ACTIVATIONS:
        raise UsageError(f"{path} uses the activation {config.get('hidden_act')!r}",
                         f"convert a BERT with one of {', '.join(ACTIVATIONS)}")
    missing = [k for k in SHAPE_FIELDS if not isinstance(config.get(k), int) or isinstance(config.get(k), bool)]
    if missing:
        value = config.get(missing[0])
        raise UsageError(f"{path} has no {missing[0]} field" if missing[0] not in config else
                         f"{path}: {missing[0]}={value!r} is not a whole number",
                         f"use the config.json that came with these weights (it names {', '.join(SHAPE_FIELDS)})")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise UsageError(f"{path} uses {config['position_embedding_type']!r} position embeddings",
                         "convert a BERT with absolute (learned) positions")
    return config


def read_weights(hf_dir: Path) -> Dict[str, Tensor]:
    """The tensors of ``model.safetensors`` or ``pytorch_model.bin`` with ``bert.`` and gamma/beta names
    normalised to ``BertModel``'s."""
    if (hf_dir / "model.safetensors").is_file():
        from safetensors.torch import load_file
        raw = load_file(str(hf_dir / "model.safetensors"))
    elif (hf_dir / "pytorch_model.bin").is_file():
        raw = torch.load(hf_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise UsageError(f"{hf_dir} has neither model.safetensors nor pytorch_model.bin",
                         "point the converter at a complete Hugging Face BERT directory")
    out = {}
    for key, value in raw.items():
        key = key[len("bert."):] if key.startswith("bert.") else key
        if key.endswith(".gamma") or key.endswith(".beta"):
            key = key.rsplit(".", 1)[0] + (".weight" if key.endswith(".gamma") else ".bias")
        out[key] = value
    return out


def read_vocab(hf_dir: Path, out_vocab: Path) -> List[str]:
    """WordPiece tokens in id order, from ``vocab.txt`` or else ``tokenizer.json``; copied to ``out_vocab``."""
    if not (hf_dir / "vocab.txt").is_file() and (hf_dir / "tokenizer.json").is_file():
        model = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8")).get("model", {})
        if model.get("type") != "WordPiece":
            raise UsageError(f"{hf_dir}/tokenizer.json holds a {model.get('type')!r} tokenizer, not WordPiece",
                             "convert a BERT checkpoint with a WordPiece vocabulary")
        ids = model["vocab"]
        tokens = sorted(ids, key=ids.get)
        out_vocab.write_text("\n".join(tokens) + "\n", encoding="utf-8")
        return load_vocab(out_vocab, source=hf_dir / "tokenizer.json")
    if not (hf_dir / "vocab.txt").is_file():
        raise UsageError(f"{hf_dir} has neither vocab.txt nor tokenizer.json",
                         "put the checkpoint's vocab.txt next to its config.json")
    tokens = load_vocab(hf_dir / "vocab.txt")  # checked where it is: a message names the user's file
    out_vocab.write_text((hf_dir / "vocab.txt").read_text(encoding="utf-8"), encoding="utf-8")
    return tokens


def matching_arch(config: dict) -> Tuple[str, Dict[str, object]]:
    """The registered arch of this shape (or exit_bert_base) and the model overrides it still needs."""
    shape = (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
             config["intermediate_size"])
    arch = next((a for a, s in ARCH_SHAPES.items() if s == shape), "exit_bert_base")
    overrides: Dict[str, object] = {}
    if ARCH_SHAPES[arch] != shape:
        overrides.update(encoder_layers=shape[0], encoder_embed_dim=shape[1],
                         encoder_attention_heads=shape[2], encoder_ffn_embed_dim=shape[3])
    if ACTIVATIONS[config["hidden_act"]] != "gelu":
        overrides["activation_fn"] = ACTIVATIONS[config["hidden_act"]]
    if config.get("type_vocab_size", 2) != 2:
        overrides["type_vocab_size"] = config["type_vocab_size"]
    if config.get("layer_norm_eps", 1e-12) != 1e-12:
        overrides["layer_norm_eps"] = config["layer_norm_eps"]
    if config["max_position_embeddings"] != 512:
        overrides["max_positions"] = config["max_position_embeddings"]
    return arch, overrides


def _need(weights: Dict[str, Tensor], key: str, hf_dir: Path) -> Tensor:
    if key not in weights:
        raise UsageError(f"{hf_dir} is not a BERT checkpoint: it lacks the tensor {key!r}",
                         "convert a BertModel / BertForMaskedLM / BertFor* checkpoint")
    return weights[key]


def convert_state_dict(config: dict, weights: Dict[str, Tensor], vocab: List[str], hf_dir: Path) -> Dict[str, Tensor]:
    """HF ``BertModel`` tensors -> the encoder part of an ``exit_roberta`` state dict."""
    word = _need(weights, "embeddings.word_embeddings.weight", hf_dir)
    if word.size(0) != len(vocab):
        raise UsageError(f"the vocabulary of {hf_dir} has {len(vocab)} tokens but its word embeddings have "
                         f"{word.size(0)} rows", "use the vocab.txt / tokenizer.json that came with these weights")
    order = torch.tensor(fairseq_order(vocab))
    positions = _need(weights, "embeddings.position_embeddings.weight", hf_dir)
    sd = {
        ENCODER + "embed_tokens.weight": word[order],
        ENCODER + "embed_positions.positions.weight": torch.cat(
            [positions.new_zeros(PADDING_IDX + 1, positions.size(1)), positions]),
        ENCODER + "embed_positions.segments.weight": _need(weights, "embeddings.token_type_embeddings.weight", hf_dir),
    }
    for p in ("weight", "bias"):
        sd[f"{ENCODER}layernorm_embedding.{p}"] = _need(weights, f"embeddings.LayerNorm.{p}", hf_dir)
    for i in range(config["num_hidden_layers"]):
        for ours, theirs in LAYER_KEYS.items():
            for p in ("weight", "bias"):
                sd[f"{ENCODER}layers.{i}.{ours}.{p}"] = _need(weights, f"encoder.layer.{i}.{theirs}.{p}", hf_dir)
    sd.update(_lm_head(weights, sd[ENCODER + "embed_tokens.weight"], order))
    return {k: v.float().contiguous() for k, v in sd.items()}


def _lm_head(weights: Dict[str, Tensor], embed: Tensor, order: Tensor) -> Dict[str, Tensor]:
    """fairseq's (tied) MLM head: BERT's own if the checkpoint has one, else BERT's initialisation."""
    dim = embed.size(1)
    if "cls.predictions.transform.dense.weight" in weights:
        t = "cls.predictions.transform."
        head = {"dense.weight": weights[t + "dense.weight"], "dense.bias": weights[t + "dense.bias"],
                "layer_norm.weight": weights[t + "LayerNorm.weight"], "layer_norm.bias": weights[t + "LayerNorm.bias"],
                "bias": weights["cls.predictions.bias"][order]}
    else:
        logger.info("no MLM head in the checkpoint: the (unused) lm_head gets BERT's initialisation")
        g = torch.Generator().manual_seed(0)  # a fixed seed: converting twice gives the same bytes
        head = {"dense.weight": torch.randn(dim, dim, generator=g) * 0.02, "dense.bias": torch.zeros(dim),
                "layer_norm.weight": torch.ones(dim), "layer_norm.bias": torch.zeros(dim),
                "bias": torch.zeros(embed.size(0))}
    head["weight"] = embed  # tied to the token embeddings, as in BERT and RoBERTa
    return {f"encoder.lm_head.{k}": v for k, v in head.items()}


def check_against_config(state: Dict[str, Tensor], weights: Dict[str, Tensor], config: dict, vocab_size: int,
                         hf_dir: Path) -> None:
    """The converted tensors against the model ``config.json`` describes, so that a config that
    contradicts the weights is refused here rather than trusted. (The model is built on the CPU:
    fairseq's BERT initialisation copies through the CPU, which the meta device cannot.)"""
    layers = config["num_hidden_layers"]
    if any(k.startswith(f"encoder.layer.{layers}.") for k in weights):
        extra = 1 + max(int(k.split(".")[2]) for k in weights if k.startswith("encoder.layer."))
        raise UsageError(f"{hf_dir}/config.json says num_hidden_layers={layers} but the weights have {extra} layers",
                         "use the config.json that came with these weights")
    arch, overrides = matching_arch(config)
    args = argparse.Namespace(arch=arch, max_positions=overrides.get("max_positions", 512))
    ARCH_CONFIG_REGISTRY[arch](args)
    for key, value in overrides.items():
        setattr(args, key, value)
    dictionary = Dictionary()
    for i in range(vocab_size - len(dictionary)):
        dictionary.add_symbol(f"t{i}")
    task = argparse.Namespace(source_dictionary=dictionary, max_positions=lambda: args.max_positions)
    model = ExitRobertaModel.build_model(args, task)
    what = (f"the model {hf_dir}/config.json describes ({layers} layers, hidden_size {config['hidden_size']}, "
            f"intermediate_size {config['intermediate_size']}, max_position_embeddings "
            f"{config['max_position_embeddings']}, type_vocab_size {config.get('type_vocab_size', 2)})")
    # fairseq's "version" buffers are bookkeeping, not weights: the converter writes none
    versions = {"encoder." + k: v for k, v in model.encoder.state_dict().items() if k.endswith("version")}
    check_state_dict_fits(model.encoder, {**state, **versions}, "encoder.", what,
                          "use the config.json that came with these weights")


def fairseq_config(arch: str, overrides: Dict[str, object]) -> dict:
    """The config fairseq's own loaders need to rebuild the model, as roberta.base's ``model.pt``
    carries one: fairseq's ``masked_lm`` task over the converted ``dict.txt`` and the arch with its
    overrides. Its data path is ``.``: the loaders are given the folder (``from_pretrained(DIR)``,
    or ``arg_overrides={"data": DIR}``), so no path of the converting machine is kept."""
    positions = str(overrides.get("max_positions", 512))
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [".", "--task", "masked_lm", "--arch", arch, "--criterion", "masked_lm",
                                                "--max-positions", positions, "--tokens-per-sample", positions])
    for key, value in overrides.items():
        setattr(args, key, value)
    return OmegaConf.to_container(convert_namespace_to_omegaconf(args))


def fairseq_checkpoint(model_state: Dict[str, Tensor], cfg: Optional[dict] = None) -> dict:
    """A checkpoint of the weights alone that ``checkpoint.restore_file`` accepts and, with ``cfg``
    (:func:`fairseq_config`), fairseq's ``load_model_ensemble_and_task`` and ``from_pretrained``."""
    return {
        "args": None,
        "cfg": cfg,
        "model": model_state,
        "optimizer_history": [{"criterion_name": "none", "optimizer_name": "none",
                               "lr_scheduler_state": {"best": None}, "num_updates": 0}],
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}},
        "last_optimizer_state": None,
    }


def convert(hf_dir: Path, out_dir: Path) -> dict:
    """Write ``model.pt``, ``dict.txt``, ``vocab.txt`` and ``convert.json`` into ``out_dir``.

    Refuses to overwrite any of them. The four are built beside ``out_dir`` and swapped in together
    (:func:`~leebert_plugin.runtime.outputs.replacing`): a kill leaves none of them or all four.
    Returns what ``convert.json`` holds (arch and overrides).
    """
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    existing = [name for name in OUTPUTS if (out_dir / name).exists()]
    if existing:
        raise UsageError(f"{out_dir} already holds {', '.join(existing)}",
                         "convert into a new (or empty) output directory")
    check_folder(out_dir, "the output directory")
    config = read_config(hf_dir)
    weights = read_weights(hf_dir)
    with replacing(out_dir) as stage:  # one converter per out_dir; a kill leaves no half conversion
        vocab = read_vocab(hf_dir, stage / "vocab.txt")
        state = convert_state_dict(config, weights, vocab, hf_dir)
        check_against_config(state, weights, config, len(vocab), hf_dir)
        arch, overrides = matching_arch(config)
        lowercase = _lowercase(hf_dir)
        torch_save(fairseq_checkpoint(state, fairseq_config(arch, overrides)), stage / "model.pt")
        write_dict(vocab, stage / "dict.txt")
        summary = {"source": str(hf_dir.resolve()), "arch": arch, "model_overrides": overrides,
                   "wordpiece_lowercase": lowercase, "vocab_size": len(vocab)}
        (stage / "convert.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        carry_over(out_dir, stage, OUTPUTS)  # what else out_dir holds is kept
    return summary


def _lowercase(hf_dir: Path) -> bool:
    """Whether the checkpoint's tokenizer lower-cases (uncased BERT); true when nothing says."""
    path = hf_dir / "tokenizer_config.json"
    if path.is_file():
        return bool(json.loads(path.read_text(encoding="utf-8")).get("do_lower_case", True))
    return True
