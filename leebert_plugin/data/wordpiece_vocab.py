"""How a WordPiece ``vocab.txt`` (BERT) maps onto a fairseq ``Dictionary``.

fairseq's dictionary starts with ``<s> <pad> </s> <unk>``; the sentence-prediction task appends
``<mask>``. BERT's special tokens take those slots: ``[CLS]`` is ``<s>`` (the task's init token),
``[PAD]`` is ``<pad>``, ``[SEP]`` is ``</s>`` (fairseq-preprocess appends it to every sentence),
``[UNK]`` is ``<unk>`` and ``[MASK]`` is ``<mask>``. Every other WordPiece token keeps its
``vocab.txt`` order in ``dict.txt``, written as the token itself, so encoded text stays readable.

This one mapping is used by the checkpoint converter (to reorder the embedding rows) and by the
preprocessing (to write the ``dict.txt`` that ``fairseq-preprocess --srcdict`` reads).
"""
from pathlib import Path
from typing import Dict, List, Optional

from leebert_plugin.errors import UsageError

# WordPiece special -> the fairseq symbol whose slot it takes, in fairseq's order
FAIRSEQ_SPECIALS: Dict[str, str] = {"[CLS]": "<s>", "[PAD]": "<pad>", "[SEP]": "</s>", "[UNK]": "<unk>"}
MASK = "[MASK]"


def load_vocab(path: Path, source: Optional[Path] = None) -> List[str]:
    """``vocab.txt`` -> tokens in id order (one per line), checked for the specials BERT needs.
    ``source``: the file to name in messages when ``path`` is a copy of it (the converter's)."""
    path = Path(path)
    shown = Path(source) if source is not None else path
    if not path.is_file():
        raise UsageError(f"WordPiece vocabulary {path} does not exist",
                         "pass the vocab.txt that came with the BERT checkpoint")
    tokens = path.read_text(encoding="utf-8").splitlines()
    missing = [t for t in (*FAIRSEQ_SPECIALS, MASK) if t not in tokens]
    if missing:
        raise UsageError(f"{shown} lacks the WordPiece special tokens {missing}",
                         "use a BERT vocab.txt (one token per line, with [PAD] [UNK] [CLS] [SEP] [MASK])")
    seen: Dict[str, int] = {}
    for line, token in enumerate(tokens, start=1):
        if not token or any(c.isspace() for c in token):
            raise UsageError(f"{shown}:{line} is {'empty' if not token else f'the token {token!r}, with whitespace'}",
                             "use the vocab.txt of a BERT checkpoint unchanged (one token per line)")
        if token in seen:
            raise UsageError(f"{shown}:{line} repeats the token {token!r} of line {seen[token]}",
                             "use the vocab.txt of a BERT checkpoint unchanged (every token once)")
        seen[token] = line
    return tokens


def fairseq_order(vocab: List[str]) -> List[int]:
    """WordPiece id of every fairseq dictionary index, ``<mask>`` (the last index) included."""
    index = {t: i for i, t in enumerate(vocab)}
    head = [index[t] for t in FAIRSEQ_SPECIALS]
    skip = set(head) | {index[MASK]}
    return head + [i for i in range(len(vocab)) if i not in skip] + [index[MASK]]


def dict_symbols(vocab: List[str]) -> List[str]:
    """The symbols of ``dict.txt``: every WordPiece token but the five specials, in vocab order."""
    return [vocab[i] for i in fairseq_order(vocab)[len(FAIRSEQ_SPECIALS):-1]]


def write_dict(vocab: List[str], path: Path) -> None:
    """Write fairseq's ``dict.txt`` (``symbol count`` per line) for a WordPiece vocabulary."""
    Path(path).write_text("".join(f"{s} 1\n" for s in dict_symbols(vocab)), encoding="utf-8")
