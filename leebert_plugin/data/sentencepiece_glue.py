"""Single-sentence GLUE-layout TSVs -> sentencepiece pieces -> fairseq-preprocess binaries.

Reads ``train.tsv``/``dev.tsv``/``test.tsv`` with a ``sentence`` and a ``label`` column (SST-2's
layout), trains a sentencepiece model on the training sentences (offline, Python API), writes the
encoded ``.input0`` and ``.label`` files and binarises them with fairseq's own ``fairseq-preprocess``
into ``OUT/input0`` and ``OUT/label``, the layout the sentence_prediction tasks read.
"""
import argparse
import csv
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import sentencepiece as spm

SPLITS = {"train": "train", "dev": "valid", "test": "test"}  # TSV name -> fairseq split name


def read_tsv(path: Path) -> List[Tuple[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header, body = rows[0], rows[1:]
    if "sentence" not in header or "label" not in header:
        raise SystemExit(f"error: {path} needs a header with 'sentence' and 'label' columns, found {header}")
    s, l = header.index("sentence"), header.index("label")
    for i, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise SystemExit(f"error: {path}:{i} has {len(row)} columns, the header has {len(header)}")
    return [(row[s], row[l]) for row in body]


def train_sentencepiece(sentences: List[str], prefix: Path, vocab_size: int) -> spm.SentencePieceProcessor:
    text = prefix.with_suffix(".train.txt")
    text.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(prefix), vocab_size=vocab_size, model_type="unigram",
        character_coverage=1.0, hard_vocab_limit=False, bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0,
        input_sentence_size=1_000_000, shuffle_input_sentence=True, minloglevel=2,
    )
    text.unlink()
    return spm.SentencePieceProcessor(model_file=str(prefix) + ".model")


def write_fairseq_dict(vocab_file: Path, dict_file: Path) -> None:
    """sentencepiece vocab -> fairseq dict.txt (skip <unk>, which fairseq adds itself)."""
    lines = vocab_file.read_text(encoding="utf-8").splitlines()[1:]
    dict_file.write_text("".join(f"{line.split(chr(9))[0]} 1\n" for line in lines), encoding="utf-8")


def preprocess(tsv_dir: Path, out: Path, vocab_size: int, workers: int) -> None:
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    data: Dict[str, List[Tuple[str, str]]] = {}
    for tsv, split in SPLITS.items():
        if not (tsv_dir / f"{tsv}.tsv").exists():
            raise SystemExit(f"error: {tsv_dir / (tsv + '.tsv')} is missing")
        data[split] = read_tsv(tsv_dir / f"{tsv}.tsv")
    sp = train_sentencepiece([s for s, _ in data["train"]], raw / "spm", vocab_size)
    write_fairseq_dict(raw / "spm.vocab", raw / "dict.txt")
    for split, rows in data.items():
        with open(raw / f"{split}.input0", "w", encoding="utf-8") as f:
            f.writelines(" ".join(sp.encode(s, out_type=str)) + "\n" for s, _ in rows)
        with open(raw / f"{split}.label", "w", encoding="utf-8") as f:
            f.writelines(f"{label}\n" for _, label in rows)
    exe = shutil.which("fairseq-preprocess") or str(Path(sys.executable).parent / "fairseq-preprocess")
    for key, extra in (("input0", ["--srcdict", str(raw / "dict.txt")]), ("label", [])):
        cmd = [exe, "--only-source", "--workers", str(workers), "--destdir", str(out / key),
               *(f"--{pref}pref={raw / split}.{key}" for pref, split in
                 (("train", "train"), ("valid", "valid"), ("test", "test"))), *extra]
        with open(raw / "preprocess.log", "a") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    main()
