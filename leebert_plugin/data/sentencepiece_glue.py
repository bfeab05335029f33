"""Single-sentence GLUE-layout TSVs -> sentencepiece pieces -> fairseq-preprocess binaries.

Reads ``train.tsv``/``dev.tsv``/``test.tsv`` with a ``sentence`` and a ``label`` column (SST-2's
layout, every split labelled), trains a sentencepiece model on the training sentences (offline,
Python API), encodes every split with fairseq's ``sentencepiece`` bpe and binarises it with
fairseq-preprocess into ``OUT/input0`` and ``OUT/label``, the layout the sentence_prediction tasks
read. Full GLUE tasks (pairs, other layouts, any bpe): ``leebert_plugin.data.preprocess_glue``.
"""
import argparse
from argparse import Namespace
from pathlib import Path
from typing import Dict, List, Tuple

import sentencepiece as spm

from leebert_plugin import cli
from leebert_plugin.data.binarize import fairseq_preprocess
from leebert_plugin.data.bpe_encode import encode_lines, write_lines
from leebert_plugin.data.glue_tsv import read_rows
from leebert_plugin.errors import UsageError

SPLITS = {"train": "train", "dev": "valid", "test": "test"}  # TSV name -> fairseq split name


def read_tsv(path: Path) -> List[Tuple[str, str]]:
    """(sentence, label) rows of a TSV whose header names a ``sentence`` and a ``label`` column."""
    header, body = read_rows(path)
    if "sentence" not in header or "label" not in header:
        raise UsageError(f"{path} needs a header with 'sentence' and 'label' columns, found {header}",
                         "use SST-2's layout: a header line 'sentence<TAB>label', then one row per sentence")
    s, l = header.index("sentence"), header.index("label")
    return [(row[s], row[l]) for row in body]


def train_sentencepiece(sentences: List[str], prefix: Path, vocab_size: int) -> Path:
    """Train a unigram model on ``sentences``; returns the ``.model`` file."""
    text = prefix.with_suffix(".train.txt")
    text.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(prefix), vocab_size=vocab_size, model_type="unigram",
        character_coverage=1.0, hard_vocab_limit=False, bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0,
        input_sentence_size=1_000_000, shuffle_input_sentence=True, minloglevel=2,
    )
    text.unlink()
    return Path(str(prefix) + ".model")


def write_sentencepiece_dict(model: Path, dict_file: Path) -> None:
    """fairseq dict.txt of a sentencepiece model: every piece but the unknown and control ones
    (``<unk>``, ``<s>``, ``</s>``, ``<pad>``: fairseq's dictionary has its own), in id order."""
    sp = spm.SentencePieceProcessor(model_file=str(model))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not (sp.is_unknown(i) or sp.is_control(i))]
    Path(dict_file).write_text("".join(f"{p} 1\n" for p in pieces), encoding="utf-8")


def preprocess(tsv_dir: Path, out: Path, vocab_size: int, workers: int) -> None:
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    data: Dict[str, List[Tuple[str, str]]] = {split: read_tsv(tsv_dir / f"{tsv}.tsv") for tsv, split in SPLITS.items()}
    model = train_sentencepiece([s for s, _ in data["train"]], raw / "spm", vocab_size)
    write_sentencepiece_dict(model, raw / "dict.txt")
    bpe = Namespace(bpe="sentencepiece", sentencepiece_model=str(model))
    for split, rows in data.items():
        write_lines(raw / f"{split}.input0", encode_lines(bpe, [s for s, _ in rows], workers))
        write_lines(raw / f"{split}.label", [label for _, label in rows])
    for key, srcdict in (("input0", raw / "dict.txt"), ("label", None)):  # labels: fairseq's frequency order
        fairseq_preprocess(out / key, {kind: [raw / f"{kind}.{key}"] for kind in SPLITS.values()}, srcdict, workers)


def preprocess_subset(tsv_dir: Path, out: Path, sizes: Dict[str, int], vocab_size: int, workers: int = 1) -> None:
    """:func:`preprocess` of the first ``sizes[name]`` rows of each ``tsv_dir/<name>.tsv`` (their
    copies go to ``out/tsv``): a small, fixed slice of the bundled data for quick runs (the tests'
    data, the GPU check's)."""
    from leebert_plugin.data.rotten_tomatoes import write_sst2_layout

    write_sst2_layout(out / "tsv", {name: read_tsv(Path(tsv_dir) / f"{name}.tsv")[:n] for name, n in sizes.items()})
    preprocess(out / "tsv", out, vocab_size=vocab_size, workers=workers)


def main() -> None:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tsv_dir", type=Path, help="folder with train.tsv, dev.tsv, test.tsv")
    p.add_argument("out", type=Path, help="output folder (OUT/input0, OUT/label, OUT/raw)")
    p.add_argument("--vocab-size", type=int, default=2000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--force", action="store_true", help="rebuild even if OUT/label/dict.txt exists")
    args = p.parse_args()
    if (args.out / "label" / "dict.txt").exists() and not args.force:
        print(f"{args.out} is already preprocessed (use --force to rebuild)")
        return
    preprocess(args.tsv_dir, args.out, args.vocab_size, args.workers)
    print(f"preprocessed {args.tsv_dir} into {args.out}")


if __name__ == "__main__":
    cli.run(main)
