"""The FLOPs formula against torch's count of the matrix products actually run."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from helpers import HEAD, mixed_gates_model, random_batch, tiny_model
from leebert_plugin.exits.flops import full_model_flops, layer_macs, sample_flops
from leebert_plugin.exits.policies import build_policy


def counted(fn) -> int:
    # the math attention kernel runs plain matmuls, which the counter sees (the fused CPU kernel it misses)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("length", [1, 7, 33])
def test_layer_formula_matches_the_count(length):
    model = tiny_model()
    layer = model.encoder.sentence_encoder.layers[0]
    x = torch.randn(length, 1, 64)
    assert counted(lambda: layer(x, encoder_padding_mask=None)) == 2 * int(layer_macs(torch.tensor(length), 64, 128))


@pytest.mark.parametrize("make, policy", [
    (lambda: tiny_model(num_classes=3, exit_head="pabee"), ("max_prob", 0.5)),
    (lambda: tiny_model(num_classes=3, exit_head="deebert"), ("patience", None)),
    (lambda: mixed_gates_model(), ("entropy", 0.9)),
])
def test_per_sample_flops_of_an_early_exit_pass_match_the_count(make, policy):
    model = make()
    name, threshold = policy
    pol = build_policy(name, 3, threshold, 1)
    tokens = random_batch(model, 6, seed=12)
    pad = model.encoder.dictionary.pad()
    for i in range(6):
        one = tokens[i : i + 1, : int(tokens[i].ne(pad).sum())]
        result = {}

        def run():
            result["out"] = model(one, classification_head_name=HEAD, exit_policy=pol)[1]["exits"]

        total = counted(run)
        out = result["out"]
        formula = sample_flops(model, HEAD, torch.tensor([one.size(1)]), out.layers_run, out.exits_run, out.gates_run)
        assert int(formula) == total, f"sample {i}"


def test_full_model_flops_is_every_layer_plus_the_last_classifier():
    model = tiny_model(num_classes=2)
    one = random_batch(model, 1, seed=3, min_len=9, max_len=9)
    expected = 4 * 2 * int(layer_macs(torch.tensor(9), 64, 128)) + 2 * (64 * 64 + 64 * 2)
    assert int(full_model_flops(model, HEAD, torch.tensor([9]))) == expected
    # and a never-exit pass costs that plus the three intermediate exits
    out = model(one, classification_head_name=HEAD, exit_policy=build_policy("none", 2))[1]["exits"]
    assert int(sample_flops(model, HEAD, torch.tensor([9]), out.layers_run, out.exits_run, out.gates_run)) == \
        expected + 3 * 2 * (64 * 64 + 64 * 2)
