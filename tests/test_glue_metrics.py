"""GLUE metrics from summable statistics equal scikit-learn's and scipy's on the same predictions."""
import numpy as np
import pytest
import torch
from scipy.stats import pearsonr
from sklearn.metrics import f1_score, matthews_corrcoef

from leebert_plugin.exits import glue_metrics as gm
from test_train_validate import validate


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
