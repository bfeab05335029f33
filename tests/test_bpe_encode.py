"""python -m leebert_plugin.data.bpe_encode: any fairseq bpe over text files, in parallel processes."""
import pytest

from glue_fixtures import VOCAB
from leebert_plugin.data import bpe_encode
from leebert_plugin.errors import UsageError


@pytest.fixture
def vocab(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return path


def test_multiprocessing_encoder_equals_one_process(vocab, tmp_path):
    lines = [f"The {i} movies was unbelievable, zorb{i}!" for i in range(1500)] + ["", "  a  "]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    for workers in (1, 2):
        bpe_encode.main(["--bpe", "wordpiece", "--wordpiece-vocab", str(vocab), "--inputs", str(tmp_path / "in.txt"),
                         "--outputs", str(tmp_path / f"out{workers}.txt"), "--workers", str(workers)])
    one, two = ((tmp_path / f"out{w}.txt").read_text().split("\n") for w in (1, 2))
    assert one == two and len(one) == len(lines) + 1
    assert one[7] == "the [UNK] movie ##s was un ##believ ##able , [UNK] !" and one[-3:] == ["", "a", ""]


def test_bpe_options_come_from_the_bpe_and_files_are_checked(vocab, tmp_path):
    (tmp_path / "in.txt").write_text("The movie\n")
    argv = ["--bpe", "wordpiece", "--wordpiece-vocab", str(vocab), "--inputs", str(tmp_path / "in.txt"),
            "--outputs", str(tmp_path / "out.txt"), "--wordpiece-lowercase", "false"]
    bpe_encode.main(argv)
    assert (tmp_path / "out.txt").read_text() == "[UNK] movie\n"  # cased: "The" is not in the vocabulary
    with pytest.raises(UsageError, match=r"--gpt2-encoder-json .*nope.json is not a file"):
        bpe_encode.main(["--bpe", "gpt2", "--gpt2-encoder-json", str(tmp_path / "nope.json"), "--gpt2-vocab-bpe",
                         str(vocab), "--inputs", str(tmp_path / "in.txt"), "--outputs", str(tmp_path / "o.txt")])
