"""Mixed precision on CPU: fairseq's fp16/bf16/AMP optimizer wrappers built around the plugin's
model, as fairseq's trainer builds them (the flat fp16 copy with its device lookup pointed at the
CPU), for two-stage training, ``exit_lr_scale`` and LeeBERT's meta step."""
import copy

import pytest
import torch
from omegaconf import OmegaConf

from helpers import HEAD, PRECISIONS, bilevel_training, leebert, precision_optimizer, sample_for, tiny_model
from leebert_plugin.errors import UsageError
from leebert_plugin.optim.exit_adam import EXIT_PARAM
from leebert_plugin.tasks.two_stage import TwoStageTraining


@pytest.fixture(autouse=True)
def flat_copies_on_cpu(monkeypatch):
    """fairseq keys its flat fp16 copy by ``torch.cuda.current_device()`` and looks tensors up
    by ``p.device.index``: None for CPU tensors."""
    monkeypatch.setattr(torch.cuda, "current_device", lambda: None)


def train_step(model, optimizer, seed: int, autocast: bool = False) -> None:
    """One update as fairseq's trainer runs it: zero, backward through the wrapper, step; with
    ``autocast``, the forward under autocast as fairseq's trainer runs it for --amp (in bf16, the
    CPU autocast's default dtype)."""
    optimizer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits, extra = model(sample_for(model, 8, seed)["net_input"]["src_tokens"], classification_head_name=HEAD)
    loss = sum(z.float().logsumexp(-1).sum() - z.float()[:, 0].sum() for z in extra["exits"].exit_logits
               if z is not None)
    optimizer.backward(loss)
    optimizer.step()


def stage1_weights(dtype) -> dict:
    """A 'best stage-1 checkpoint': another model, its intermediate exits far from any init."""
    other = tiny_model(num_classes=2, seed=5, exit_head="deebert")
    with torch.no_grad():
        for p in other.stage2_parameters(HEAD):
            p.add_(0.5)
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in other.state_dict().items()}


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
def test_stage_2_starts_from_the_reloaded_weights_and_freezes_them_bit_for_bit(precision):
    model = tiny_model(num_classes=2, exit_head="deebert").train()
    optimizer = precision_optimizer(model, precision, lr=[1e-3], weight_decay=0.0)
    train_step(model, optimizer, seed=1, autocast=precision == "amp")  # stage 1: masters and moments of everything
    dtype = next(model.parameters()).dtype
    reloaded = stage1_weights(dtype)
    model.load_state_dict(reloaded)  # what the switch to stage 2 does
    model.enter_stage2(HEAD)
    two_stage = TwoStageTraining(OmegaConf.create({"stage1_epochs": 1}))
    for seed in (2, 3):
        assert two_stage.before_step(model, optimizer) == 2
        train_step(model, optimizer, seed, autocast=precision == "amp")
    after = model.state_dict()
    exits = {n for n, p in model.named_parameters() if p.requires_grad}
    assert exits and len(exits) < len(after)
    for name, value in reloaded.items():
        if name == "training_stage":
            continue
        if name not in exits:  # frozen: exactly the reloaded checkpoint
            assert torch.equal(after[name], value), (precision, name)
        else:  # two Adam steps of lr 1e-3 from the reloaded exit, not from stage 1's
            moved = (after[name].float() - value.float()).abs().max()
            assert 0 < moved < 1e-2, (precision, name, float(moved))


@pytest.mark.parametrize("precision", sorted(set(PRECISIONS) - {"fp16"}))
def test_exits_step_at_exit_lr_scale_times_lr(precision):
    model = tiny_model(num_classes=2, exit_head="deebert").train()
    before = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    is_exit = {n: getattr(p, EXIT_PARAM, False) for n, p in model.named_parameters()}
    optimizer = precision_optimizer(model, precision, lr=[1e-4], weight_decay=0.0, exit_lr_scale=20.0)
    train_step(model, optimizer, seed=1, autocast=precision == "amp")
    # Adam's first step moves every element with a gradient by about its group's lr
    steps = {True: [], False: []}
    for n, p in model.named_parameters():
        if p.dim() == 2:  # weight matrices: small values, so low-precision copies resolve the step
            delta = (p.detach().float() - before[n]).abs().flatten()
            steps[is_exit[n]].append(delta[delta > 0])
    exit_step, other_step = (float(torch.cat(steps[k]).median()) for k in (True, False))
    assert exit_step == pytest.approx(20 * 1e-4, rel=0.3), precision
    assert other_step == pytest.approx(1e-4, rel=0.3), precision


