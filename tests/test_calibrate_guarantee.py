"""The guarantee through the user's doors: ``EarlyExitClassifier.calibrate`` (with and without
labels) and ``sweep_thresholds.py --max-drop D --confidence C``, on the tiny trained model."""
import csv

import pytest

from helpers import BIN, ROOT, assert_one_clear_error, run
from leebert_plugin.data.sentencepiece_glue import read_tsv
from leebert_plugin.errors import UsageError
from leebert_plugin.exits.risk_control import upper_bound
from leebert_plugin.hub import EarlyExitClassifier


@pytest.fixture(scope="module")
def classifier(trained, mr_bin):
    return EarlyExitClassifier.from_pretrained(str(trained / "checkpoint_best.pt"), data=str(mr_bin), device="cpu",
                                               bpe="sentencepiece",
                                               sentencepiece_model=str(mr_bin / "raw" / "spm.model"))


@pytest.fixture(scope="module")
def dev():
    rows = read_tsv(ROOT / "data" / "mr" / "dev.tsv")[:80]  # the fixture's dev split
    return [s for s, _ in rows], [y for _, y in rows]


def real_losses(classifier, sentences, labels, settings):
    """Count the losses of ``settings`` by real early-exit passes, not by the calibration's replay."""
    full = [p.label for p in classifier.predict(sentences)]
    early = [p.label for p in classifier.predict(sentences, **settings)]
    if labels is None:
        return sum(a != b for a, b in zip(early, full))
    return sum(f == y and e != y for e, f, y in zip(early, full, labels))


def test_unlabelled_calibration_bounds_the_disagreement_that_real_passes_show(classifier, dev):
    sentences, _ = dev
    cert = classifier.calibrate(sentences, max_drop=0.3, confidence=0.9)
    assert cert.risk == "disagreement" and cert.chosen is not None
    assert cert.bound <= 0.3 and cert.speedup > 1.0
    settings = cert.settings()
    assert settings["exit_policy"] == "normalized_entropy" and settings["threshold"] == cert.threshold
    k = real_losses(classifier, sentences, None, settings)
    assert k == cert.chosen.losses
    assert cert.bound == pytest.approx(upper_bound(k, len(sentences), 0.9))
    assert all(r.passed for r in cert.rows[:cert.rows.index(cert.chosen) + 1])


@pytest.mark.parametrize("policy", ["max_prob", "patience", "entropy"])
def test_labelled_calibration_bounds_the_answers_lost(classifier, dev, policy):
    sentences, labels = dev
    cert = classifier.calibrate(sentences, labels, max_drop=0.3, confidence=0.9, exit_policy=policy)
    assert cert.risk == "accuracy_drop" and cert.chosen is not None  # 80 examples certify a 30% drop
    assert real_losses(classifier, sentences, labels, cert.settings()) == cert.chosen.losses
    assert cert.bound <= 0.3 and cert.speedup > 1.0


def test_the_per_exit_rule_calibrates_on_half_and_tests_on_the_other(classifier, dev):
    sentences, _ = dev
    cert = classifier.calibrate(sentences, max_drop=0.4, confidence=0.9, exit_policy="per_exit_entropy")
    assert cert.n == 40 and cert.fit_examples == 40
    assert [r.candidate.value for r in cert.rows] == sorted((r.candidate.value for r in cert.rows), reverse=True)
    assert cert.chosen is not None and cert.bound <= 0.4
    preds = classifier.predict(sentences, **cert.settings())  # deployable as it is
    assert sum(p.layers_run for p in preds) < classifier.model.num_layers * len(preds)


def test_too_few_examples_is_one_line_with_the_number_needed_and_full_depth(classifier, dev):
    sentences, _ = dev
    cert = classifier.calibrate(sentences, max_drop=0.01, confidence=0.95)
    assert cert.chosen is None and cert.threshold is None and cert.bound is None
    assert "no normalized_entropy setting passes" in cert.message and "\n" not in cert.message
    assert "299 calibration examples" in cert.message or "no number of examples" in cert.message
    assert cert.settings() == {"exit_policy": "none"}


