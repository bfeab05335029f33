"""Sentences and labels in memory -> fairseq's sentence-prediction layout on disk, written whole or not at all.

The one writer behind both preprocessing commands (``prepare_data`` for a user's own files,
``preprocess_glue`` for GLUE's): ``OUT/input0`` (``OUT/input1`` for pairs) holds the bpe-encoded
sentences binarised by fairseq-preprocess with the checkpoint's dictionary; ``OUT/label`` the
labels, binarised with a fixed label dictionary (class ``i`` = line ``i`` of ``OUT/label/dict.txt``,
not fairseq's frequency order), or written as text for regression; ``OUT/raw`` the encoded text
and the dictionaries.

Everything is written into a staging folder beside ``OUT`` and swapped into place only when all of
it is there (:func:`write_layout`): a failure (or a kill) part-way leaves an earlier layout exactly
as it was. An existing layout is replaced only when the caller asks (``overwrite``).
"""
import shutil
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from leebert_plugin.data.binarize import fairseq_preprocess
from leebert_plugin.data.bpe_encode import build, encode_lines, write_lines
from leebert_plugin.data.sentencepiece_glue import write_sentencepiece_dict
from leebert_plugin.data.wordpiece_vocab import dict_symbols, load_vocab, write_dict
from leebert_plugin.errors import UsageError
from leebert_plugin.runtime.outputs import carry_over, replacing

PARTS = ("input0", "input1", "label", "raw")
FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


@dataclass
class Split:
    """One fairseq split (``train``, ``valid``, ``valid1``, ``test``, ...) in memory.

    ``inputs[k][i]``: sentence ``k`` (0, or 1 for pairs) of example ``i``; ``labels[i]`` its label
    as the label file holds it (a class name, or a regression value as text); None: unlabelled.
    """
    name: str
    inputs: List[List[str]]
    labels: Optional[List[str]]

    def __len__(self) -> int:
        return len(self.inputs[0])


def existing_parts(out: Path) -> List[Path]:
    return [Path(out) / part for part in PARTS if (Path(out) / part).exists()]


def refuse_existing_layout(out: Path, overwrite: bool) -> None:
    """Before any work: a layout already in ``out`` is refused unless ``overwrite``."""
    parts = existing_parts(out)
    if parts and not overwrite:
        raise UsageError(f"{out} already holds preprocessed data ({', '.join(p.name for p in parts)})",
                         "pass another output folder, or --overwrite to replace it")


def _symbols(dict_file: Path) -> List[str]:
    return [line.rsplit(" ", 1)[0] for line in Path(dict_file).read_text(encoding="utf-8").splitlines() if line.strip()]


def check_source_dict(args: Namespace) -> None:
    """``--dict`` exists (and, for wordpiece, lists the vocabulary's tokens in order); gpt2 needs one."""
    if args.dict is None:
        if args.bpe == "gpt2":
            raise UsageError(f"--bpe {args.bpe} needs --dict",
                             "pass the checkpoint's dict.txt (for gpt2: the dict.txt of roberta.base)")
        return
    if not Path(args.dict).is_file():
        raise UsageError(f"--dict {args.dict} does not exist", "pass the dict.txt of the checkpoint you fine-tune")
    if args.bpe == "wordpiece" and _symbols(args.dict) != dict_symbols(load_vocab(args.wordpiece_vocab)):
        raise UsageError(f"--dict {args.dict} does not list the tokens of {args.wordpiece_vocab} in its order",
                         "pass the dict.txt the BERT converter wrote from this vocab.txt, or drop --dict")


def source_dict(args: Namespace, raw: Path) -> Path:
    """The dictionary of the encoded text: ``--dict``, else ``raw/dict.txt`` derived from the bpe's vocabulary."""
    if args.dict is not None:
        return Path(args.dict)
    derived = raw / "dict.txt"
    if args.bpe == "wordpiece":
        write_dict(load_vocab(args.wordpiece_vocab), derived)
    else:
        write_sentencepiece_dict(Path(args.sentencepiece_model), derived)
    return derived


