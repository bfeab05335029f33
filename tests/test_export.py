"""python -m leebert_plugin.export: a self-contained, weights-only model folder that the hub loads alone."""
import json
import shutil
import sys

import pytest
import torch

from helpers import ROOT, assert_one_clear_error, run
from leebert_plugin.errors import UsageError
from leebert_plugin.export import export, main as export_main
from leebert_plugin.hub import EarlyExitClassifier

SENTENCES = ["A gem of a film.", "Dull and overlong.", "It is neither good nor bad.", "The cast is wonderful, the plot is not."]


@pytest.fixture(scope="module")
def exported(trained, mr_bin, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "model"
    export_main([str(trained / "checkpoint_best.pt"), str(mr_bin), str(out), "--bpe", "sentencepiece",
                 "--sentencepiece-model", str(mr_bin / "raw" / "spm.model")])
    return out


def test_the_folder_alone_predicts_as_the_checkpoint_and_data_do(exported, trained, mr_bin, tmp_path):
    moved = tmp_path / "elsewhere"  # no data folder, no original path: the folder moved away from them
    shutil.copytree(exported, moved)
    reference = EarlyExitClassifier.from_pretrained(str(trained / "checkpoint_best.pt"), data=str(mr_bin), device="cpu",
                                                    bpe="sentencepiece", sentencepiece_model=str(mr_bin / "raw" / "spm.model"))
    served = EarlyExitClassifier.from_pretrained(str(moved), device="cpu")
    assert served.labels == reference.labels
    for policy, threshold in (("none", None), ("normalized_entropy", 0.8)):
        a = reference.predict(SENTENCES, exit_policy=policy, threshold=threshold)
        b = served.predict(SENTENCES, exit_policy=policy, threshold=threshold)
        assert [(p.label, p.exit_layer, p.layers_run) for p in a] == [(p.label, p.exit_layer, p.layers_run) for p in b]
        assert torch.allclose(torch.tensor([p.probs for p in a]), torch.tensor([p.probs for p in b]), atol=1e-6)
    text = (moved / "export.json").read_text()
    assert str(mr_bin) not in text and str(trained) not in text and str(exported) not in text


def test_the_weights_are_tensors_only(exported):
    state = torch.load(exported / "model.pt", weights_only=True)
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    assert sorted(p.name for p in exported.iterdir()) == ["bpe", "export.json", "input0", "label", "model.pt"]
    assert json.loads((exported / "export.json").read_text())["bpe"]["options"]["sentencepiece_model"] == "bpe/spm.model"


def test_an_existing_folder_is_refused_in_one_line_and_kept(exported, trained, mr_bin):
    before = (exported / "export.json").read_bytes()
    proc = run([sys.executable, "-m", "leebert_plugin.export", str(trained / "checkpoint_best.pt"), str(mr_bin),
                str(exported)], cwd=ROOT)
    assert_one_clear_error(proc, "already exists and is not empty", "--overwrite")
    assert (exported / "export.json").read_bytes() == before


def test_overwrite_replaces_an_earlier_export_whole(exported, trained, mr_bin, tmp_path):
    earlier = tmp_path / "model"
    shutil.copytree(exported, earlier)
    (earlier / "stale.txt").write_text("from the earlier export")
    export_main([str(trained / "checkpoint_best.pt"), str(mr_bin), str(earlier), "--overwrite", "--bpe", "sentencepiece",
                 "--sentencepiece-model", str(mr_bin / "raw" / "spm.model")])
    assert not (earlier / "stale.txt").exists()
    assert sorted(p.name for p in earlier.iterdir()) == sorted(p.name for p in exported.iterdir())
    assert not list(tmp_path.glob(".model.staging-*"))


def test_overwrite_replaces_an_earlier_export_only_and_a_file_is_refused(tmp_path):
    """Checked before the checkpoint is read: a mistyped OUT that names a run's folder is not
    deleted by --overwrite, and a file is not taken for a folder."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint_best.pt").write_bytes(b"weeks of training")
    args = [str(tmp_path / "absent.pt"), str(tmp_path / "absent-data")]
    with pytest.raises(UsageError, match="not an earlier export") as refused:
        export_main([*args, str(run_dir), "--overwrite"])
    assert "remove that folder yourself" in str(refused.value)
    assert (run_dir / "checkpoint_best.pt").read_bytes() == b"weeks of training"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        export_main([*args, str(a_file), "--overwrite"])
    assert a_file.read_text() == "mine"


def test_raw_text_without_a_bpe_is_refused_and_bpe_none_ships_none(trained, mr_bin, tmp_path):
    """The test data has no prepare.json: an export without --bpe would serve raw words as <unk>."""
    ckpt, out = str(trained / "checkpoint_best.pt"), tmp_path / "out"
    with pytest.raises(UsageError, match="no bpe was given and .* records none"):
        export_main([ckpt, str(mr_bin), str(out)])
    assert not out.exists()
    with pytest.raises(UsageError, match="unknown bpe 'wordpeice'"):  # the Python API checks the name too
        export(ckpt, mr_bin, out, bpe="wordpeice")
    export_main([ckpt, str(mr_bin), str(out), "--bpe", "none"])
    assert json.loads((out / "export.json").read_text())["bpe"] is None
    assert EarlyExitClassifier.from_pretrained(str(out), device="cpu").bpe is None


def test_data_with_an_export_folder_is_refused(exported, mr_bin):
    with pytest.raises(ValueError, match="export folder"):
        EarlyExitClassifier.from_pretrained(str(exported), data=str(mr_bin))


def test_a_missing_bpe_file_is_refused_before_anything_is_written(trained, mr_bin, tmp_path):
    with pytest.raises(UsageError, match="nope.model"):
        export_main([str(trained / "checkpoint_best.pt"), str(mr_bin), str(tmp_path / "out"), "--bpe", "sentencepiece",
                     "--sentencepiece-model", str(tmp_path / "nope.model")])
    assert not (tmp_path / "out").exists()


def test_serving_figures_time_both_modes_on_the_same_sentences(exported):
    from leebert_plugin.benchmark.serving import measure, table

    clf = EarlyExitClassifier.from_pretrained(str(exported), device="cpu")
    figures = measure(clf, SENTENCES * 4, 4, "max_prob", 0.0, rounds=2)  # max_prob >= 0: everyone leaves at exit 1
    assert figures.mean_layers == 1.0 and set(figures.ms_per_sentence) == {"full depth", "early exit"}
    assert all(ms > 0 for ms in figures.ms_per_sentence.values())
    assert "| 4 |" in table([figures], clf.model.num_layers) and "1.00 of 4" in table([figures], clf.model.num_layers)


def test_serving_reads_a_tsvs_first_column_without_header_or_blank_lines(tmp_path):
    from leebert_plugin.benchmark.serving import read_sentences

    text = tmp_path / "test.tsv"
    text.write_text("sentence\tlabel\nA gem.\t1\n\nDull.\t0\nFine.\t1\n")
    assert read_sentences(text, header=True, samples=2) == ["A gem.", "Dull."]
    assert read_sentences(text, header=False, samples=9)[0] == "sentence"
    with pytest.raises(UsageError, match="absent.txt does not exist"):
        read_sentences(tmp_path / "absent.txt", header=False, samples=1)
