"""Checks on a preprocessed GLUE-layout directory, each ending in one clear :class:`UsageError`."""
import hashlib
import logging
import os
from argparse import Namespace
from typing import List, Optional

import numpy as np
from fairseq.data import Dictionary, data_utils

from leebert_plugin.errors import UsageError
from leebert_plugin.fairseq_patches.safe_loading import check_checkpoint_file
from leebert_plugin.runtime.outputs import loadable

logger = logging.getLogger(__name__)

PREPROCESS_HINT = "preprocess the data with fairseq-preprocess into DATA/input0 and DATA/label (see README)"


def check_data_dir(data: str, regression: bool) -> None:
    if data and not os.path.isdir(data):
        loadable(data)  # a prepare_data --overwrite killed mid-swap: its old folder is renamed back
    if not data or not os.path.isdir(data):
        raise UsageError(f"data directory {data!r} does not exist", f"pass an existing directory; {PREPROCESS_HINT}")
    needed = ["input0/dict.txt"] + ([] if regression else ["label/dict.txt"])
    for rel in needed:
        if not os.path.isfile(os.path.join(data, rel)):
            raise UsageError(f"data directory {data!r} has no {rel}", PREPROCESS_HINT)


def check_split(data: str, split: str, regression: bool) -> None:
    """Every split needs input0/SPLIT.{bin,idx}; labelled splits also label/SPLIT.*"""
    prefix = os.path.join(data, "input0", split)
    if not (os.path.isfile(prefix + ".bin") and os.path.isfile(prefix + ".idx")):
        present = sorted({f.split(".")[0] for f in os.listdir(os.path.join(data, "input0")) if f.endswith(".idx")})
        raise UsageError(
            f"split {split!r} is missing from {data!r} (no input0/{split}.bin/.idx; splits there: "
            f"{', '.join(present) or 'none'})",
            f"preprocess that split (fairseq-preprocess --{'valid' if split.startswith('valid') else split}pref ...) "
            f"or name an existing one (--valid-subset or dataset.valid_subset; the scripts' --subset, --dev or --test)",
        )
    if os.path.getsize(prefix + ".bin") == 0:  # every sentence has at least its </s>
        raise UsageError(f"split {split!r} of {data!r} holds no sentences",
                         "preprocess a non-empty file for it, or name another split")


def real_labels(label_dict: Dictionary) -> List[str]:
    """Label symbols, without specials, ``<mask>`` and fairseq-preprocess's ``madeupword`` fillers."""
    return [
        s for s in label_dict.symbols[label_dict.nspecial:]
        if s != "<mask>" and not s.startswith("madeupword")
    ]


def label_count(data: str) -> int:
    """How many classes ``DATA/label/dict.txt`` lists (what ``task.num_classes`` must be)."""
    check_data_dir(data, regression=False)
    return len(real_labels(Dictionary.load(os.path.join(data, "label", "dict.txt"))))


def check_num_classes(num_classes: int, label_dict: Dictionary, data: str, from_checkpoint: bool = False) -> None:
    """``num_classes`` against the data's labels. For a saved model (``from_checkpoint``) the count
    is the checkpoint's, so the data is what is wrong: data of another task, or binarised with other
    dictionaries; setting ``num_classes`` would not help."""
    labels = real_labels(label_dict)
    if num_classes == len(labels):
        return
    listed = f"{os.path.join(data, 'label', 'dict.txt')} lists {len(labels)} labels ({', '.join(labels[:10])})"
    if from_checkpoint:
        raise UsageError(f"the checkpoint was trained with {num_classes} classes but {listed}",
                         "evaluate it on data of its own task, binarised with its training data's dictionaries "
                         "(fairseq-preprocess --srcdict TRAIN-BIN/input0/dict.txt; the same for label)")
    raise UsageError(f"num_classes={num_classes} but {listed}",
                     f"set task.num_classes={len(labels)} (--num-classes {len(labels)})")


