"""The Python API: batched predictions that agree with fairseq-validate and with batch size 1."""
import shutil

import pytest
import torch

from helpers import ROOT, validate
from leebert_plugin.data.sentencepiece_glue import read_tsv
from leebert_plugin.errors import UsageError
from leebert_plugin.hub import EarlyExitClassifier


@pytest.fixture(scope="module")
def classifier(trained, mr_bin):
    return EarlyExitClassifier.from_pretrained(str(trained / "checkpoint_best.pt"), data=str(mr_bin), device="cpu",
                                               bpe="sentencepiece",
                                               sentencepiece_model=str(mr_bin / "raw" / "spm.model"))


def dev_rows():
    return read_tsv(ROOT / "data" / "mr" / "dev.tsv")[:80]  # the fixture's dev split


def test_predictions_match_fairseq_validate(classifier, trained, mr_bin):
    rows = dev_rows()
    flags = ("--exit-policy", "normalized_entropy", "--exit-threshold", "0.98")
    preds = classifier.predict([s for s, _ in rows], exit_policy="normalized_entropy", threshold=0.98, batch_size=16)
    accuracy = 100.0 * sum(p.label == y for p, (_, y) in zip(preds, rows)) / len(rows)
    cli = validate(trained, mr_bin, *flags)
    assert accuracy == pytest.approx(cli["accuracy"], abs=0.01)
    mean_layers = sum(p.layers_run for p in preds) / len(preds)
    assert mean_layers == pytest.approx(cli["mean_layers"], abs=1e-3)
    assert all(abs(sum(p.probs) - 1) < 1e-5 and p.label in classifier.labels for p in preds)


def test_batched_predictions_equal_one_at_a_time(classifier):
    sentences = [s for s, _ in dev_rows()[:24]]
    batched = classifier.predict(sentences, exit_policy="patience", patience=1, batch_size=24)
    single = [classifier.predict([s], exit_policy="patience", patience=1)[0] for s in sentences]
    assert [p.exit_layer for p in batched] == [p.exit_layer for p in single]
    assert [p.label for p in batched] == [p.label for p in single]


def test_bad_policy_in_the_api(classifier):
    with pytest.raises(UsageError, match="unknown exit policy"):
        classifier.predict(["fine"], exit_policy="fastest")


def test_a_service_catches_a_bad_threshold_as_a_value_error_and_carries_on(classifier):
    try:
        classifier.predict(["fine"], exit_policy="max_prob", threshold=1.5)
    except ValueError as err:  # what a service writes: no SystemExit, no process exit
        assert "1.5 is out of range" in str(err) and "Fix:" in str(err)
    else:
        raise AssertionError("a threshold of 1.5 was accepted")
    assert len(classifier.predict(["fine"], exit_policy="max_prob", threshold=0.9)) == 1


def test_predict_on_a_named_device_is_predict_where_the_model_is(classifier):
    sentences = [s for s, _ in dev_rows()[:16]]
    assert classifier.device == torch.device("cpu")
    here = classifier.predict(sentences, exit_policy="patience", patience=1)
    named = classifier.predict(sentences, exit_policy="patience", patience=1, device="cpu")
    def where(preds):
        return [(p.label, p.exit_layer, p.layers_run) for p in preds]

    assert where(named) == where(here)
    assert torch.equal(torch.tensor([p.probs for p in named]), torch.tensor([p.probs for p in here]))


def test_a_missing_gpu_is_refused_in_the_api(classifier, trained, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match="finds no CUDA device"):
        classifier.predict(["fine"], device="cuda")
    assert classifier.device == torch.device("cpu")  # refused before the model moved
    with pytest.raises(UsageError, match="finds no CUDA device"):
        EarlyExitClassifier.from_pretrained(str(trained / "checkpoint_best.pt"), device="cuda")


def test_raw_text_without_a_bpe_is_refused_and_none_must_be_said(trained, mr_bin):
    """The test data has no prepare.json: without bpe=, raw words would become <unk> and still get
    a label. bpe='none' says the sentences come already encoded (here: the dictionary's own pieces)."""
    with pytest.raises(UsageError, match="no bpe was given and .* records none") as refused:
        EarlyExitClassifier.from_pretrained(str(trained / "checkpoint_best.pt"), data=str(mr_bin), device="cpu")
    assert "bpe='wordpiece'" in str(refused.value) and "none" in refused.value.fix
    clf = EarlyExitClassifier.from_pretrained(str(trained / "checkpoint_best.pt"), data=str(mr_bin), device="cpu",
                                              bpe="none")
    assert clf.bpe is None
    d = clf.task.source_dictionary
    pieces = " ".join(d[i] for i in range(d.nspecial, d.nspecial + 5))
    assert clf.encode(pieces)[1:-1].tolist() == list(range(d.nspecial, d.nspecial + 5))  # init token first, </s> last


