"""Two gloo workers on CPU: the meta step keeps the learned loss weights identical on both ranks."""
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from helpers import bilevel_training, free_port, leebert, sample_for, tiny_model
from leebert_plugin.optim.hypergradient import hypergradient


def _setup():
    model = tiny_model(num_classes=2, dropout=0.0, attention_dropout=0.0)
    crit = leebert()
    return model, crit, bilevel_training(model, crit, w_lr=0.05, xi=1e-3)


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model, crit, bilevel = _setup()
    for step in range(3):
        b1, b2 = sample_for(model, 8, seed=10 + step + 100 * rank), sample_for(model, 8, seed=20 + step + 100 * rank)
        if rank == 1 and step == 1:
            b2 = None  # this worker's batch had no D2 example: it joins the all-reduce with nothing
        bilevel.meta_step(model, crit, b1, b2, step, lr=1e-3)
    torch.save(bilevel.weights.logits.detach(), os.path.join(out_dir, f"rank{rank}.pt"))
    # Both ranks leave gloo together: a rank that tears its pair down while the other still has the
    # last all-reduce's transport threads running aborted once in CI ("terminate called without an
    # active exception").
    dist.barrier()
    dist.destroy_process_group()


def test_two_workers_keep_identical_weights_equal_to_the_mean_of_their_hypergradients(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    w0, w1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(w0, w1)  # different batches per rank: only the all-reduce makes them agree
    assert float(w0.abs().max()) > 0  # they moved
    # one process, the same batches: at step 1 only rank 0's hypergradient counts
    model, crit, bilevel = _setup()
    for step in range(3):
        seed = bilevel.seed * 1_000_003 + step
        weights = bilevel.current(bilevel.weights.names)
        grads = []
        for rank in (0, 1):
            b1 = sample_for(model, 8, seed=10 + step + 100 * rank)
            b2 = sample_for(model, 8, seed=20 + step + 100 * rank)
            if not (rank == 1 and step == 1):
                g = hypergradient(model, crit, weights, b1, b2, 1e-3, 0.01, True, seed)
                g = 0.5 * (g + hypergradient(model, crit, weights, b2, b1, 1e-3, 0.01, True, seed + 7))
                grads.append(g)
        g = sum(grads) / len(grads)
        bilevel.optimizer.zero_grad()
        torch.autograd.backward(bilevel.weights.weights(), g / 1e-3)  # per unit of virtual step (xi 1e-3)
        bilevel.optimizer.step()
    torch.testing.assert_close(bilevel.weights.logits.detach(), w0, rtol=1e-5, atol=1e-6)
