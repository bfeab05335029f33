"""The WordPiece vocab.txt -> fairseq Dictionary mapping shared by the converter and preprocessing."""
import pytest
from fairseq.data import Dictionary

from leebert_plugin.data.wordpiece_vocab import dict_symbols, fairseq_order, load_vocab, write_dict
from leebert_plugin.errors import UsageError
from leebert_plugin.tasks.early_exit_sentence_prediction import EarlyExitSentencePredictionTask

VOCAB = ["[PAD]", "[unused0]", "the", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "movie", "##s", "!"]


def test_task_dictionary_index_i_is_wordpiece_id_fairseq_order_i(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    vocab = load_vocab(tmp_path / "vocab.txt")
    write_dict(vocab, tmp_path / "dict.txt")
    d = EarlyExitSentencePredictionTask.load_dictionary(str(tmp_path / "dict.txt"))  # adds <mask>
    order = fairseq_order(vocab)
    assert len(d) == len(vocab) == len(order) and sorted(order) == list(range(len(vocab)))
    expect = {"<s>": "[CLS]", "<pad>": "[PAD]", "</s>": "[SEP]", "<unk>": "[UNK]", "<mask>": "[MASK]"}
    for i in range(len(d)):
        assert expect.get(d[i], d[i]) == vocab[order[i]]
    assert d.index("movie") == order.index(VOCAB.index("movie"))
    assert dict_symbols(vocab) == ["[unused0]", "the", "movie", "##s", "!"]


def test_vocab_without_bert_specials_is_refused(tmp_path):
    (tmp_path / "vocab.txt").write_text("a\nb\n[PAD]\n")
    with pytest.raises(UsageError, match=r"lacks the WordPiece special tokens.*Fix: use a BERT vocab.txt"):
        load_vocab(tmp_path / "vocab.txt")
    with pytest.raises(UsageError, match="does not exist"):
        load_vocab(tmp_path / "nope.txt")