@pytest.mark.parametrize("bpe, options, problem", [
    ("wordpeice", {}, "unknown bpe 'wordpeice'"),
    ("wordpiece", {"vocab": "v.txt"}, "vocab: not an option of bpe 'wordpiece'"),
    (None, {"sentencepiece_model": "spm.model"}, "given without a bpe"),
])
def test_a_mistyped_bpe_or_option_is_one_line_before_loading(bpe, options, problem, tmp_path):
    with pytest.raises(UsageError, match=problem):  # the checkpoint is not even read
        EarlyExitClassifier.from_pretrained(str(tmp_path / "absent.pt"), bpe=bpe, **options)


def test_another_tasks_checkpoint_is_refused_in_one_line(trained, mr_bin, tmp_path):
    """An encoder convert_hf_bert.py wrote (task masked_lm) failed deep inside fairseq, setting up
    a task whose data is not there."""
    state = torch.load(trained / "checkpoint_best.pt", map_location="cpu", weights_only=False)
    state["cfg"]["task"]["_name"] = "masked_lm"
    torch.save(state, tmp_path / "model.pt")
    with pytest.raises(UsageError, match="saved by task 'masked_lm', not by a fine-tuning run"):
        EarlyExitClassifier.from_pretrained(str(tmp_path / "model.pt"), data=str(mr_bin), bpe="none")


def test_text_read_with_the_wrong_bpe_is_said_once_with_its_share(trained, mr_bin, caplog):
    """issue 34: bpe='none' on raw English: the words are not sentencepiece pieces, so most become
    <unk>; predict still answers (a service keeps running) and logs the measured share once."""
    clf = EarlyExitClassifier.from_pretrained(str(trained / "checkpoint_best.pt"), data=str(mr_bin), device="cpu",
                                              bpe="none")
    sentences = ["an utterly charming film", "dull , lifeless and overlong"]
    tokens = torch.cat([clf.encode(s)[1:-1] for s in sentences])
    share = float((tokens == clf.task.source_dictionary.unk()).float().mean())
    assert share > 0.5
    with caplog.at_level("WARNING", logger="leebert_plugin.hub"):
        clf.predict(sentences)
        clf.predict(sentences)
    said = [r.getMessage() for r in caplog.records if "<unk>" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"{share:.0%} of the tokens"), said
    clf_right = EarlyExitClassifier.from_pretrained(str(trained / "checkpoint_best.pt"), data=str(mr_bin), device="cpu",
                                                    bpe="sentencepiece",
                                                    sentencepiece_model=str(mr_bin / "raw" / "spm.model"))
    caplog.clear()
    with caplog.at_level("WARNING", logger="leebert_plugin.hub"):
        clf_right.predict(sentences)
    assert not [r for r in caplog.records if "<unk>" in r.getMessage()]


def test_fairseq_validate_says_when_most_tokens_of_the_split_are_unk(trained, mr_bin, tmp_path):
    """The valid split re-binarised as if with the wrong bpe: every text token is <unk>."""
    from fairseq.data import Dictionary, data_utils, indexed_dataset

    from helpers import BIN, run
    from leebert_plugin.data.checks import unk_share

    data = tmp_path / "data"
    shutil.copytree(mr_bin, data)
    d = Dictionary.load(str(data / "input0" / "dict.txt"))
    prefix = str(data / "input0" / "valid")
    rows = [t.clone() for t in data_utils.load_indexed_dataset(prefix, d)]
    builder = indexed_dataset.make_builder(prefix + ".bin", impl="mmap", vocab_size=len(d))
    for i, row in enumerate(rows):
        if i % 5:  # 4 rows in 5
            body = row[:-1]
            body[body >= d.nspecial] = d.unk()
        builder.add_item(row)
    builder.finalize(prefix + ".idx")
    share = unk_share(str(data), "valid", d)
    assert 0.5 < share < 1
    proc = run([str(BIN / "fairseq-validate"), str(data), "--path", str(trained / "checkpoint_best.pt"), "--user-dir",
                "user_dir", "--task", "early_exit_sentence_prediction", "--batch-size", "16", "--cpu"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    said = [line for line in (proc.stdout + proc.stderr).splitlines() if "are <unk>" in line]
    assert len(said) == 1 and f"{share:.0%} of the tokens of {data}/input0/valid are <unk>" in said[0], said
    assert unk_share(str(mr_bin), "valid", d) < 0.1  # the real split is not warned about
