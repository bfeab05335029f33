"""SmartBERT's skip gates: straight-through weights, gated training pass, batched skipping."""
import pytest
import torch

from helpers import HEAD, mixed_gates_model, random_batch, spread_model, tiny_model
from leebert_plugin.errors import UsageError
from leebert_plugin.exits.policies import build_policy
from leebert_plugin.modules.skip_gate import straight_through


def test_straight_through_is_hard_forward_and_identity_backward():
    g = torch.tensor([0.1, 0.49, 0.5, 0.9], requires_grad=True)
    hard = straight_through(g, 0.5)
    assert hard.tolist() == [0.0, 0.0, 1.0, 1.0]
    upstream = torch.tensor([1.0, -2.0, 3.0, 0.5])
    hard.backward(upstream)
    soft = g.detach().clone().requires_grad_(True)
    soft.backward(upstream)
    assert torch.equal(g.grad, soft.grad)


def test_straight_through_gradient_reaches_the_gate_parameters():
    model = tiny_model(num_classes=2, skip_gates=True, dropout=0.0, attention_dropout=0.0).train()
    tokens = random_batch(model, 8, seed=2)
    logits, extra = model(tokens, classification_head_name=HEAD)
    probs = extra["exits"].gate_probs
    assert len(probs) == model.num_layers and all(((p > 0) & (p < 1)).all() for p in probs)  # soft, for the regulariser
    logits.sum().backward()
    grads = [p.grad for p in model.skip_gates.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


def open_gates(model):
    with torch.no_grad():
        for gate in model.skip_gates.gates:
            gate.out.bias.fill_(-1e4)  # sigmoid -> 0: never skip, and the mix weight is exactly 0


def test_every_gate_open_equals_the_model_without_gates():
    gated = spread_model(skip_gates=True)
    open_gates(gated)
    plain = spread_model()  # same seed, same weights for everything but the gates
    state = {k: v for k, v in gated.state_dict().items() if not k.startswith("skip_gates.")}
    plain.load_state_dict(state, strict=True)
    tokens = random_batch(gated, 16, seed=4)
    with torch.no_grad():
        for mode in ("soft", "hard"):
            gated.gate_mode = mode
            _, a = gated(tokens, classification_head_name=HEAD)
            _, b = plain(tokens, classification_head_name=HEAD)
            for la, lb in zip(a["exits"].exit_logits, b["exits"].exit_logits):
                torch.testing.assert_close(la, lb)
        policy = build_policy("max_prob", 3, 0.9)
        la, a = gated(tokens, classification_head_name=HEAD, exit_policy=policy)
        lb, b = plain(tokens, classification_head_name=HEAD, exit_policy=policy)
    torch.testing.assert_close(la, lb)
    assert torch.equal(a["exits"].exit_layer, b["exits"].exit_layer)
    assert int(a["exits"].layers_skipped.sum()) == 0





@pytest.mark.parametrize("policy_name, threshold", [("entropy", 0.6), ("patience", None), ("none", None)])
def test_skip_and_exit_decisions_at_batch_32_equal_batch_1(policy_name, threshold):
    model = mixed_gates_model()
    tokens = random_batch(model, 32, seed=6)
    policy = build_policy(policy_name, 3, threshold, 1)
    pad = model.encoder.dictionary.pad()
    skipped_per_layer = torch.zeros(model.num_layers, dtype=torch.long)
    with torch.no_grad():
        logits, extra = model(tokens, classification_head_name=HEAD, exit_policy=policy)
        batched = extra["exits"]
        for i in range(32):
            one = tokens[i : i + 1, : int(tokens[i].ne(pad).sum())]
            single_logits, single = model(one, classification_head_name=HEAD, exit_policy=policy)
            s = single["exits"]
            for name in ("exit_layer", "layers_skipped", "layers_run", "gates_run", "exits_run"):
                assert int(getattr(s, name)) == int(getattr(batched, name)[i]), f"{name}, sample {i}"
            skipped_per_layer += s.skipped_per_layer
            torch.testing.assert_close(single_logits[0], logits[i], rtol=2e-3, atol=2e-3)
    assert torch.equal(batched.skipped_per_layer, skipped_per_layer)
    skipped = batched.layers_skipped
    assert 0 < int((skipped > 0).sum()) < 32, "some samples, not all, should skip a layer"
    assert torch.equal(batched.layers_run + batched.layers_skipped, batched.gates_run)


def test_a_skipped_layer_is_not_computed_and_has_no_exit_check():
    model = mixed_gates_model()
    tokens = random_batch(model, 16, seed=8)
    seen = []
    hooks = [layer.register_forward_hook(lambda m, i, o, n=n: seen.append((n, o.size(1))))
             for n, layer in enumerate(model.encoder.sentence_encoder.layers, start=1)]
    with torch.no_grad():
        _, extra = model(tokens, classification_head_name=HEAD, exit_policy=build_policy("none", 3))
    for h in hooks:
        h.remove()
    out = extra["exits"]
    computed = sum(b for _, b in seen)
    assert computed == int(out.layers_run.sum()) < 16 * model.num_layers


def test_skip_threshold_must_be_inside_0_1():
    with pytest.raises(UsageError, match=r"skip_threshold=1.5 is outside \(0, 1\]"):
        tiny_model(skip_gates=True, skip_threshold=1.5)


def test_gates_off_runs_every_layer_as_the_model_without_gates():
    """skip_threshold=1 (and a pass's gates_off): gates that skip layers are not asked; the model
    computes what the same weights without gates compute, and no gate is counted as run."""
    gated = mixed_gates_model()
    plain = spread_model()  # same seed, same weights for everything but the gates
    plain.load_state_dict({k: v for k, v in gated.state_dict().items() if not k.startswith("skip_gates.")}, strict=True)
    tokens = random_batch(gated, 16, seed=4)
    policy = build_policy("max_prob", 3, 0.9)
    with torch.no_grad():
        _, on = gated(tokens, classification_head_name=HEAD)
        assert int(on["exits"].layers_skipped.sum()) > 0  # the gates do skip layers
        lp, p = plain(tokens, classification_head_name=HEAD, exit_policy=policy)
        for off in (dict(gates_off=True), {}):
            if not off:
                gated.args.skip_threshold = 1.0  # the evaluation mode users ask for
            _, a = gated(tokens, classification_head_name=HEAD, **off)
            _, b = plain(tokens, classification_head_name=HEAD)
            for la, lb in zip(a["exits"].exit_logits, b["exits"].exit_logits):
                torch.testing.assert_close(la, lb)
            assert int(a["exits"].gates_run.sum()) == 0 and not a["exits"].gate_probs
            lg, g = gated(tokens, classification_head_name=HEAD, exit_policy=policy, **off)
            torch.testing.assert_close(lg, lp)
            assert torch.equal(g["exits"].exit_layer, p["exits"].exit_layer) and int(g["exits"].gates_run.sum()) == 0


def test_a_negative_gate_bias_starts_from_the_full_network():
    """skip_gate_bias=-3: every gate starts near sigmoid(-3), so no layer is skipped before training;
    the authors' default init starts near 0.5, skipping layers at random."""
    tokens = random_batch(tiny_model(num_classes=2), 16, seed=3)
    skipped = {}
    for bias in (None, -3.0):
        model = tiny_model(num_classes=2, skip_gates=True, skip_gate_bias=bias)
        with torch.no_grad():
            _, extra = model(tokens, classification_head_name=HEAD)
        skipped[bias] = int(extra["exits"].layers_skipped.sum())
    assert skipped[-3.0] == 0 and skipped[None] > 0, skipped
