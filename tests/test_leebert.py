"""LeeBERT: distillation terms, learned weights, the finite-difference hypergradient, CLO steps."""
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from helpers import HEAD, bilevel_training, leebert, random_batch, sample_for, tiny_model, unrolled_outer
from leebert_plugin.criterions.leebert import LeeBertConfig, LeeBertCriterion, distill_pairs
from leebert_plugin.criterions.multi_exit import MultiExitConfig, MultiExitCriterion
from leebert_plugin.errors import UsageError
from leebert_plugin.modules.loss_weights import LossWeights
from leebert_plugin.optim.clo import CLOConfig, CLOOptimizer
from leebert_plugin.optim.hypergradient import hypergradient, model_params


def test_pairs_of_lae_and_lle():
    assert len(distill_pairs(list(range(1, 13)), "lae")) == 132
    assert len(distill_pairs(list(range(1, 13)), "lle")) == 66
    assert all(t > s for s, t in distill_pairs([1, 2, 3], "lle"))


def test_term_names_and_weights_for_a_12_layer_model():
    crit = leebert()
    names = crit.term_names(list(range(1, 13)))
    assert len(names) == 12 + 132 and names[0] == "ce_L1" and "kd_L1<L12" in names


def test_distillation_term_is_t2_kl_with_a_detached_teacher():
    model = tiny_model(num_classes=2, dropout=0.0)
    crit = leebert(temperature=2.0, distill="lle")
    sample = sample_for(model, 6, seed=3)
    terms, exits, targets = crit.compute_terms(model, sample)
    zs, zt = exits.exit_logits[0], exits.exit_logits[3]
    expected = 4.0 * F.kl_div(F.log_softmax(zs / 2, -1), F.softmax(zt / 2, -1), reduction="sum")
    torch.testing.assert_close(terms["kd_L1<L4"], expected)
    # the teacher gets no gradient from its role as teacher
    zt_grad = torch.autograd.grad(terms["kd_L1<L4"], exits.exit_logits[3], allow_unused=True)[0]
    assert zt_grad is None or float(zt_grad.abs().sum()) == 0.0
    assert "kd_L4<L1" not in terms  # lle: only later exits teach


def test_learned_weights_start_uniform_per_group(tmp_path):
    model = tiny_model(num_classes=2)
    crit = leebert(kd_weight=0.5)
    spec = crit.loss_weight_spec(model.exit_layers)
    w = LossWeights(**spec)(crit.term_names(model.exit_layers))
    ce = [float(v) for n, v in w.items() if n.startswith("ce_")]
    kd = [float(v) for n, v in w.items() if n.startswith("kd_")]
    assert ce == pytest.approx([0.25] * 4) and kd == pytest.approx([0.5 / 12] * 12)
    # fixed-weights mode uses exactly the learned weights' start
    fixed = crit.fixed_weights(model, list(w))
    assert [fixed[n] for n in w] == pytest.approx([float(v) for v in w.values()])


def test_bilevel_state_round_trips_and_refuses_other_terms():
    """The weights (names included) and their AdamW state leave and come back whole."""
    model = tiny_model(num_classes=2, dropout=0.0, attention_dropout=0.0)
    crit = leebert()
    bilevel = bilevel_training(model, crit, w_lr=0.05, xi=1e-3)
    bilevel.meta_step(model, crit, sample_for(model, 8, seed=1), sample_for(model, 8, seed=2), 0, 1e-3)
    saved = bilevel.state_dict()
    fresh = bilevel_training(model, crit)
    fresh.load_state_dict(saved)
    assert torch.equal(fresh.weights.logits, bilevel.weights.logits) and float(fresh.weights.logits.abs().max()) > 0
    assert torch.equal(fresh.optimizer.state_dict()["state"][0]["exp_avg"], bilevel.optimizer.state_dict()["state"][0]["exp_avg"])
    other = bilevel_training(model, leebert(distill="lle"))
    with pytest.raises(UsageError, match="other terms"):
        other.load_state_dict(saved)


def exact_hypergradient(model, crit, b1, b2, xi):
    """d L_outer(theta - xi grad_theta L_train(theta, w; b1); b2) / dw by double backward, at the fixed weights."""
    names = crit.term_names(model.exit_layers)
    fixed = crit.fixed_weights(model, names)
    w = torch.tensor([fixed[n] for n in names], dtype=torch.float64, requires_grad=True)
    return torch.autograd.grad(unrolled_outer(model, crit, b1, b2, xi, w), w)[0]


@pytest.mark.parametrize("distill", ["lae", "lle"])
def test_finite_difference_hypergradient_matches_double_backward(distill):
    """Tolerance: relative 1e-3 of the largest component, in float64 with dropout off."""
    model = tiny_model(num_classes=2, dropout=0.0, attention_dropout=0.0).double()
    crit = leebert(distill=distill, learn_weights=False)
    b1, b2 = sample_for(model, 8, seed=1), sample_for(model, 8, seed=2)
    xi = 0.5
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):  # the fused CPU attention kernel has no double backward
        exact = exact_hypergradient(model, crit, b1, b2, xi)
    before = [p.detach().clone() for p in model_params(model)]
    names = crit.term_names(model.exit_layers)
    weights = {n: torch.tensor(w, dtype=torch.float64) for n, w in crit.fixed_weights(model, names).items()}
    approx = hypergradient(model, crit, weights, b1, b2, xi, eps=1e-3, virtual_step=True)
    scale = float(exact.abs().max())
    assert scale > 0
    torch.testing.assert_close(approx.double(), exact, rtol=0, atol=1e-3 * scale)
    # theta is restored bit for bit
    assert all(torch.equal(a, b) for a, b in zip(before, model_params(model)))


