"""20 Newsgroups reading and splitting (leebert_plugin.data.newsgroups), on small written tables."""
import sys

import pytest

from helpers import ROOT, assert_one_clear_error, run

from leebert_plugin.data import newsgroups
from leebert_plugin.data.checks import label_count
from leebert_plugin.errors import UsageError


def write_tab(path, rows, header="Category\tText"):
    path.write_text(f"{header}\nd\tstring\nclass\tmeta\n" + "".join(f"{label}\t{text}\n" for label, text in rows))
    return path


def test_read_tab_folds_cuts_and_drops_empty_and_duplicate_texts(tmp_path):
    tab = write_tab(tmp_path / "t.tab", [("sci.space", "the  moon\tis far  away"), ("rec.autos", "a b c d e f"),
                                         ("sci.space", "a b c d x"), ("comp.graphics", ""), ("alt.atheism", "the moon")])
    rows = newsgroups.read_tab(tab, max_words=4)
    # "a b c d x" cuts to "a b c d", a duplicate of the second row's cut; "the moon" is new; the empty text goes
    assert rows == [("the moon is far", "sci.space"), ("a b c d", "rec.autos"), ("the moon", "alt.atheism")]


def test_read_tab_refuses_another_table(tmp_path):
    tab = write_tab(tmp_path / "t.tab", [("x", "y")], header="label\ttext")
    with pytest.raises(UsageError, match="not \\('Category', 'Text'\\)"):
        newsgroups.read_tab(tab)


def test_split_draws_dev_from_train_and_keeps_train_texts_out_of_test():
    train = [(f"train {i}", f"c{i % 3}") for i in range(50)]
    test = [(f"test {i}", f"c{i % 3}") for i in range(20)] + train[:5]  # five test texts also in train
    parts = newsgroups.split(train, test, dev_n=10, test_n=0, seed=3)
    assert len(parts["dev"]) == 10 and len(parts["train"]) == 40
    assert sorted(parts["dev"] + parts["train"]) == sorted(train)
    assert sorted(parts["test"]) == sorted(test[:20])
    assert parts == newsgroups.split(train, test, dev_n=10, test_n=0, seed=3)  # the seed fixes the draw
    assert parts["dev"] != newsgroups.split(train, test, dev_n=10, test_n=0, seed=4)["dev"]
    assert len(newsgroups.split(train, test, dev_n=10, test_n=7, seed=3)["test"]) == 7
    with pytest.raises(UsageError, match="ask for a smaller"):
        newsgroups.split(train, test, dev_n=10, test_n=21, seed=3)


def test_write_tsv_writes_what_prepare_data_reads(tmp_path):
    newsgroups.write_tsv(tmp_path, {"train": [("a text", "sci.space")]})
    assert (tmp_path / "train.tsv").read_text() == "text\tlabel\na text\tsci.space\n"


def test_label_count_reads_the_label_dictionary(tmp_path):
    (tmp_path / "input0").mkdir()
    (tmp_path / "input0" / "dict.txt").write_text("a 1\n")
    (tmp_path / "label").mkdir()
    (tmp_path / "label" / "dict.txt").write_text("".join(f"c{i} 1\n" for i in range(20)) + "madeupword0000 0\n")
    assert label_count(str(tmp_path)) == 20


@pytest.mark.parametrize("script", ["build_newsgroups.py", "build_rotten_tomatoes.py"])
def test_the_builders_refuse_to_overwrite_split_files_before_reading_anything(script, tmp_path):
    (tmp_path / "dev.tsv").write_text("text\tlabel\nmine\tpos\n")
    proc = run([sys.executable, str(ROOT / "scripts" / script), str(tmp_path)], cwd=ROOT)
    assert_one_clear_error(proc, "dev.tsv already exists", "--overwrite")
    assert (tmp_path / "dev.tsv").read_text() == "text\tlabel\nmine\tpos\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev.tsv"]