def check_restore_file(restore_file: str, save_dir: str, world_size: int = 1, on_all_ranks: bool = True) -> None:
    """The checkpoint training will start from: present if named, readable, and safe to load.

    fairseq silently trains from scratch when ``checkpoint.restore_file`` names a missing file, and
    shows a long traceback for a corrupted one or one torch's weights-only loader refuses; refused
    here, before the model is built. With several processes, fairseq's default has rank 0 read the
    checkpoint and pickle it to the others, whose weights-only unpickling refuses the config objects
    inside: every rank must read it itself.
    """
    default = restore_file == "checkpoint_last.pt"
    path = os.path.join(save_dir, restore_file) if default else restore_file
    if not os.path.exists(path):
        if default:
            return  # a first launch: nothing to resume
        raise UsageError(f"checkpoint.restore_file={restore_file} does not exist",
                         "fix the path, or drop checkpoint.restore_file to train from scratch")
    check_checkpoint_file(path)
    if world_size > 1 and not on_all_ranks:
        raise UsageError(f"a {world_size}-process run would start from {path} by rank 0 sending it to the "
                         "others, which torch's safe loading refuses (it carries fairseq's config objects)",
                         "set checkpoint.load_checkpoint_on_all_dp_ranks=true (the plugin's configs do)")


def _sizes(data: str, sub: str, split: str, dictionary: Optional[Dictionary]):
    """Token counts per row of ``DATA/sub/split`` (fairseq's binary index only), or None if absent."""
    prefix = os.path.join(data, sub, split)
    if dictionary is None or not os.path.isfile(prefix + ".idx"):
        return None
    dataset = data_utils.load_indexed_dataset(prefix, dictionary)
    # a copy: the sizes are a view into the index's mmap, which closes with the dataset
    return None if dataset is None else np.array(dataset.sizes, copy=True)


def _text_rows(path: str) -> Optional[int]:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        return sum(1 for _ in f)


def check_rows(data: str, split: str, source_dict: Dictionary, label_dict: Optional[Dictionary],
               regression: bool, init_token: Optional[int], max_positions: int, shorten_method: str,
               max_tokens: Optional[int]) -> None:
    """Before any batch: inputs and labels row for row, one label word per row, and every
    sentence within ``max_positions`` (when nothing shortens it) and within ``max_tokens``.

    fairseq checks none of these up front: a label file with fewer rows fails inside the first
    batch that reaches past its end, an empty label crashes mid-epoch, a sentence longer than
    ``max_positions`` is silently dropped in training (and fails validation), and one longer than
    ``max_tokens`` stops the batching with an assertion.
    """
    inputs = _sizes(data, "input0", split, source_dict)
    if inputs is None:
        return
    where = os.path.join(data, "{}", split)
    second = _sizes(data, "input1", split, source_dict)
    if second is not None and len(second) != len(inputs):
        raise UsageError(f"{where.format('input1')} has {len(second)} rows but {where.format('input0')} has "
                         f"{len(inputs)}", "binarise both sentences of every pair from files of the same length")
    if regression:
        labels = _text_rows(where.format("label") + ".label")
    else:
        label_sizes = _sizes(data, "label", split, label_dict)
        labels = None if label_sizes is None else len(label_sizes)
        if label_sizes is not None:
            bad = np.flatnonzero(label_sizes != 2)  # one label word and fairseq-preprocess's </s>
            if len(bad):
                row = int(bad[0])
                what = "an empty label" if label_sizes[row] < 2 else f"a label of {label_sizes[row] - 1} words"
                raise UsageError(f"{where.format('label')} row {row + 1} has {what}",
                                 f"give line {row + 1} of the raw {split} label file exactly one label and "
                                 "binarise it again")
    if labels is not None and labels != len(inputs):
        raise UsageError(f"{where.format('label')} has {labels} rows but {where.format('input0')} has {len(inputs)}",
                         "binarise inputs and labels from files with one line per example each (line k of the "
                         "label file labels line k of the input file)")
    # what the model reads: <init> + sentence (+ separator + second sentence)
    lengths = inputs + (1 if init_token is not None else 0) + (0 if second is None else second + 1)
    longest = int(lengths.argmax())
    if shorten_method == "none" and lengths[longest] > max_positions:
        raise UsageError(f"{where.format('input0')} row {longest + 1} is {int(lengths[longest])} tokens long, more "
                         f"than max_positions={max_positions}, and shorten_method=none",
                         "set task.shorten_method=truncate (or random_crop), or shorten the sentence")
    read = min(int(lengths[longest]), max_positions)
    if max_tokens is not None and 0 < max_tokens < read:
        raise UsageError(f"dataset.max_tokens={max_tokens} is below the longest sentence of {split} "
                         f"({read} tokens, {where.format('input0')} row {longest + 1})",
                         f"set dataset.max_tokens to at least {read} (--max-tokens), or use dataset.batch_size")


