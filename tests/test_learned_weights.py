"""LeeBERT's learned loss weights learn (issue 38): a planted harmful term is weighted down within a
short run under the GLUE configs' optimizer settings, and the meta step's hypergradient is the
exact derivative of the one-step unrolled objective."""
import math
from typing import Optional

import pytest
import torch
import torch.nn.functional as F
from fairseq.data import Dictionary
from fairseq.logging import metrics
from fairseq.optim.lr_scheduler.polynomial_decay_schedule import (
    PolynomialDecayLRSchedule, PolynomialDecayLRScheduleConfig,
)
from omegaconf import OmegaConf, open_dict
from torch.nn.attention import SDPBackend, sdpa_kernel

from helpers import ROOT, bilevel_training, leebert, sample_for, tiny_dictionary, tiny_model, unrolled_outer
from leebert_plugin.criterions.leebert import LeeBertConfig, LeeBertCriterion
from leebert_plugin.criterions.multi_exit import MultiExitConfig, MultiExitCriterion
from leebert_plugin.modules.loss_weights import LossWeights, spread
from leebert_plugin.optim import bilevel as bilevel_module
from leebert_plugin.optim.bilevel import UNKNOWN_LENGTH, trajectory_of, weights_lr
from leebert_plugin.optim.clo import CLOConfig, CLOOptimizer
from leebert_plugin.tasks.early_exit_sentence_prediction import (
    EarlyExitSentencePredictionConfig, EarlyExitSentencePredictionTask,
)

GLUE_CONFIG = ROOT / "configs" / "sst_2_leebert.yaml"
PRETRAIN_UPDATES = 200


class PlantedWrongLabels(LeeBertCriterion):
    """LeeBERT plus one harmful distillation term, as a user would add one: the last exit trained
    towards the wrong label of every sentence, in the ``kd`` group."""

    def term_names(self, exit_layers, stage=1):
        return super().term_names(exit_layers, stage) + ["kd_wrong"]

    def loss_terms(self, model, sample, exits, targets, teacher, stage=1):
        terms = super().loss_terms(model, sample, exits, targets, teacher, stage)
        terms["kd_wrong"] = F.cross_entropy(exits.exit_logits[-1].float(), 1 - targets, reduction="sum")
        return terms


def learnable_batch(dictionary: Dictionary, bsz: int, first_id: int, g: torch.Generator) -> dict:
    """Sentences whose label is learnable: label 1 draws 80% of its words from the first half of the
    vocabulary, label 0 from the second half (what one batch's wrong labels undo, the next batch's
    outer objective rewards)."""
    words = torch.arange(dictionary.nspecial, len(dictionary))
    low, high = words[: len(words) // 2], words[len(words) // 2:]
    target = torch.randint(0, 2, (bsz,), generator=g)
    length = 12
    own = torch.rand(bsz, length, generator=g) < 0.8
    pick_low = torch.where(target[:, None] == 1, own, ~own)
    tokens = torch.where(pick_low, low[torch.randint(len(low), (bsz, length), generator=g)],
                         high[torch.randint(len(high), (bsz, length), generator=g)])
    tokens[:, 0] = dictionary.bos()
    return {"id": torch.arange(first_id, first_id + bsz), "nsentences": bsz, "ntokens": tokens.numel(),
            "net_input": {"src_tokens": tokens, "src_lengths": torch.full((bsz,), length)}, "target": target}


def glue_settings():
    """The optimizer, criterion and schedule settings ``configs/sst_2_leebert.yaml`` ships."""
    cfg = OmegaConf.load(GLUE_CONFIG)
    optimizer = {k: v for k, v in OmegaConf.to_container(cfg.optimizer).items() if k != "_name"}
    criterion = {k: v for k, v in OmegaConf.to_container(cfg.criterion).items() if k != "_name"}
    warmup_share = cfg.lr_scheduler.warmup_updates / cfg.optimization.max_update
    return optimizer, criterion, list(cfg.optimization.lr), warmup_share, cfg.dataset.batch_size


def pretrained_model(updates: Optional[int] = None) -> torch.nn.Module:
    """The tiny model after ``updates`` plain multi-exit updates (Adam, lr 1e-3) on the task: an
    encoder whose features carry the label, as a pretrained one's do (a random tiny encoder maps
    every sentence to nearly the same state, where no term's gradient agrees with another's)."""
    model = tiny_model(num_classes=2).train()
    crit = MultiExitCriterion(OmegaConf.structured(MultiExitConfig()), None)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1234)
    for update in range(PRETRAIN_UPDATES if updates is None else updates):
        loss, size, _ = crit(model, learnable_batch(model.encoder.dictionary, 16, 0, g))
        opt.zero_grad()
        (loss / size).backward()
        opt.step()
    return model