@pytest.mark.parametrize("kwargs, words", [
    ({"max_drop": 1.0}, "max_drop=1.0 is not strictly between 0 and 1"),  # one point is 0.01, not 1
    ({"max_drop": 0}, "max_drop=0"),
    ({"confidence": 95}, "confidence=95"),
    ({"risk": "accuracy_drop"}, "needs dev_labels"),
    ({"risk": "loss"}, "unknown risk 'loss'"),
    ({"exit_policy": "none"}, "cannot be calibrated"),
    ({"exit_policy": "entropi"}, "unknown exit policy 'entropi'"),
    ({"values": [0.5, 1.5]}, "1.5 is out of range"),
    ({"values": [2.5], "exit_policy": "patience"}, "patience 2.5 is not a whole number"),
    ({"dev_labels": ["1"] * 3}, "3 dev labels for 80 dev sentences"),
    ({"dev_labels": ["positive"] * 80}, "dev label 'positive' is not one of the model's labels"),
    ({"batch_size": 0}, "batch_size=0"),
])
def test_bad_calibration_arguments_are_one_usage_error(classifier, dev, kwargs, words):
    with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)")) as e:
        classifier.calibrate(dev[0], **kwargs)
    assert "\n" not in str(e.value) and ". Fix: " in str(e.value)


@pytest.mark.parametrize("sentences, words", [("one sentence", "not a list"), ([], "no dev sentences")])
def test_bad_sentences_are_refused(classifier, sentences, words):
    with pytest.raises(UsageError, match=words):
        classifier.calibrate(sentences)


def _sweep(trained, mr_bin, out, *args):
    return [str(BIN / "python"), "scripts/sweep_thresholds.py", str(trained / "checkpoint_best.pt"), str(mr_bin),
            "--out", str(out), "--device", "cpu", *args]


def test_sweep_with_confidence_tests_in_sequence_and_reports_the_choice_on_test(trained, mr_bin, tmp_path):
    proc = run(_sweep(trained, mr_bin, tmp_path, "--policy", "max_prob", "--thresholds", "0.6", "0.99", "0.8", "0.9",
                      "--max-drop", "30", "--confidence", "0.9", "--risk", "disagreement"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "risk.tsv"), delimiter="\t"))
    assert [float(r["value"]) for r in rows] == [0.99, 0.9, 0.8, 0.6]  # max_prob: a lower bar is bolder
    passed = [int(r["passed"]) for r in rows]
    assert passed == sorted(passed, reverse=True) and passed[0] == 1  # a prefix of the sequence
    for r in rows:
        assert float(r["bound"]) == pytest.approx(upper_bound(int(r["losses"]), 80, 0.9), rel=1e-4)
        assert (float(r["bound"]) <= 0.3) >= bool(int(r["passed"]))
    best = max((r for r in rows if int(r["passed"])), key=lambda r: float(r["layer_speedup"]))
    assert f"max_prob at threshold {float(best['value']):g}: disagreement at most 30%" in proc.stdout
    assert "on test: accuracy" in proc.stdout and "drop" in proc.stdout


def test_sweep_with_confidence_and_too_little_dev_says_so_in_one_line(trained, mr_bin, tmp_path):
    proc = run(_sweep(trained, mr_bin, tmp_path, "--policy", "normalized_entropy", "--max-drop", "1",
                      "--confidence", "0.95"))
    assert proc.returncode == 1
    assert "no normalized_entropy setting passes" in proc.stdout and "calibration examples would be needed" in proc.stdout
    assert proc.stderr.strip().splitlines()[-1].endswith("no setting certified: serve at full depth")


@pytest.mark.parametrize("args, words", [
    (["--max-drop", "0", "--confidence", "0.95"], ["--max-drop=0.0 is not strictly between 0 and 100"]),
    (["--max-drop", "1", "--confidence", "1"], ["confidence=1.0"]),
    (["--target-speedup", "2", "--confidence", "0.9"], ["--confidence bounds a drop"]),
    (["--max-drop", "1"], ["no --thresholds"]),
    (["--confidence", "0.9", "--risk", "loss"], ["--risk", "invalid choice"]),
])
def test_bad_confidence_options_are_one_line(trained, mr_bin, tmp_path, args, words):
    assert_one_clear_error(run(_sweep(trained, mr_bin, tmp_path, *args)), *words)
    assert not (tmp_path / "risk.tsv").exists()
