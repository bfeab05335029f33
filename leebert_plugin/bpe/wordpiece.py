"""The ``wordpiece`` bpe: BERT's WordPiece tokenization of a ``vocab.txt``, for fairseq pipelines.

``encode("Unbelievable!") -> "un ##believ ##able !"``: space-joined WordPiece tokens, no ``[CLS]``
or ``[SEP]`` (fairseq-preprocess appends ``</s>``, which is ``[SEP]``; the task prepends ``<s>``,
which is ``[CLS]``: ``leebert_plugin/data/wordpiece_vocab.py``). A word outside the vocabulary
becomes ``[UNK]``, which ``dict.txt`` does not list, so fairseq encodes it as ``<unk>``.

The work is done by the ``tokenizers`` library (Rust): BERT's normaliser (clean-up, spaces around
CJK characters, and for uncased vocabularies lower-casing and accent stripping), BERT's
pre-tokenizer (whitespace and punctuation) and greedy longest-match WordPiece with words over 100
characters as ``[UNK]``: the pipeline of BERT's reference ``tokenization.py``. As there, a literal
``[CLS]`` in the text is plain text (``[ cl ##s ]``), not a special token.
"""
from dataclasses import dataclass, field

from fairseq.data.encoders import register_bpe
from fairseq.dataclass import FairseqDataclass
from tokenizers import Tokenizer
from tokenizers.models import WordPiece
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer

from leebert_plugin.data.wordpiece_vocab import load_vocab

CONTINUATION = "##"


@dataclass
class WordPieceConfig(FairseqDataclass):
    wordpiece_vocab: str = field(
        default="???", metadata={"help": "BERT vocab.txt (one WordPiece token per line, in id order)"})
    wordpiece_lowercase: bool = field(
        default=True, metadata={"help": "lower-case and strip accents before splitting (uncased BERT); "
                                        "false for a cased vocabulary"})


@register_bpe("wordpiece", dataclass=WordPieceConfig)
class WordPieceBPE:
    def __init__(self, cfg: WordPieceConfig):
        vocab = load_vocab(cfg.wordpiece_vocab)
        model = WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]", max_input_chars_per_word=100,
                          continuing_subword_prefix=CONTINUATION)
        self.tokenizer = Tokenizer(model)
        self.tokenizer.normalizer = BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                   lowercase=bool(cfg.wordpiece_lowercase))
        self.tokenizer.pre_tokenizer = BertPreTokenizer()

    def encode(self, x: str) -> str:
        return " ".join(self.tokenizer.encode(x, add_special_tokens=False).tokens)

    def decode(self, x: str) -> str:
        """Join the pieces of each word (the text comes back normalised: lower-cased, punctuation spaced)."""
        return " ".join(x.split()).replace(" " + CONTINUATION, "")

    def is_beginning_of_word(self, x: str) -> bool:
        return not x.startswith(CONTINUATION)