def train_planted(updates: int = 300, data_seed: int = 0, **optimizer_overrides):
    """``updates`` updates of a tiny model with the planted term, as fairseq's trainer runs them (the
    task's train_step, gradients divided by the sample size, the optimizer's step, the polynomial
    schedule with the config's warm-up share); the kd group's final weights, by name."""
    optimizer, criterion_settings, lr, warmup_share, batch = glue_settings()
    optimizer.update(optimizer_overrides)
    clo_cfg = OmegaConf.structured(CLOConfig(_name="clo", lr=lr, tpu=False, **optimizer))
    task_cfg = OmegaConf.structured(EarlyExitSentencePredictionConfig(data="unused", num_classes=2, seed=1))
    with open_dict(task_cfg):
        task_cfg.optimizer_settings = clo_cfg
        task_cfg.max_update = updates  # what fairseq's config interpolates (optimization.max_update)
    model = pretrained_model()
    labels = Dictionary()
    for label in ("0", "1"):
        labels.add_symbol(label)
    task = EarlyExitSentencePredictionTask(task_cfg, model.encoder.dictionary, labels)
    crit = PlantedWrongLabels(OmegaConf.structured(LeeBertConfig(_name="leebert", **criterion_settings)), task)
    opt = CLOOptimizer(clo_cfg, model.parameters())
    schedule = PolynomialDecayLRSchedule(OmegaConf.structured(PolynomialDecayLRScheduleConfig(
        warmup_updates=max(1, round(warmup_share * updates)), total_num_update=updates, lr=lr)), opt)
    schedule.step_begin_epoch(1)
    g = torch.Generator().manual_seed(data_seed)
    for update in range(updates):
        sample = learnable_batch(model.encoder.dictionary, batch, update * batch, g)
        opt.zero_grad()
        _, sample_size, _ = task.train_step(sample, model, crit, opt, update)
        opt.multiply_grads(1.0 / sample_size)
        opt.step()
        schedule.step_update(update + 1)
    names = crit.term_names(model.exit_layers)
    weights = task.bilevel.current(names)
    return {n: float(w) for n, w in weights.items() if n.startswith("kd_")}


