"""GLUE metrics from summable statistics equal scikit-learn's and scipy's on the same predictions."""
import numpy as np
import pytest
import torch
from scipy.stats import pearsonr
from sklearn.metrics import f1_score, matthews_corrcoef

from helpers import ROOT, json_records, validate
from leebert_plugin.errors import UsageError
from leebert_plugin.exits import glue_metrics as gm


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_f1_and_mcc_from_confusion_counts_summed_over_batches(seed):
    g = torch.Generator().manual_seed(seed)
    preds, targets = torch.randint(0, 2, (300,), generator=g), torch.randint(0, 2, (300,), generator=g)
    for positive in (0, 1):
        totals = {k: 0 for k in gm.CONFUSION}
        for lo in range(0, 300, 64):  # as validation sums batches (and workers)
            for k, v in gm.confusion(preds[lo:lo + 64], targets[lo:lo + 64], positive).items():
                totals[k] += int(v)
        y, p = (targets == positive).numpy(), (preds == positive).numpy()
        assert gm.f1(totals) == pytest.approx(100 * f1_score(y, p))
        assert gm.mcc(totals) == pytest.approx(100 * matthews_corrcoef(y, p))


def test_pearson_from_moments():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = 0.6 * x + rng.normal(size=200)
    totals = {k: 0.0 for k in gm.MOMENTS}
    for lo in range(0, 200, 50):
        for k, v in gm.moments(torch.tensor(x[lo:lo + 50]), torch.tensor(y[lo:lo + 50])).items():
            totals[k] += v
    assert gm.pearson(totals) == pytest.approx(100 * pearsonr(x, y)[0], rel=1e-9)


def test_validation_reports_f1_and_mcc_for_every_exit(trained, mr_bin):
    out = validate(trained, mr_bin)
    for layer in range(1, 5):
        assert f"f1_L{layer}" in out and f"mcc_L{layer}" in out
    assert out["f1"] == out["f1_L4"] and out["mcc"] == out["mcc_L4"]  # no policy: the last exit's
    early = validate(trained, mr_bin, "--exit-policy", "max_prob", "--exit-threshold", "0")
    assert early["f1"] == early["f1_L1"]  # everyone leaves at the first exit


def test_validation_f1_and_mcc_are_the_whole_splits_not_a_mean_over_batches(trained, mr_bin):
    """Training's validation reduces every batch on its own (13 batches of 16 here); the F1 and MCC
    it logs must still be those of every prediction of the split, as one confusion matrix gives them."""
    from leebert_plugin.exits.evaluate import batches, load, run
    from leebert_plugin.exits.policies import build_policy
    model, task = load(trained / "checkpoint_last.pt", mr_bin)
    whole = run(model, task, batches(task, "valid", 16), build_policy("none", 2))
    last = json_records((trained / "train.stdout").read_text(), "valid")[-1]
    for name in ("f1", "mcc"):
        assert float(last[f"valid_{name}"]) == pytest.approx(whole[name], abs=0.006), name


def test_spearman_meter_over_batches_equals_scipy_on_the_whole_split():
    from fairseq.logging import metrics
    from scipy.stats import spearmanr

    from leebert_plugin.exits.rank_meter import log_spearman
    rng = np.random.default_rng(0)
    y = rng.integers(0, 6, 120).astype(float)  # ties, as in STS-B's 0..5 scores
    x = y + rng.normal(0, 2, 120)
    with metrics.aggregate(new_root=True) as agg:
        for lo in range(0, 120, 32):  # one reduce per batch, as fairseq-train's validation does
            log_spearman([{"preds": x[lo:lo + 32].tolist(), "target_values": y[lo:lo + 32].tolist()}], "preds", "spearman")
        value = agg.get_smoothed_values()["spearman"]
    assert value == pytest.approx(round(100 * spearmanr(x, y).statistic, 2))
    assert abs(value - 100 * pearsonr(x, y)[0]) > 0.01  # a rank statistic, not Pearson's


