"""LeeBERT: distillation terms, learned weights, the finite-difference hypergradient, CLO steps."""
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from helpers import HEAD, random_batch, tiny_model
from leebert_plugin.criterions.leebert import LeeBertConfig, LeeBertCriterion, distill_pairs
from leebert_plugin.criterions.multi_exit import MultiExitConfig, MultiExitCriterion
from leebert_plugin.errors import UsageError
from leebert_plugin.optim.clo import CLOConfig, CLOOptimizer
from leebert_plugin.optim.hypergradient import hypergradient, model_params


class _Task:
    pass


def sample_for(model, bsz, seed, num_classes=2):
    tokens = random_batch(model, bsz, seed=seed)
    lengths = tokens.ne(model.encoder.dictionary.pad()).sum(1)
    g = torch.Generator().manual_seed(seed)
    return {"id": torch.arange(bsz), "nsentences": bsz, "ntokens": int(lengths.sum()),
            "net_input": {"src_tokens": tokens, "src_lengths": lengths},
            "target": torch.randint(0, num_classes, (bsz,), generator=g)}


def leebert(**kw):
    return LeeBertCriterion(OmegaConf.structured(LeeBertConfig(**kw)), _Task())


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
    model.attach_loss_weights(**crit.loss_weight_spec(model))
    w = model.loss_weights(crit.term_names(model.exit_layers))
    ce = [float(v) for n, v in w.items() if n.startswith("ce_")]
    kd = [float(v) for n, v in w.items() if n.startswith("kd_")]
    assert ce == pytest.approx([0.25] * 4) and kd == pytest.approx([0.5 / 12] * 12)
    # fixed-weights mode uses exactly the learned weights' start
    fixed = crit.fixed_weights(model, list(w))
    assert [fixed[n] for n in w] == pytest.approx([float(v) for v in w.values()])
    # the weights round-trip through a state dict, names included
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    fresh = tiny_model(num_classes=2)
    assert fresh.loss_weights is None
    fresh.load_state_dict(torch.load(path), strict=True)
    assert fresh.loss_weights.names == model.loss_weights.names


def exact_hypergradient(model, crit, b1, b2, xi):
    """d L_outer(theta - xi grad_theta L_train(theta, w; b1); b2) / dw by double backward."""
    names = crit.term_names(model.exit_layers)
    fixed = crit.fixed_weights(model, names)
    w = torch.tensor([fixed[n] for n in names], dtype=torch.float64, requires_grad=True)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    terms, _, targets = crit.compute_terms(model, b1)
    train = sum(wk * terms[n] for wk, n in zip(w, names)) / targets.numel()
    grads = torch.autograd.grad(train, params, create_graph=True, allow_unused=True)
    shifted = {n: p if g is None else p - xi * g for (n, p), g in zip(named, grads)}

    class Outer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self):
            t, _, y = crit.compute_terms(self.model, b2)
            return crit.outer_objective(t) / y.numel()

    outer = torch.func.functional_call(Outer(), {f"model.{n}": v for n, v in shifted.items()}, ())
    return torch.autograd.grad(outer, w)[0]


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
    approx = hypergradient(model, crit, b1, b2, xi, eps=1e-3, virtual_step=True)
    scale = float(exact.abs().max())
    assert scale > 0
    torch.testing.assert_close(approx.double(), exact, rtol=0, atol=1e-3 * scale)
    # theta is restored bit for bit
    assert all(torch.equal(a, b) for a, b in zip(before, model_params(model)))


class AlignedAndOpposed(MultiExitCriterion):
    """Two extra terms on the last exit: CE with the true labels, and with the flipped ones."""

    def term_names(self, exit_layers):
        return super().term_names(exit_layers) + ["aux_good", "aux_bad"]

    def loss_terms(self, model, sample, exits, targets, teacher):
        terms = super().loss_terms(model, sample, exits, targets, teacher)
        last = exits.exit_logits[-1]
        terms["aux_good"] = F.cross_entropy(last, targets, reduction="sum")
        terms["aux_bad"] = F.cross_entropy(last, 1 - targets, reduction="sum")
        return terms


@pytest.mark.parametrize("mode", ["clo", "darts2", "darts1"])
def test_a_term_aligned_with_the_outer_objective_gains_weight(mode):
    model = tiny_model(num_classes=2, dropout=0.0, attention_dropout=0.0)
    crit = AlignedAndOpposed(OmegaConf.structured(MultiExitConfig(learn_weights=True)), _Task())
    model.attach_loss_weights(**crit.loss_weight_spec(model))
    cfg = OmegaConf.structured(CLOConfig(lr=[1e-3], mode=mode, w_lr=0.05, xi=1e-3, tpu=False))
    opt = CLOOptimizer(cfg, model.parameters())
    b1, b2 = sample_for(model, 16, seed=4), sample_for(model, 16, seed=5)
    for b in (b1, b2):  # one label everywhere: learning it on D1 is what the D2 objective rewards
        b["target"].fill_(1)
    for step in range(5):
        opt.meta_step(model, crit, b1, b2, seed=step)
    w = model.loss_weights(["aux_good", "aux_bad"])
    assert float(w["aux_good"]) > 0.55 > 0.45 > float(w["aux_bad"])


def test_bad_leebert_settings():
    with pytest.raises(UsageError, match="unknown distillation variant 'lea'"):
        leebert(distill="lea")
    with pytest.raises(UsageError, match="temperature"):
        leebert(temperature=0.0)
    with pytest.raises(UsageError, match="unknown clo mode 'darts3'"):
        CLOOptimizer(OmegaConf.structured(CLOConfig(lr=[1e-3], mode="darts3", tpu=False)), tiny_model().parameters())
