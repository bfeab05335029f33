"""Checks on a preprocessed GLUE-layout directory, each ending in one clear :class:`UsageError`."""
import os
from typing import List

from fairseq.data import Dictionary

from leebert_plugin.errors import UsageError
from leebert_plugin.safe_loading import check_checkpoint_file

PREPROCESS_HINT = "preprocess the data with fairseq-preprocess into DATA/input0 and DATA/label (see README)"


def check_data_dir(data: str, regression: bool) -> None:
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
            f"or name an existing one (--valid-subset / dataset.valid_subset)",
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


def check_num_classes(num_classes: int, label_dict: Dictionary, data: str) -> None:
    labels = real_labels(label_dict)
    if num_classes != len(labels):
        raise UsageError(
            f"num_classes={num_classes} but {os.path.join(data, 'label', 'dict.txt')} lists "
            f"{len(labels)} labels ({', '.join(labels[:10])})",
            f"set task.num_classes={len(labels)} (--num-classes {len(labels)})",
        )


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