def check_label_names(names: Sequence[str], where: str = "the labels") -> None:
    """Class names fairseq's label dictionary can hold: one token each, none of its special symbols."""
    for name in names:
        if not name or any(c.isspace() for c in name):
            raise UsageError(f"{where}: the label {name!r} is {'empty' if not name else 'more than one word'}",
                             f"rename it to one word (e.g. {'_'.join(name.split()) or 'none'}) in the data")
        if name in FAIRSEQ_SPECIALS:
            raise UsageError(f"{where}: the label {name!r} is one of fairseq's special symbols",
                             "rename the class (e.g. unknown)")


def _kind(split: str) -> str:
    """fairseq-preprocess's split kind: ``valid1`` -> ``valid``."""
    return split.rstrip("0123456789")


def _write(stage: Path, splits: Sequence[Split], label_names: Optional[Sequence[str]], args: Namespace,
           workers: int) -> None:
    raw = stage / "raw"
    raw.mkdir()
    srcdict = source_dict(args, raw)
    for split in splits:
        for k, sentences in enumerate(split.inputs):
            write_lines(raw / f"{split.name}.raw.input{k}", sentences)
            write_lines(raw / f"{split.name}.input{k}", encode_lines(args, sentences, workers))
        if split.labels is not None:
            write_lines(raw / f"{split.name}.label", split.labels)
    for k in range(len(splits[0].inputs)):
        prefs: Dict[str, List[Path]] = {}
        for split in splits:
            prefs.setdefault(_kind(split.name), []).append(raw / f"{split.name}.input{k}")
        fairseq_preprocess(stage / f"input{k}", prefs, srcdict, workers)
    labelled: Dict[str, List[Path]] = {}
    for split in splits:
        if split.labels is not None:
            labelled.setdefault(_kind(split.name), []).append(raw / f"{split.name}.label")
    if label_names is None:  # regression: the task reads label/<split>.label as text
        (stage / "label").mkdir()
        for path in sum(labelled.values(), []):
            shutil.copy(path, stage / "label" / path.name)
    else:
        label_dict = raw / "label.dict.txt"
        write_lines(label_dict, [f"{label} 1" for label in label_names])
        fairseq_preprocess(stage / "label", labelled, label_dict, workers)


SETTINGS_FILE = "prepare.json"  # what was prepared, how (prepare_data's): read by the export and by a re-run's user


def write_layout(out: Path, splits: Sequence[Split], label_names: Optional[Sequence[str]], args: Namespace,
                 workers: int = 1, overwrite: bool = False, finish: Optional[Callable[[Path], None]] = None) -> None:
    """Write ``splits`` into ``out`` as fairseq's layout, bpe ``args.bpe``; ``label_names``: the
    classes in index order (None: regression). Checks the bpe and ``--dict`` before writing.
    ``finish(stage)`` writes what else belongs to the new data (``prepare.json``) before the swap.

    The new folder is built beside ``out`` and swapped in whole under ``out``'s lock
    (:func:`~leebert_plugin.runtime.outputs.replacing`): a kill leaves the old data (with its own
    settings) or the new one, never new binaries beside old settings; a second writer into ``out``
    is refused in one line. Files of ``out`` that are not the layout's are kept
    (:func:`~leebert_plugin.runtime.outputs.carry_over`)."""
    out = Path(out)
    refuse_existing_layout(out, overwrite)
    check_source_dict(args)
    if label_names is not None:
        check_label_names(label_names)
    build(args)  # bad bpe options fail here, before anything is written
    with replacing(out) as stage:
        refuse_existing_layout(out, overwrite)  # again, under the lock: another run may have written it
        _write(stage, splits, label_names, args, workers)
        if finish is not None:
            finish(stage)
        carry_over(out, stage, [*PARTS, SETTINGS_FILE, ".staging-*"])  # .staging-*: earlier versions staged inside
