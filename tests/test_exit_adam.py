"""exit_adam: the exit heads step with exit_lr_scale x the scheduled lr, the encoder with the lr."""
import pytest
import torch
from omegaconf import OmegaConf

from helpers import HEAD, random_batch, tiny_model
from leebert_plugin.errors import UsageError
from leebert_plugin.optim.clo import CLOConfig, CLOOptimizer
from leebert_plugin.optim.exit_adam import ExitAdam, ExitAdamConfig


def config(cls, **kw):
    return OmegaConf.structured(cls(lr=[1e-3], tpu=False, adam_eps=1e-16, **kw))  # steps of exactly lr


def first_step_sizes(model, optimizer):
    """Mean |delta| of exit and of encoder parameters after one Adam step (Adam's first step is
    lr * sign(grad) per coordinate, so the mean is about the group's lr)."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer.zero_grad()
    logits, _ = model(random_batch(model, 8), classification_head_name=HEAD)
    logits.sum().backward()
    optimizer.step()
    sizes = {"exit": [], "encoder": []}
    for n, p in model.named_parameters():
        moved = (p.detach() - before[n]).abs()
        moved = moved[moved > 0]
        if moved.numel():
            sizes["exit" if n.startswith("exit_heads") else "encoder"].append(moved.mean())
    return {k: float(torch.stack(v).mean()) for k, v in sizes.items()}


@pytest.mark.parametrize("build", ["exit_adam", "clo"])
def test_exit_heads_step_with_the_scaled_lr_and_follow_the_schedule(build):
    model = tiny_model().train()
    cfg = config(ExitAdamConfig if build == "exit_adam" else CLOConfig, exit_lr_scale=10.0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = ExitAdam(cfg, params) if build == "exit_adam" else CLOOptimizer(cfg, params)
    optimizer.set_lr(2e-4)  # what the lr scheduler does every update
    assert optimizer.get_lr() == pytest.approx(2e-4)
    sizes = first_step_sizes(model, optimizer)
    assert sizes["encoder"] == pytest.approx(2e-4, rel=1e-3)
    assert sizes["exit"] == pytest.approx(2e-3, rel=1e-3)


def test_scale_one_is_plain_adam_and_a_bad_scale_is_refused():
    model = tiny_model()
    assert len(ExitAdam(config(ExitAdamConfig), model.parameters()).param_groups) == 1
    with pytest.raises(UsageError, match="exit_lr_scale=0.0 must be positive"):
        ExitAdam(config(ExitAdamConfig, exit_lr_scale=0.0), model.parameters())


def test_mean_pooling_reads_every_real_token_and_ignores_padding():
    model = tiny_model(exit_pooling="mean")
    heads = model.exit_heads[HEAD]
    x = torch.randn(5, 2, 64)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    changed = x.clone()
    changed[3:, 1] += 100.0  # padding positions of sample 1
    torch.testing.assert_close(heads(0, x, pad), heads(0, changed, pad))
    changed[1, 0] += 1.0  # a real token of sample 0
    assert not torch.allclose(heads(0, x, pad)[0], heads(0, changed, pad)[0])
    with pytest.raises(UsageError, match="does not apply to the smartbert head"):
        tiny_model(exit_head="smartbert", exit_pooling="mean")
