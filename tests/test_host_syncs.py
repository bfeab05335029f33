"""Host syncs of the early-exit forward: one per exit to decide who leaves, one per gated layer to
decide who runs it, a constant few per forward, and none per plain layer."""
import torch

from helpers import HEAD, mixed_gates_model, random_batch, spread_model
from leebert_plugin.exits.policies import AssignedExit
from leebert_plugin.modules.host_syncs import HostSyncCounter

PER_FORWARD = 2  # the constant allowance: the initial padding check, and one spare


def spread_exits(bsz: int, num_exits: int) -> torch.Tensor:
    """Every exit taken by some samples, in an order unlike the batch's."""
    return torch.randperm(bsz, generator=torch.Generator().manual_seed(0)) % num_exits


def counted_forward(model, tokens, policy):
    with torch.no_grad(), HostSyncCounter() as syncs:
        _, extra = model(tokens, classification_head_name=HEAD, exit_policy=policy)
    return syncs, extra["exits"]


def test_counter_sees_value_reads_and_mask_indexing_only():
    t = torch.arange(6)
    mask = t > 2
    with HostSyncCounter() as syncs:
        bool(mask.any()), int(t[0]), float(t[1]), t[2].item(), t.tolist(), t.nonzero(), t.cpu()
        t[mask], t[:, None][mask], t.index_select(0, torch.tensor([1, 2])), t[1:3], t[torch.tensor([0])]
        t[mask] = 0
    assert dict(syncs.calls) == {"bool": 1, "int": 1, "float": 1, "item": 1, "tolist": 1, "nonzero": 1, "cpu": 1,
                                 "getitem[bool mask]": 2, "setitem[bool mask]": 1}


def test_one_sync_per_exit_without_gates():
    model = spread_model()  # 4 layers, an exit at each
    tokens = random_batch(model, 16, seed=2)
    syncs, out = counted_forward(model, tokens, AssignedExit(spread_exits(16, 4)))
    assert sorted(set(out.exit_layer.tolist())) == [1, 2, 3, 4], "samples should leave at every exit"
    assert syncs.total <= len(model.exit_layers) + PER_FORWARD, dict(syncs.calls)


def test_syncs_do_not_grow_with_the_number_of_layers():
    """Two exits either way: after layers 1 and 2 of 2, or after layers 3 and 6 of 6."""
    counts = []
    for layers, exits in ((2, "1,2"), (6, "3,6")):
        model = spread_model(encoder_layers=layers, exit_layers=exits)
        tokens = random_batch(model, 16, seed=2)
        syncs, out = counted_forward(model, tokens, AssignedExit(spread_exits(16, 2)))
        assert len(set(out.exit_layer.tolist())) == 2
        counts.append(syncs.total)
    assert counts[0] == counts[1] <= 2 + PER_FORWARD, counts


def test_with_gates_one_more_sync_per_gated_layer():
    model = mixed_gates_model()
    tokens = random_batch(model, 16, seed=6)
    syncs, out = counted_forward(model, tokens, AssignedExit(spread_exits(16, 4)))
    assert 0 < int(out.layers_skipped.sum()), "some layers should be skipped for the gates to bite"
    assert len(set(out.exit_layer.tolist())) > 1
    assert syncs.total <= len(model.exit_layers) + model.num_layers + PER_FORWARD, dict(syncs.calls)
