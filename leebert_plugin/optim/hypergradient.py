"""Hypergradients of the bi-level problem, by finite differences (DARTS, Liu et al. 2019, Eq. 7-8).

    min_w  L_outer(theta*(w); D2)     s.t.  theta*(w) = argmin_theta  L_train(theta, w; D1)

One unrolled step theta' = theta - xi * grad_theta L_train(theta, w; b1) gives

    dL_outer(theta')/dw = -xi * grad^2_{w,theta} L_train(theta, w; b1) . v,   v = grad_theta' L_outer(theta'; b2)
                        ~ -xi * [grad_w L_train(theta + r v) - grad_w L_train(theta - r v)] / (2 r),  r = eps / ||v||

L_train is linear in the weights (sum_k w_k l_k), so grad_w L_train(theta +- r v) is just the vector of
term values l(theta +- r v): two forward passes give the hypergradient of every weight at once
(methods.md §2.5). Everything here is per sentence (sums divided by the number of sentences), as
fairseq normalises the real update.

What is exact and what is approximated. The target is the *exact* derivative of the one-step
unrolled objective L_outer(theta - xi grad_theta L_train(theta, w; b1); b2) in w, second order
included (the mixed Hessian-vector product); the only approximation in computing it is the central
finite difference, whose error is O(r^2) (tests: against double backward through the virtual step,
``create_graph=True``, relative error under 1e-3 in float64 and under 3% through the fp32 meta step).
That objective itself approximates the bi-level hypergradient dL_outer(theta*(w))/dw by one
unrolled step instead of the inner problem's solution (DARTS' approximation, as the paper's CLO
reading); ``virtual_step=False`` (darts1) drops the step too: v is taken at theta.
"""
import contextlib
from typing import Dict, Iterator, List, Sequence

import torch
from torch import Tensor



def model_params(model: torch.nn.Module) -> List[Tensor]:
    """theta: every trainable parameter of the model (the loss weights are not the model's)."""
    return [p for p in model.parameters() if p.requires_grad]


@contextlib.contextmanager
def fixed_rng(seed: int, params: Sequence[Tensor]) -> Iterator[None]:
    """Same dropout masks for every pass of one hypergradient, without touching the main RNG stream."""
    devices = sorted({p.device.index for p in params if p.is_cuda})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def term_vector(model, criterion, sample, names: Sequence[str], teacher=None) -> Tensor:
    """The loss terms on ``sample``, per sentence, in ``names`` order."""
    terms, _, targets = criterion.compute_terms(model, sample, teacher=teacher)
    return torch.stack([terms[n] for n in names]) / targets.numel()


def weighted_loss(model, criterion, sample, weights: Dict[str, Tensor]) -> Tensor:
    terms, _, targets = criterion.compute_terms(model, sample)
    return sum(weights[n] * v for n, v in terms.items()) / targets.numel()


def outer_loss(model, criterion, sample) -> Tensor:
    terms, _, targets = criterion.compute_terms(model, sample)
    return criterion.outer_objective(terms) / targets.numel()


def _grads(loss: Tensor, params: Sequence[Tensor]) -> List[Tensor]:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def hypergradient(
    model, criterion, weights: Dict[str, Tensor], b_inner, b_outer, xi: float, eps: float = 0.01,
    virtual_step: bool = True, seed: int = 0,
) -> Tensor:
    """dL_outer(b_outer) / dw_k for every term weight w_k (``weights``: their current values, by
    name), by central finite differences on b_inner.

    ``model`` is the bare model, never a DDP wrapper: these passes are not training steps.
    ``virtual_step=False`` is the first-order variant (darts1): v is the outer gradient at theta itself.
    theta is restored bit for bit afterwards.
    """
    params = model_params(model)
    names = list(weights)
    backup = [p.detach().clone() for p in params]
    try:
        with fixed_rng(seed, params):
            if virtual_step:
                grads = _grads(weighted_loss(model, criterion, b_inner, weights), params)
                with torch.no_grad():
                    for p, g in zip(params, grads):
                        p.sub_(xi * g)
        with fixed_rng(seed + 1, params):
            v = _grads(outer_loss(model, criterion, b_outer), params)
        norm = torch.sqrt(sum((g ** 2).sum() for g in v))
        if not torch.isfinite(norm) or float(norm) == 0.0:
            return torch.zeros(len(names), device=backup[0].device)
        r = eps / norm
        with torch.no_grad():
            for p, b in zip(params, backup):
                p.copy_(b)
        with torch.no_grad(), fixed_rng(seed + 2, params):
            # stop-gradient targets (teachers) stay at theta: the derivative we need is the
            # training gradient's, which does not flow through them
            teacher = criterion.compute_terms(model, b_inner)[1]
        values = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, b, g in zip(params, backup, v):
                    p.copy_(b + sign * r * g)
                with fixed_rng(seed + 2, params):
                    values.append(term_vector(model, criterion, b_inner, names, teacher))
        return -xi * (values[0] - values[1]) / (2 * r)
    finally:
        with torch.no_grad():
            for p, b in zip(params, backup):
                p.copy_(b)
