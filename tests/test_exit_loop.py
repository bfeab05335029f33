"""The layer loop: per-sample decisions at any batch size, and a batch that really shrinks."""
import pytest
import torch

from helpers import HEAD, random_batch, spread_model, tiny_model
from leebert_plugin.exits.policies import build_policy, entropy

POLICIES = [
    ("entropy", None),
    ("normalized_entropy", None),
    ("max_prob", None),
    ("patience", 1),
    ("pcee", 2),
    ("regression_patience", 1),  # on a one-output (regression) model
    ("per_exit_entropy", 1),  # a threshold of its own at each exit
]


def classes_for(name: str) -> int:
    return 1 if name == "regression_patience" else 3





def full_depth(model, tokens):
    _, extra = model(tokens, classification_head_name=HEAD)
    return extra["exits"]


def halfway(scores):
    s = scores.sort().values
    mid = len(s) // 2
    return float((s[mid - 1] + s[mid]) / 2)


def mixed_threshold(name, model, tokens):
    """A threshold halfway between two neighbouring sample scores at the first exit."""
    first = full_depth(model, tokens).exit_logits[0]
    if name == "regression_patience":  # how far the prediction moves from exit 1 to exit 2
        scores = (full_depth(model, tokens).exit_logits[1] - first).abs().view(-1)
    elif name == "max_prob":
        scores = torch.softmax(first, -1).amax(-1)
    else:
        scores = entropy(first) / (torch.log(torch.tensor(3.0)) if name in ("normalized_entropy", "pcee") else 1.0)
    return halfway(scores)


def policy_for(name, patience, model, tokens):
    if name == "per_exit_entropy":  # each exit's own halfway point: no two alike
        exits = full_depth(model, tokens).exit_logits[:-1]
        taus = [halfway(entropy(logits) / torch.log(torch.tensor(3.0))) for logits in exits]
        assert len(set(taus)) == len(taus)
        return build_policy(name, 3, None, 1, taus)
    threshold = None if name == "patience" else mixed_threshold(name, model, tokens)
    return build_policy(name, classes_for(name), threshold, patience or 1)


@pytest.mark.parametrize("head", ["pabee", "deebert", "smartbert", "pabee-mean"])
@pytest.mark.parametrize("name, patience", POLICIES)
def test_batch_of_32_decides_like_batch_of_1(name, patience, head):
    head, _, pooling = head.partition("-")
    model = spread_model(classes_for(name), exit_head=head, exit_pooling=pooling or "cls")
    tokens = random_batch(model, 32)
    policy = policy_for(name, patience, model, tokens)
    with torch.no_grad():
        logits, extra = model(tokens, classification_head_name=HEAD, exit_policy=policy)
        batched = extra["exits"]
        for i in range(32):
            one = tokens[i : i + 1, : int(tokens[i].ne(model.encoder.dictionary.pad()).sum())]
            single_logits, single = model(one, classification_head_name=HEAD, exit_policy=policy)
            for name in ("exit_layer", "layers_run", "exits_run"):
                assert int(getattr(single["exits"], name)) == int(getattr(batched, name)[i]), f"{name}, sample {i}"
            # the widened weights amplify float noise between padded and unpadded batches
            torch.testing.assert_close(single_logits[0], logits[i], rtol=2e-3, atol=2e-3)
    assert len(set(batched.exit_layer.tolist())) > 1, "decisions should be mixed for this test to bite"


@pytest.mark.parametrize("name, patience", POLICIES)
def test_each_sample_leaves_with_its_full_depth_exit_logits(name, patience):
    model = spread_model(classes_for(name))
    tokens = random_batch(model, 32, seed=3)
    policy = policy_for(name, patience, model, tokens)
    with torch.no_grad():
        reference = full_depth(model, tokens)
        logits, extra = model(tokens, classification_head_name=HEAD, exit_policy=policy)
    for i, layer in enumerate(extra["exits"].exit_layer.tolist()):
        k = model.exit_layers.index(layer)
        torch.testing.assert_close(logits[i], reference.exit_logits[k][i], rtol=1e-4, atol=1e-5)


def test_later_layers_run_only_on_samples_still_in_the_batch():
    model = spread_model()
    tokens = random_batch(model, 32, seed=5)
    policy = policy_for("entropy", None, model, tokens)
    seen = []
    hooks = [
        layer.register_forward_hook(lambda mod, inp, out, n=n: seen.append((n, out.size(1))))
        for n, layer in enumerate(model.encoder.sentence_encoder.layers, start=1)
    ]
    with torch.no_grad():
        _, extra = model(tokens, classification_head_name=HEAD, exit_policy=policy)
    for h in hooks:
        h.remove()
    exit_layer = extra["exits"].exit_layer
    expected = [(n, int((exit_layer >= n).sum())) for n in range(1, model.num_layers + 1)]
    expected = [(n, b) for n, b in expected if b > 0]
    assert seen == expected
    assert seen[-1][1] < 32
    assert torch.equal(extra["exits"].layers_run, exit_layer)
    exit_no = torch.tensor([model.exit_layers.index(layer) + 1 for layer in exit_layer.tolist()])
    assert torch.equal(extra["exits"].exits_run, exit_no)  # every exit up to its own was checked


def test_never_exit_policy_equals_last_exit_at_full_depth():
    model = spread_model()
    tokens = random_batch(model, 32, seed=7)
    with torch.no_grad():
        reference = full_depth(model, tokens)
        logits, extra = model(tokens, classification_head_name=HEAD, exit_policy=build_policy("none", 3))
    torch.testing.assert_close(logits, reference.exit_logits[-1], rtol=1e-5, atol=1e-6)
    assert extra["exits"].exit_layer.tolist() == [model.num_layers] * 32


def test_exits_at_a_subset_of_layers():
    model = spread_model(exit_layers="2,4")
    tokens = random_batch(model, 16, seed=9)
    policy = build_policy("max_prob", 3, 0.0)  # everyone is confident enough at the first exit
    with torch.no_grad():
        reference = full_depth(model, tokens)
        _, extra = model(tokens, classification_head_name=HEAD, exit_policy=policy)
    assert model.exit_layers == [2, 4]
    assert len(reference.exit_logits) == 2
    assert extra["exits"].exit_layer.tolist() == [2] * 16


def test_full_depth_matches_fairseq_encoder():
    """The loop computes the same last hidden state as fairseq's own TransformerEncoder."""
    model = spread_model()
    tokens = random_batch(model, 8, seed=11)
    with torch.no_grad():
        _, extra = model(tokens, classification_head_name=HEAD, return_exit_states=True)
        features, _ = model.encoder.extract_features(tokens)
    torch.testing.assert_close(extra["exits"].exit_states[-1].transpose(0, 1), features)


def test_exit_layers_are_sorted_and_deduplicated_with_one_line_and_bad_ones_refused(caplog):
    from leebert_plugin.errors import UsageError
    from leebert_plugin.models.exit_roberta import parse_exit_layers

    assert parse_exit_layers("2,4", 4) == [2, 4] and not caplog.records
    assert parse_exit_layers("4,2,4", 4) == [2, 4]
    assert [r.getMessage() for r in caplog.records] == ["exit_layers='4,2,4' read as 2,4 (sorted, each layer once)"]
    with pytest.raises(UsageError, match="no exit at the last layer"):
        parse_exit_layers("1,2", 4)
    with pytest.raises(UsageError, match="outside 1..4"):
        parse_exit_layers("0,4", 4)