def test_a_planted_harmful_term_is_weighted_down_under_the_glue_settings():
    """300 updates under configs/sst_2_leebert.yaml's optimizer settings: the term that trains the
    last exit towards wrong labels ends at most half its group's median, and the group's smallest."""
    kd = train_planted(300)
    median = sorted(kd.values())[len(kd) // 2]
    assert kd["kd_wrong"] <= 0.5 * median, (kd["kd_wrong"], median)
    assert kd["kd_wrong"] == min(kd.values())


pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_meta_step_moves_the_weights_by_the_exact_hypergradient():
    """What the meta step hands Adam (the gradient of the weights' logits, through the group
    softmax, crossed both ways, per unit of virtual step) against the exact derivative of the
    one-step unrolled objective by double backward, in fp32 as training runs it, at non-uniform
    weights: relative error under 3%."""
    model = tiny_model(num_classes=2, dropout=0.0, attention_dropout=0.0).train()
    crit = leebert()
    xi = 0.5
    bilevel = bilevel_training(model, crit, xi=xi, w_lr=0.01)
    with torch.no_grad():
        bilevel.weights.logits.copy_(torch.randn(bilevel.weights.logits.shape, generator=torch.Generator().manual_seed(3)))
    b1, b2 = sample_for(model, 8, seed=1), sample_for(model, 8, seed=2)
    logits = bilevel.weights.logits.detach().clone().requires_grad_(True)
    w = LossWeights(bilevel.weights.names, "group_softmax", {"kd": 1.0})
    w.logits = torch.nn.Parameter(logits)
    with sdpa_kernel(SDPBackend.MATH):  # the fused CPU attention kernel has no double backward
        outer = 0.5 * (unrolled_outer(model, crit, b1, b2, xi, w.weights()) + unrolled_outer(model, crit, b2, b1, xi, w.weights()))
        exact = torch.autograd.grad(outer, w.logits)[0] / xi
    bilevel.meta_step(model, crit, b1, b2, 0, lr=1e-3)
    handed = bilevel.weights.logits.grad
    assert float(exact.norm()) > 0
    assert float((handed - exact).norm() / exact.norm()) < 0.03, (handed, exact)


@pytest.mark.parametrize("updates", [64, 300, 20_935])
def test_the_weights_lr_fits_the_run(updates):
    """The default lr is w_travel over the run's meta steps (7 at 64 updates, 2094 at the GLUE
    configs' 20,935); an explicit w_lr wins."""
    cfg = OmegaConf.structured(CLOConfig(lr=[1e-3], tpu=False))
    assert cfg.w_lr is None and cfg.w_update_interval == 10
    assert weights_lr(cfg, updates) == pytest.approx(cfg.w_travel / math.ceil(updates / 10))
    assert weights_lr(OmegaConf.structured(CLOConfig(lr=[1e-3], tpu=False, w_lr=0.02)), updates) == 0.02


def test_an_unknown_run_length_is_said_and_assumed(caplog):
    model = tiny_model(num_classes=2)
    with caplog.at_level("WARNING", logger="leebert_plugin.optim.bilevel"):
        bilevel = bilevel_training(model, leebert())
    assert bilevel.w_lr == pytest.approx(3.0 / (UNKNOWN_LENGTH / 10))
    assert "the run's length is unknown" in caplog.text and "optimizer.w_lr" in caplog.text


@pytest.mark.parametrize("updates", [64, 20_000])
def test_a_steady_hypergradient_moves_a_weight_by_order_one_over_any_run(monkeypatch, updates):
    """Over the meta steps of 64 and of 20,000 updates, a hypergradient that keeps its sign under
    noise half its size moves the term's logit against the others by more than 1, and less than
    twice w_travel (at the old fixed 3e-3: under 0.2 at 64 updates)."""
    model = tiny_model(num_classes=2)
    crit = leebert()
    g = torch.Generator().manual_seed(0)

    def steady(*args, **kwargs):  # +1 for the first term, noise N(0, 0.5^2) on every term
        n = len(bilevel.weights.names)
        return torch.cat([torch.ones(1), torch.zeros(n - 1)]) + 0.5 * torch.randn(n, generator=g)

    monkeypatch.setattr(bilevel_module, "hypergradient", steady)
    b = sample_for(model, 4, seed=1)
    settings = ((None, 1.0, 6.0),) + (((3e-3, -math.inf, 0.2),) if updates == 64 else ())
    for w_lr, least, most in settings:
        bilevel = bilevel_training(model, crit, planned_updates=updates, w_lr=w_lr, w_weight_decay=0.0)
        for update in range(0, updates, 10):
            bilevel.meta_step(model, crit, b, b, update, lr=1e-5)
        ce = bilevel.weights.logits[: len(model.exit_layers)]  # the first term's group
        moved = float(ce[1:].mean() - ce[0])
        assert least < moved < most, (w_lr, moved)


def test_the_task_plans_the_run_from_max_update_or_max_epoch():
    labels = Dictionary()
    task_cfg = OmegaConf.structured(EarlyExitSentencePredictionConfig(data="unused", num_classes=2))
    task = EarlyExitSentencePredictionTask(task_cfg, tiny_dictionary(), labels)
    with open_dict(task_cfg):
        task_cfg.max_update, task_cfg.max_epoch, task_cfg.update_freq = 0, 0, [1]
    assert task.planned_updates() is None
    task_cfg.max_update = 500
    assert task.planned_updates() == 500
    task_cfg.max_epoch = 3
    task._train_batches = 101  # the training iterator's batches per epoch, per worker
    assert task.planned_updates() == 303  # the smaller: fairseq stops at whichever comes first
    task_cfg.update_freq = [2]
    assert task.planned_updates() == 3 * 51
    task_cfg.max_update = 0
    assert task.planned_updates() == 153


def test_a_resumed_run_goes_on_as_the_uninterrupted_one(monkeypatch):
    """Weights, Adam's moments and the trajectory come back from the state; the lr is the run's own,
    not the checkpoint's (a longer resumed run gets the rate of its length)."""
    model = tiny_model(num_classes=2, dropout=0.0, attention_dropout=0.0)
    crit = leebert()
    b1, b2 = sample_for(model, 8, seed=1), sample_for(model, 8, seed=2)

    def run(bilevel, updates):
        for update in updates:
            bilevel.meta_step(model, crit, b1, b2, update, lr=1e-3)

    whole = bilevel_training(model, crit, planned_updates=60)
    run(whole, range(0, 60, 10))
    first = bilevel_training(model, crit, planned_updates=60)
    run(first, range(0, 30, 10))
    resumed = bilevel_training(model, crit, planned_updates=60)
    resumed.load_state_dict(first.state_dict())
    run(resumed, range(30, 60, 10))
    assert torch.equal(resumed.weights.logits, whole.weights.logits)
    assert resumed.trajectory == whole.trajectory and len(whole.trajectory["updates"]) == 6
    assert torch.equal(resumed.optimizer.state_dict()["state"][0]["exp_avg_sq"],
                       whole.optimizer.state_dict()["state"][0]["exp_avg_sq"])
    longer = bilevel_training(model, crit, planned_updates=600)
    longer.load_state_dict(first.state_dict())
    assert longer.optimizer.param_groups[0]["lr"] == pytest.approx(3.0 / 60) != first.optimizer.param_groups[0]["lr"]


def test_the_trajectory_is_thinned_and_keeps_the_last_step(monkeypatch):
    monkeypatch.setattr(bilevel_module, "TRAJECTORY_POINTS", 4)
    model = tiny_model(num_classes=2, dropout=0.0, attention_dropout=0.0)
    crit = leebert()
    bilevel = bilevel_training(model, crit, w_lr=0.05)
    b1, b2 = sample_for(model, 8, seed=1), sample_for(model, 8, seed=2)
    for update in range(0, 110, 10):  # 11 meta steps: kept every 1st, then every 2nd, then every 4th
        bilevel.meta_step(model, crit, b1, b2, update, lr=1e-3)
    t = bilevel.trajectory
    assert t["stride"] == 4 and t["updates"] == [0, 40, 80]
    record = trajectory_of(bilevel.state_dict())
    assert record["updates"] == [0, 40, 80, 100]  # the last meta step's weights, always
    assert record["weights"][-1] == pytest.approx(bilevel.weights.weights().tolist())
    assert record["start"] == pytest.approx([0.25] * 4 + [1 / 12] * 12)
    assert record["names"] == crit.term_names(model.exit_layers) and set(record["groups"]) == {"ce", "kd"}
    assert record["final"]["ce_L1"] == pytest.approx(float(bilevel.weights.weights()[0]))
    assert record["spread"]["kd"]["max_min_ratio"] > 1.0


def test_spread_measures_the_distance_from_uniform():
    uniform = spread({"ce_L1": 0.5, "ce_L2": 0.5, "kd_a": 0.2, "kd_b": 0.2})
    assert uniform == {"ce": {"kl_uniform": 0.0, "max_min_ratio": 1.0}, "kd": {"kl_uniform": 0.0, "max_min_ratio": 1.0}}
    far = spread({"ce_L1": 0.75, "ce_L2": 0.25, "kd_a": 2.0, "kd_b": 0.0})
    assert far["ce"]["kl_uniform"] == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    assert far["ce"]["max_min_ratio"] == pytest.approx(3.0)
    assert far["kd"]["kl_uniform"] == pytest.approx(math.log(2)) and far["kd"]["max_min_ratio"] == math.inf


def test_the_training_log_says_how_far_the_weights_are_from_uniform():
    """The criterion logs, beside every weight (``w_<term>``), each group's KL to uniform and
    max/min ratio, from the weights averaged over the interval."""
    logs = [{"loss": 1.0, "sample_size": 2, "nsentences": 2, "ntokens": 8, "weight:ce_L1": 2 * 0.75,
             "weight:ce_L2": 2 * 0.25, "weight:kd_L1<L2": 2 * 1.0}]
    with metrics.aggregate(new_root=True) as agg:
        MultiExitCriterion.reduce_metrics(logs)
        values = agg.get_smoothed_values()
    assert values["w_ce_L1"] == pytest.approx(0.75)
    assert values["wratio_ce"] == pytest.approx(3.0) and values["wkl_ce"] == pytest.approx(
        0.75 * math.log(1.5) + 0.25 * math.log(0.5), abs=1e-5)
    assert values["wkl_kd"] == 0.0 and values["wratio_kd"] == 1.0


def test_a_loaded_checkpoints_weights_are_read_without_its_criterion():
    """What the hub and fairseq-validate's task hold after loading: the saved weights, by name."""
    model = tiny_model(num_classes=2)
    crit = leebert()
    bilevel = bilevel_training(model, crit, w_lr=0.05)
    bilevel.meta_step(model, crit, sample_for(model, 8, seed=1), sample_for(model, 8, seed=2), 0, lr=1e-3)
    task = EarlyExitSentencePredictionTask(
        OmegaConf.structured(EarlyExitSentencePredictionConfig(data="unused", num_classes=2)), tiny_dictionary(),
        Dictionary())
    assert task.learned_loss_weights() is None
    task.restore_training_state({"bilevel": bilevel.state_dict(), "dictionaries_sha256": task.dictionaries_sha256()})
    read = task.learned_loss_weights()
    assert list(read) == crit.term_names(model.exit_layers)
    assert list(read.values()) == pytest.approx(bilevel.weights.weights().tolist())