def test_a_scale_the_flat_fp16_copy_cannot_carry_is_refused():
    model = tiny_model(num_classes=2, exit_head="deebert").train()
    with pytest.raises(UsageError, match="fp16_no_flatten_grads"):
        precision_optimizer(model, "fp16", lr=[1e-4], exit_lr_scale=20.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_meta_step_of_a_low_precision_model_is_the_fp32_one(dtype):
    """The hypergradient's perturbations round away in bf16/fp16 weights: the meta step runs on
    an fp32 replica, and moves the weights exactly as for an fp32 model of the same values."""
    low = tiny_model(num_classes=2, exit_layers="2,4", dropout=0.0, attention_dropout=0.0).to(dtype).train()
    reference = copy.deepcopy(low).float()
    b1, b2 = sample_for(low, 8, seed=1), sample_for(low, 8, seed=2)
    moved = []
    for model in (low, reference):
        crit = leebert()
        bilevel = bilevel_training(model, crit, w_lr=0.05)
        stats = bilevel.meta_step(model, crit, b1, b2, 0, lr=1e-3)
        assert stats["hypergrad_norm"] > 0
        moved.append(bilevel.weights.logits.detach().clone())
    assert torch.equal(moved[0], moved[1])
    assert moved[0].abs().max() > 0
    assert next(low.parameters()).dtype == dtype  # the model itself is untouched


def test_the_meta_step_inside_an_amp_forward_runs_in_fp32():
    model = tiny_model(num_classes=2, exit_layers="2,4", dropout=0.0, attention_dropout=0.0).train()
    b1, b2 = sample_for(model, 8, seed=1), sample_for(model, 8, seed=2)
    moved = []
    for autocast in (False, True):
        crit = leebert()
        bilevel = bilevel_training(model, crit, w_lr=0.05)
        with torch.autocast("cpu", enabled=autocast):
            bilevel.meta_step(model, crit, b1, b2, 0, lr=1e-3)
        moved.append(bilevel.weights.logits.detach().clone())
    assert torch.equal(moved[0], moved[1]) and moved[0].abs().max() > 0


REFUSED_PRECISIONS = {  # common.* settings -> words of the one-line refusal
    "amp with fp16": ({"amp": True, "fp16": True, "fp16_no_flatten_grads": True}, "common.amp=true with"),
    "amp with bf16": ({"amp": True, "bf16": True}, "common.amp=true with"),
    "fp16 with bf16": ({"fp16": True, "bf16": True, "fp16_no_flatten_grads": True}, "builds no loss scaler"),
    "memory-efficient fp16 alone": ({"memory_efficient_fp16": True}, "trains in fp32"),
    "memory-efficient bf16 alone": ({"memory_efficient_bf16": True}, "trains in fp32"),
    "argparse --bf16 (tpu)": ({"bf16": True, "tpu": True}, "does not run on TPUs"),
    "flat fp16 without a GPU": ({"fp16": True}, "--fp16 without a GPU"),
}


@pytest.mark.parametrize("name", REFUSED_PRECISIONS)
def test_each_precision_setting_fairseq_would_get_wrong_is_refused(name):
    from leebert_plugin.optim.precision import check_precision

    settings, words = REFUSED_PRECISIONS[name]
    with pytest.raises(UsageError, match=words) as refused:
        check_precision(OmegaConf.create(settings), cuda_available=False)
    assert "\n" not in str(refused.value) and "Fix:" in str(refused.value)


def test_the_precision_settings_of_the_readme_table_pass_the_check():
    from leebert_plugin.optim.precision import check_precision

    for settings in ({}, {"amp": True}, {"bf16": True}, {"bf16": True, "memory_efficient_bf16": True},
                     {"fp16": True, "fp16_no_flatten_grads": True}, {"fp16": True, "memory_efficient_fp16": True}):
        check_precision(OmegaConf.create(settings), cuda_available=False)
    check_precision(OmegaConf.create({"fp16": True}), cuda_available=True)  # the flat copy, on a GPU