class AlignedAndOpposed(MultiExitCriterion):
    """Two extra terms on the last exit: CE with the true labels, and with the flipped ones."""

    def term_names(self, exit_layers, stage=1):
        return super().term_names(exit_layers, stage) + ["aux_good", "aux_bad"]

    def loss_terms(self, model, sample, exits, targets, teacher, stage=1):
        terms = super().loss_terms(model, sample, exits, targets, teacher, stage)
        last = exits.exit_logits[-1]
        terms["aux_good"] = F.cross_entropy(last, targets, reduction="sum")
        terms["aux_bad"] = F.cross_entropy(last, 1 - targets, reduction="sum")
        return terms


@pytest.mark.parametrize("mode", ["clo", "darts2", "darts1"])
def test_a_term_aligned_with_the_outer_objective_gains_weight(mode):
    model = tiny_model(num_classes=2, dropout=0.0, attention_dropout=0.0)
    crit = AlignedAndOpposed(OmegaConf.structured(MultiExitConfig(learn_weights=True)), None)
    bilevel = bilevel_training(model, crit, mode=mode, w_lr=0.05, xi=1e-3)
    b1, b2 = sample_for(model, 16, seed=4), sample_for(model, 16, seed=5)
    for b in (b1, b2):  # one label everywhere: learning it on D1 is what the D2 objective rewards
        b["target"].fill_(1)
    before = [p.detach().clone() for p in model.parameters()]
    for step in range(5):
        bilevel.meta_step(model, crit, b1, b2, step, lr=1e-3)
    w = bilevel.current(["aux_good", "aux_bad"])
    assert float(w["aux_good"]) > 0.55 > 0.45 > float(w["aux_bad"])
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))  # the model is left as it was


def test_bad_leebert_settings():
    with pytest.raises(UsageError, match="unknown distillation variant 'lea'"):
        leebert(distill="lea")
    with pytest.raises(UsageError, match="temperature"):
        leebert(temperature=0.0)
    with pytest.raises(UsageError, match="unknown clo mode 'darts3'"):
        CLOOptimizer(OmegaConf.structured(CLOConfig(lr=[1e-3], mode="darts3", tpu=False)), tiny_model().parameters())
    with pytest.raises(UsageError, match="unknown clo mode 'darts3'"):
        bilevel_training(tiny_model(), leebert(), mode="darts3")


def test_an_older_clo_optimizer_state_loads_its_model_part():
    """Checkpoints before the bi-level object kept both Adams in clo's state: the model's loads."""
    model = tiny_model()
    cfg = OmegaConf.structured(CLOConfig(lr=[1e-3], tpu=False))
    old = CLOOptimizer(cfg, model.parameters())
    model(random_batch(model, 4), classification_head_name=HEAD)[0].sum().backward()
    old.step()
    fresh = CLOOptimizer(cfg, model.parameters())
    fresh.load_state_dict({"inner": old.state_dict(), "weights": {"state": {}, "param_groups": []}})
    assert torch.equal(fresh.optimizer.state_dict()["state"][0]["exp_avg"], old.optimizer.state_dict()["state"][0]["exp_avg"])


def test_clo_warns_once_with_the_share_of_meta_steps_that_had_both_splits(caplog):
    """At a batch size where most batches lack D2 examples the weights barely move: one warning
    says how many meta steps had both; when every batch has both, nothing is said."""
    from leebert_plugin.optim.bilevel import SHARE_WINDOW

    model = tiny_model(num_classes=2)
    model.train()
    crit = leebert()
    training = bilevel_training(model, crit, w_update_interval=1, w_lr=3e-3)
    sample = sample_for(model, 8, seed=3)
    b1, b2 = training.split(sample)
    assert b1 is not None and b2 is not None
    with caplog.at_level("WARNING", logger="leebert_plugin.optim.bilevel"):
        for update in range(SHARE_WINDOW):  # every batch with both: no warning
            stats = training.meta_step(model, crit, b1, b2, update, 1e-3)
            assert stats["meta_with_both"] == 1
        assert not caplog.records
        for update in range(SHARE_WINDOW, 3 * SHARE_WINDOW):
            both = update % 4 == 0  # 5 of 20
            stats = training.meta_step(model, crit, b1, b2 if both else None, update, 1e-3)
            assert stats["meta_with_both"] == int(both)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings  # once, not every window
    assert "only 5 of the last 20 meta steps (25%) had both D1 and D2" in warnings[0]
    assert "dataset.batch_size" in warnings[0]