@pytest.fixture(scope="module")
def regression_trained(regression_bin, tmp_path_factory):
    """sts_b_multi_exit on the tiny model, with the bundled 0/1 labels as regression scores."""
    from conftest import hydra_train
    tmp = tmp_path_factory.mktemp("stsb")
    proc = hydra_train("sts_b_multi_exit", f"task.data={regression_bin}", f"checkpoint.save_dir={tmp}",
                       "checkpoint.restore_file=checkpoint_last.pt", "common.cpu=true", "model._name=exit_roberta_tiny",
                       "task.max_positions=256", "optimization.max_update=20", "lr_scheduler.warmup_updates=2",
                       "dataset.num_workers=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, regression_bin


def test_regression_validation_reports_pearson_and_spearman_per_exit_and_under_patience(regression_trained):
    save, data = regression_trained
    full = validate(save, data)
    for layer in range(1, 5):
        assert f"pearson_L{layer}" in full and f"spearman_L{layer}" in full
    assert full["spearman"] == full["spearman_L4"] and full["pearson"] == full["pearson_L4"]
    # a move of less than 1e9 always counts as steady: with patience 1, everyone leaves at exit 2
    early = validate(save, data, "--exit-policy", "regression_patience", "--exit-threshold", "1e9")
    assert early["exit_L2"] == 100.0 and early["speedup"] == 2.0
    assert early["spearman"] == early["spearman_L2"] and early["pearson"] == early["pearson_L2"]
    assert early["spearman"] != full["spearman"]


def test_python_api_predicts_regression_scores_under_regression_patience(regression_trained):
    from leebert_plugin.hub import EarlyExitClassifier
    save, data = regression_trained
    api = EarlyExitClassifier.from_pretrained(str(save / "checkpoint_last.pt"), data=str(data), bpe="sentencepiece",
                                              sentencepiece_model=str(data / "raw" / "spm.model"))
    sentences = ["A gem of a film.", "Dull and overlong.", "Not bad at all, if a little slow."]
    full = api.predict(sentences)
    early = api.predict(sentences, exit_policy="regression_patience", threshold=1e9)
    one = [api.predict([s], exit_policy="regression_patience", threshold=1e9)[0] for s in sentences]
    assert [p.exit_layer for p in full] == [4, 4, 4] and [p.exit_layer for p in early] == [2, 2, 2]
    assert all(p.label is None and p.probs == [] for p in full)
    assert [round(p.score, 4) for p in early] == [round(p.score, 4) for p in one]
    assert [p.score for p in early] != [p.score for p in full]
    with pytest.raises(UsageError, match="does not apply to a regression task"):
        api.predict(sentences, exit_policy="entropy", threshold=0.1)


def test_a_12_exit_leebert_regression_batch_needs_the_sts_b_gather_buffer(regression_trained):
    """Regression validation gathers every exit's predictions per batch: fairseq pickles them into
    ``common.all_gather_list_size`` bytes per worker. A 12-exit LeeBERT batch at the STS-B configs'
    batch size overflows fairseq's 16 KB default and fits the configs' value."""
    import copy
    import pickle

    import yaml
    from fairseq import checkpoint_utils
    from omegaconf import OmegaConf

    from leebert_plugin.exits.evaluate import batches, load
    config = yaml.safe_load((ROOT / "configs" / "sts_b_leebert.yaml").read_text())
    save, data = regression_trained
    _, task = load(save / "checkpoint_last.pt", data)
    margs = copy.copy(checkpoint_utils.load_checkpoint_to_cpu(str(save / "checkpoint_last.pt"))["cfg"].model)
    margs.encoder_layers = 12  # an exit after every layer
    model = task.build_model(margs).eval()
    criterion = task.build_criterion(OmegaConf.create(config["criterion"]))
    sample = batches(task, "valid", config["dataset"]["batch_size"])[0]
    _, _, log = task.valid_step(sample, model, criterion)
    size = len(pickle.dumps([log]))
    assert len(model.exit_layers) == 12 and sum(k.startswith("preds_L") for k in log) == 12
    assert 16384 < size < config["common"]["all_gather_list_size"] - 1024, size


def test_regression_validation_logs_are_gathered_and_training_logs_summed():
    """What fairseq's trainer asks (through the task, of the criterion it is given): Spearman's
    prediction lists cannot be summed across workers, so regression validation is gathered."""
    from fairseq.tasks import FairseqTask
    from omegaconf import OmegaConf

    from leebert_plugin.criterions.multi_exit import MultiExitConfig, MultiExitCriterion

    regression = MultiExitCriterion(OmegaConf.structured(MultiExitConfig(regression_target=True)), None)
    classification = MultiExitCriterion(OmegaConf.structured(MultiExitConfig(regression_target=False)), None)
    regression.train()
    assert FairseqTask.logging_outputs_can_be_summed(regression) is True
    regression.eval()
    assert FairseqTask.logging_outputs_can_be_summed(regression) is False
    classification.eval()
    assert FairseqTask.logging_outputs_can_be_summed(classification) is True