def dictionaries_sha256(*dictionaries: Optional[Dictionary]) -> str:
    """A fingerprint of the dictionaries' symbols in order (what every token id means)."""
    digest = hashlib.sha256()
    for d in dictionaries:
        digest.update(b"\x00none\x00" if d is None else "\n".join(d.symbols).encode("utf-8") + b"\x00")
    return digest.hexdigest()


def check_same_dictionaries(saved: Optional[str], current: str, data: str) -> None:
    """A checkpoint stores :func:`dictionaries_sha256` of its training data; data binarised with
    other dictionaries would be read with the wrong token ids, even at the same size."""
    if saved is not None and saved != current:
        raise UsageError(f"{data} was binarised with other dictionaries (input0/label dict.txt) than the "
                         "checkpoint was trained on", "binarise the data with the training data's dictionaries "
                         "(fairseq-preprocess --srcdict TRAIN-BIN/input0/dict.txt; the same for label)")


# the model settings a resumed checkpoint's tensors depend on: a resume that changes one would fail
# in the strict load with a list of tensors (and a fix about checkpoint.restore_file, which a resume
# does not set)
MODEL_SHAPE = ("_name", "arch", "encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_attention_heads",
               "exit_layers", "exit_head", "exit_pooling", "skip_gates", "layer_projectors", "max_positions")


def changed_model_setting(saved, current):
    """The first setting of :data:`MODEL_SHAPE` that ``current`` (the run's model config) gives
    otherwise than ``saved`` (a checkpoint's), as ``(key, saved value, value)``; None if none does.
    Either may be a Namespace, a dict or a DictConfig; a setting one of them lacks is not compared."""
    def value(cfg, key):
        return getattr(cfg, key, None) if isinstance(cfg, Namespace) else cfg.get(key) if hasattr(cfg, "get") else None
    if saved is None or current is None:
        return None
    for key in MODEL_SHAPE:
        a, b = value(saved, key), value(current, key)
        if a is not None and b is not None and str(a) != str(b):
            return key, a, b
    return None


UNK_WARNING = 0.5  # share of <unk> among a split's text tokens above which its bpe is probably the wrong one
UNK_SAMPLE = 2000  # rows read for the share: enough to tell, cheap for any split


def unk_share(data: str, split: str, dictionary: Dictionary, rows: int = UNK_SAMPLE) -> Optional[float]:
    """#<unk> / #text tokens (not ``<s>``, ``</s>``, ``<pad>``) in the first ``rows`` rows of
    ``DATA/input0/SPLIT``; None when the split has no binary index or no text token."""
    prefix = os.path.join(data, "input0", split)
    if not os.path.isfile(prefix + ".idx"):
        return None
    dataset = data_utils.load_indexed_dataset(prefix, dictionary)
    if dataset is None:
        return None
    unk = text = 0
    for i in range(min(rows, len(dataset))):
        tokens = dataset[i]
        unk += int((tokens == dictionary.unk()).sum())
        text += int((tokens >= dictionary.nspecial).sum())
    return unk / (unk + text) if unk + text else None


def warn_unk_share(data: str, split: str, dictionary: Dictionary) -> None:
    """One warning line when most tokens of a split are ``<unk>``: the text was encoded with
    another bpe than the dictionary's (a WordPiece vocabulary for a sentencepiece model, or none),
    and every figure computed on it would be about ``<unk>`` tokens."""
    share = unk_share(data, split, dictionary)
    if share is not None and share > UNK_WARNING:
        logger.warning(f"{share:.0%} of the tokens of {os.path.join(data, 'input0', split)} are <unk> (first "
                       f"{UNK_SAMPLE} rows): it was probably encoded with another bpe than its dictionary's; "
                       "preprocess it again with the model's bpe and dictionary (prepare_data --dict, or "
                       "fairseq-preprocess --srcdict)")
