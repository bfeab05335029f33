"""python -m leebert_plugin.prepare_data: a user's own file -> fairseq binaries -> training, validation, predict."""
import json
import random
import sys
from pathlib import Path
from typing import Dict

import pytest
import torch
from fairseq.data import Dictionary, data_utils

from helpers import BIN, ROOT, assert_one_clear_error, digest, run, validate
from leebert_plugin.data.prepare import Examples, detect_kind, label_order, split_off
from leebert_plugin.data.tables import read_table
from leebert_plugin.errors import UsageError
from leebert_plugin.export import export
from leebert_plugin.hub import EarlyExitClassifier
from leebert_plugin.prepare_data import main as prepare_data

WORDS = {"pos": ["good", "great", "fine"], "neg": ["bad", "awful", "poor"], "neutral": ["long", "short", "plain"]}
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "movie", "film", "was", "is", ",", "!", "."] + \
    sum(WORDS.values(), [])


def review(rng: random.Random, label: str) -> str:
    return f"the {rng.choice(['movie', 'film'])} was {rng.choice(WORDS[label])}{rng.choice(['.', '!', ''])}"


def write_reviews(path: Path, n: int, seed: int = 0, label_column: str = "sentiment") -> None:
    rng = random.Random(seed)
    rows = [(review(rng, y), y) for y in (rng.choice(sorted(WORDS)) for _ in range(n))]
    path.write_text(f"text\t{label_column}\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("own-data")
    (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    write_reviews(root / "reviews.tsv", 240)
    return {"root": root, "vocab": root / "vocab.txt", "train": root / "reviews.tsv"}


def argv(files, out: Path, *extra: str):
    return ["--train", str(files["train"]), "--out", str(out), "--label-column", "sentiment",
            "--bpe", "wordpiece", "--wordpiece-vocab", str(files["vocab"]), *extra]


@pytest.fixture(scope="module")
def prepared(files) -> Path:
    out = files["root"] / "bin"
    prepare_data(argv(files, out))
    return out


def test_layout_label_order_and_stratified_split(prepared, files):
    settings = json.loads((prepared / "prepare.json").read_text())
    assert settings["labels"] == ["neg", "neutral", "pos"] and settings["num_classes"] == 3
    counts = settings["counts"]
    assert settings["task_kind"] == "classification" and sum(counts.values()) == 240 and counts["test"] > 0
    label_dict = Dictionary.load(str(prepared / "label" / "dict.txt"))
    assert [label_dict[i + label_dict.nspecial] for i in range(3)] == ["neg", "neutral", "pos"]  # class i = line i
    rows = files["train"].read_text().splitlines()[1:]
    by_text = {}
    for row in rows:
        text, label = row.split("\t")
        by_text.setdefault(text, set()).add(label)
    raw = prepared / "raw"
    for split in ("train", "valid", "test"):  # each split's rows carry their own labels, in class order
        texts = (raw / f"{split}.raw.input0").read_text().splitlines()
        labels = data_utils.load_indexed_dataset(str(prepared / "label" / split), label_dict)
        assert len(texts) == len(labels) == settings["counts"][split]
        for text, label in zip(texts, labels):
            assert label_dict[int(label[0])] in by_text[text]
    per_class = {y: sum(r.endswith("\t" + y) for r in rows) for y in WORDS}
    valid = (raw / "valid.label").read_text().split()
    for y, n in per_class.items():  # stratified: each class keeps its share (0.1 of it, rounded)
        assert valid.count(y) == round(0.1 * n)


def test_the_same_seed_draws_the_same_rows_another_seed_others(files, tmp_path, prepared):
    prepare_data(argv(files, tmp_path / "again"))
    prepare_data(argv(files, tmp_path / "seed2", "--seed", "2"))
    same = (tmp_path / "again" / "raw" / "valid.raw.input0").read_text()
    assert same == (prepared / "raw" / "valid.raw.input0").read_text()
    assert (tmp_path / "seed2" / "raw" / "valid.raw.input0").read_text() != same


def test_from_file_to_validation_with_exits_to_predict_with_label_names(prepared, files, tmp_path):
    """The README's path for one's own data: prepare, train (a tiny model from scratch, here),
    fairseq-validate with an exit policy, and predict returning the file's label names."""
    proc = run([str(BIN / "fairseq-train"), str(prepared), "--user-dir", "user_dir", "--task",
                "early_exit_sentence_prediction", "--criterion", "multi_exit", "--arch", "exit_roberta_tiny",
                "--num-classes", "3", "--init-token", "0", "--max-positions", "64", "--optimizer", "adam",
                "--lr", "2e-3", "--batch-size", "16", "--max-epoch", "8", "--cpu", "--num-workers", "0",
                "--save-dir", str(tmp_path), "--no-epoch-checkpoints", "--seed", "1", "--log-format", "json",
                "--best-checkpoint-metric", "accuracy", "--maximize-best-checkpoint-metric"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = validate(tmp_path, prepared, "--exit-policy", "normalized_entropy", "--exit-threshold", "0.3",
                       subset="test")
    assert figures["accuracy"] >= 90 and figures["speedup"] > 1.0, figures  # easy sentences leave early
    clf = EarlyExitClassifier.from_pretrained(str(tmp_path / "checkpoint_best.pt"), data=str(prepared))  # prepare.json's bpe
    assert clf.labels == ["neg", "neutral", "pos"] and clf.bpe is not None
    rng = random.Random(7)
    truth = [rng.choice(sorted(WORDS)) for _ in range(40)]
    sentences = [review(rng, y) for y in truth]
    preds = clf.predict((s for s in sentences), exit_policy="normalized_entropy", threshold=0.3,
                        batch_size=8)  # a generator, streamed in batches
    assert len(preds) == 40 and sum(p.label == y for p, y in zip(preds, truth)) >= 36
    with pytest.raises(ValueError, match="out of range"):  # a service catches a bad threshold
        clf.predict(["the movie was good"], exit_policy="max_prob", threshold=1.5)
    export(tmp_path / "checkpoint_best.pt", prepared, tmp_path / "served")  # the bpe prepare.json records
    served = EarlyExitClassifier.from_pretrained(str(tmp_path / "served"))  # the bpe prepare_data recorded, shipped
    again = served.predict(sentences, exit_policy="normalized_entropy", threshold=0.3)
    assert [(p.label, p.exit_layer) for p in again] == [(p.label, p.exit_layer) for p in preds]


def test_detect_kind_and_label_order():
    assert detect_kind(["0", "1", "2"]) == "classification" and detect_kind(["pos", "1.5"]) == "classification"
    assert detect_kind(["0.5", "3", "4.25"]) == "regression"
    assert label_order(["10", "2", "1", "2"]) == ["1", "2", "10"]  # integers by value
    assert label_order(["b", "a", "c"]) == ["a", "b", "c"]
    assert label_order(["b", "a"], ["b", "a"]) == ["b", "a"]


def test_split_off_keeps_a_class_of_one_in_train():
    ex = Examples(Path("f.tsv"), [[f"s{i}" for i in range(21)]], ["a"] * 20 + ["b"], list(range(2, 23)))
    rest, drawn = split_off(ex, 0.25, 1, True, "valid")
    assert drawn.labels == ["a"] * 5 and "b" in rest.labels and len(rest) == 16
    assert drawn.lines == sorted(drawn.lines)  # file order kept


@pytest.mark.parametrize("name, content, expected", [
    ("t.tsv", 'text\tlabel\n"a ""quoted"" word"\tx\nplain "inner" quote\ty\n',
     [("a \"quoted\" word", "x"), ('plain "inner" quote', "y")]),
    ("t.csv", 'text,label\n"one, two",x\n"two\nlines",y\n', [("one, two", "x"), ("two\nlines", "y")]),
    ("t.jsonl", '{"text": "hi", "label": 1}\n\n{"text": "yo", "label": "b"}\n', [("hi", "1"), ("yo", "b")]),
])
def test_formats(tmp_path, name, content, expected):
    (tmp_path / name).write_text(content)
    table = read_table(tmp_path / name)
    assert [(r.fields["text"], r.fields["label"]) for r in table.records] == expected
    assert table.records[-1].line == 3


# issue 34: real-world files (name -> (file, its bytes, options, the rows read, what the dialect says))
REAL_WORLD = {
    "a tweet TSV whose text opens with a quote": (
        "t.tsv", 'text\tlabel\n"I believe..." -Tanya H.\tnegative\n"Best day" ever\tpositive\n', {},
        [('"I believe..." -Tanya H.', "negative"), ('"Best day" ever', "positive")],
        "tab-separated, quotes as text (detected: line 2 cannot be read with CSV quoting"),
    "the tweets with --quoting none": (
        "t.tsv", 'text\tlabel\n"I believe..." -Tanya H.\tnegative\n"a ""b"""\tpositive\n', {"quoting": "none"},
        [('"I believe..." -Tanya H.', "negative"), ('"a ""b"""', "positive")], "tab-separated, quotes as text"),
    "a semicolon CSV (a European spreadsheet)": (
        "t.csv", 'text;label\n"one; two";x\nplain, with a comma;y\n', {},
        [("one; two", "x"), ("plain, with a comma", "y")],
        "semicolon-separated, CSV quoting (separator detected from the header: semicolon)"),
    "a pipe file named with --delimiter": (
        "t.csv", "text|label\na, b|x\nc|y\n", {"delimiter": "|"}, [("a, b", "x"), ("c", "y")], "pipe-separated"),
    "Windows line endings, a BOM, trailing spaces in labels": (
        "t.tsv", "\ufefftext\tlabel \r\nhello there\tpos \r\nbye\t neg\r\n", {},
        [("hello there", "pos "), ("bye", " neg")], "tab-separated, CSV quoting"),
    "a quoted CSV field with Windows line endings inside": (
        "t.csv", 'text,label\r\n"two\r\nlines",x\r\nthree,y\r\n', {}, [("two\r\nlines", "x"), ("three", "y")],
        "comma-separated, CSV quoting"),
}


@pytest.mark.parametrize("name", list(REAL_WORLD))
def test_real_world_files(tmp_path, name):
    file, content, options, rows, dialect = REAL_WORLD[name]
    (tmp_path / file).write_bytes(content.encode("utf-8"))
    table = read_table(tmp_path / file, **options)
    assert [(r.fields["text"], r.fields["label"]) for r in table.records] == rows
    assert table.dialect.startswith(dialect), table.dialect


def test_real_world_file_prepares_with_clean_labels_and_says_how_it_was_read(files, tmp_path, capsys):
    """A Windows-saved tweet TSV with a BOM, quoted tweet openings and trailing spaces in the labels."""
    rng = random.Random(5)
    rows = [(f'"{review(rng, y)}" -Tanya H.' if i % 3 == 0 else review(rng, y), y + " " * (i % 2))
            for i, y in enumerate(rng.choice(sorted(WORDS)) for _ in range(60))]
    (tmp_path / "tweets.tsv").write_bytes(("\ufefftext\tsentiment\r\n" + "".join(f"{t}\t{y}\r\n" for t, y in rows))
                                          .encode("utf-8"))
    out = tmp_path / "bin"
    prepare_data(["--train", str(tmp_path / "tweets.tsv"), "--out", str(out), "--label-column", "sentiment",
                  "--bpe", "wordpiece", "--wordpiece-vocab", str(files["vocab"])])
    said = capsys.readouterr().out
    assert f"read {tmp_path / 'tweets.tsv'}: tab-separated, quotes as text (detected: line 2" in said, said
    settings = json.loads((out / "prepare.json").read_text())
    assert settings["labels"] == ["neg", "neutral", "pos"]  # no "pos " class
    assert "quotes as text" in settings["read_as"][str(tmp_path / "tweets.tsv")]
    texts = sum(((out / "raw" / f"{s}.raw.input0").read_text().splitlines() for s in ("train", "valid", "test")), [])
    assert sorted(texts) == sorted(t for t, _ in rows)  # the quotes kept as text


GOOD = "text\tsentiment\n" + "the movie was good\tpos\nthe film was bad\tneg\na film\tneutral\n" * 4  # lines 2-13
BAD_INPUT = {  # name -> (files to write: name -> text or bytes, extra argv, words of the one line)
    "a missing column": ({}, ["--text-columns", "review"], ["reviews.tsv:1 has no column 'review'",
                                                              "its columns: ['text', 'sentiment']", "--text-columns"]),
    "a missing label column": ({}, ["--label-column", "stars"], ["has no column 'stars'", "--label-column"]),
    "an empty text": ({"train.tsv": GOOD + "\tpos\n"}, [], ["train.tsv:14 has an empty 'text'"]),
    "an empty label": ({"train.tsv": GOOD + "the film was good\t \n"}, [], ["train.tsv:14 has an empty 'sentiment'"]),
    "a dev label train never had": ({"dev.tsv": "text\tsentiment\nthe movie\tpos\nthe film\tmixed\n"},
                                    ["--valid", "{dev_tsv}"], ["dev.tsv:3 has the label 'mixed'", "never has",
                                                               "classes: neg, neutral, pos"]),
    "a test label train never had": ({"test.jsonl": '{"text": "a", "sentiment": "pos"}\n{"text": "b", "sentiment": 3}\n'},
                                     ["--test", "{test_jsonl}"], ["test.jsonl:2 has the label '3'"]),
    "a non-numeric regression label": ({"train.tsv": "text\tsentiment\na\t0.5\nb\t1.25\nc\thigh\n"},
                                       ["--task-kind", "regression"], ["train.tsv:4 has the sentiment 'high', not a number"]),
    "undecodable bytes": ({"train.tsv": GOOD.encode() + "caf\xe9\tpos\n".encode("cp1252")}, [],
                          ["train.tsv:14 cannot be decoded as utf-8", "byte 0xe9", "--encoding"]),
    "an empty file": ({"train.tsv": ""}, [], ["train.tsv is empty"]),
    "a header but no rows": ({"train.tsv": "text\tsentiment\n"}, [], ["has a header but no rows"]),
    "a file with no header": ({"train.tsv": GOOD.split("\n", 1)[1]}, [],
                              ["train.tsv:1 has no header naming the columns ['text', 'sentiment']",
                               "add a header line"]),
    "a row with another number of fields": ({"train.tsv": GOOD + "a\tb\tpos\n"}, [],
                                            ["train.tsv:14 has 3 tab-separated fields, the header 2"]),
    "an unterminated quote in a CSV read with --quoting csv": (
        {"train.csv": 'text,sentiment\n"open quote,pos\n'}, ["--train", "{train_csv}", "--quoting", "csv"],
        ["train.csv:", "is not valid CSV with CSV quoting", "close the quote", "--quoting none"]),
    "a row that fits neither quoting": ({"train.tsv": GOOD + '"a\tb"x\tpos\n'}, [],
                                        ["train.tsv:14", "is not valid TSV with CSV quoting", "--quoting none"]),
    "quotes as text splitting a quoted tab": ({"train.tsv": GOOD + '"a\tb"\tpos\n'}, ["--quoting", "none"],
                                              ["train.tsv:14 has 3 tab-separated fields", "--quoting csv"]),
    "a delimiter of two characters": ({}, ["--delimiter", "::"], ["--delimiter", "'::' is not tab, comma"]),
    "a JSON Lines row that is not an object": ({"train.jsonl": '{"text": "a", "sentiment": "x"}\n["b", "y"]\n'},
                                               ["--train", "{train_jsonl}"], ["train.jsonl:2 is a JSON list"]),
    "a JSON Lines row without the label": ({"train.jsonl": '{"text": "a", "sentiment": "x"}\n{"text": "b"}\n'},
                                           ["--train", "{train_jsonl}"], ["train.jsonl:2 has no 'sentiment' key"]),
    "an unknown extension": ({"train.txt": GOOD}, ["--train", "{train_txt}"], ["from the extension '.txt'", ".tsv"]),
    "a label of two words": ({"train.tsv": GOOD.replace("\tneutral", "\tso so")}, [],
                             ["train.tsv:4: the label 'so so' is more than one word", "so_so"]),
    "a label that is a fairseq symbol": ({"train.tsv": GOOD.replace("\tneutral", "\t<unk>")}, [],
                                         ["train.tsv:4: the label '<unk>' is one of fairseq's special symbols"]),
    "--labels without a training label": ({}, ["--labels", "neg,pos"], ["reviews.tsv:", "'neutral', which --labels never has"]),
    "--labels naming a class twice": ({}, ["--labels", "neg,pos,neg,neutral"], ["--labels names 'neg' twice"]),
    "three text columns": ({}, ["--text-columns", "a", "b", "c"], ["--text-columns names 3 columns"]),
    "fractions leaving nothing to train on": ({}, ["--valid-fraction", "0.6", "--test-fraction", "0.4"],
                                              ["add up to 1", "leave at least some rows"]),
    "no validation set": ({}, ["--valid-fraction", "0"], ["no validation set", "--valid FILE"]),
    "too few rows to draw a test set": ({"train.tsv": "text\tsentiment\na\tx\nb\ty\n"}, [],
                                        ["has 2 rows: too few to draw a valid set"]),
    "a NaN fraction": ({}, ["--valid-fraction", "nan"], ["--valid-fraction", "'nan' is not a finite number"]),
    "a missing vocabulary file": ({}, ["--wordpiece-vocab", "{root}/none.txt"], ["--wordpiece-vocab", "is not a file"]),
    "gpt2 without --dict": ({}, ["--bpe", "gpt2", "--gpt2-encoder-json", "{vocab}", "--gpt2-vocab-bpe", "{vocab}"],
                            ["--bpe gpt2 needs --dict"]),
}


@pytest.mark.parametrize("name", list(BAD_INPUT))
def test_bad_input_is_one_line_and_overwrites_nothing(name, files, prepared, tmp_path):
    """Each against the folder of an earlier run, with --overwrite: the checks come before any write."""
    written, extra, words = BAD_INPUT[name]
    fill = {"root": files["root"], "vocab": files["vocab"]}
    for file, content in written.items():
        (tmp_path / file).write_bytes(content if isinstance(content, bytes) else content.encode())
        fill[file.replace(".", "_")] = tmp_path / file
    base = argv(files, prepared, "--overwrite")
    if "train.tsv" in written:
        base[1] = str(tmp_path / "train.tsv")
    if "--bpe" in extra:
        base = base[:base.index("--bpe")] + ["--overwrite"]
    before = digest(prepared, recursive=True)
    with pytest.raises(UsageError) as err:
        prepare_data(base + [a.format(**fill) for a in extra])
    message = str(err.value)
    assert message.startswith("leebert-plugin: error:") and "Fix:" in message and "\n" not in message
    for w in words:
        assert w in message, message
    assert digest(prepared, recursive=True) == before


def test_an_earlier_layout_is_refused_and_replaced_only_with_overwrite(files, prepared, tmp_path):
    proc = run([sys.executable, "-m", "leebert_plugin.prepare_data", *argv(files, prepared)], cwd=ROOT)
    assert_one_clear_error(proc, "already holds preprocessed data", "--overwrite")
    out = tmp_path / "copy"
    prepare_data(argv(files, out))
    old = digest(out, recursive=True)
    write_reviews(tmp_path / "other.tsv", 120, seed=3)
    again = argv(files, out, "--overwrite")
    again[1] = str(tmp_path / "other.tsv")
    prepare_data(again)
    assert digest(out, recursive=True) != old and not list(out.glob(".staging-*"))
    assert json.loads((out / "prepare.json").read_text())["counts"]["train"] == 96


def test_pairs_and_regression(files, tmp_path):
    rows = ["a,b,score"] + [f"the movie,was good,{i / 7:.3f}" for i in range(30)]
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "pairs-bin"
    prepare_data(["--train", str(tmp_path / "pairs.csv"), "--out", str(out), "--text-columns", "a", "b",
                  "--label-column", "score", "--bpe", "wordpiece", "--wordpiece-vocab", str(files["vocab"])])
    settings = json.loads((out / "prepare.json").read_text())
    assert settings["task_kind"] == "regression" and settings["num_classes"] == 1 and settings["pairs"]
    assert (out / "input1" / "train.bin").is_file() and (out / "label" / "train.label").is_file()
    values = [float(v) for v in (out / "label" / "train.label").read_text().split()]
    assert len(values) == settings["counts"]["train"] == 24 and all(0 <= v <= 4.143 for v in values)
