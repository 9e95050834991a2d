"""Rounding with a chosen backward pass: straight-through (STE) or distance-aware (DGM).

DGM (DynaQuant eq. 6, normalised): the forward pass is exact rounding; the backward pass uses the
derivative of the smooth staircase g(x) = ½·tanh(β·(x − ⌊x⌋ − ½)) / tanh(β/2) + ½, which is
largest half-way between integers and smallest at them. With g(0)=0 and g(1)=1 for every β, the
surrogate has unit slope on average, like the STE, but tells values near a rounding boundary apart
from values sitting on an integer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


def dgm_surrogate(x: Tensor, beta: float = 1.0) -> Tensor:
    """The smooth staircase g(x) whose derivative is DGM's gradient (exposed for tests and plots)."""
    frac = x - torch.floor(x)
    return torch.floor(x) + 0.5 * torch.tanh(beta * (frac - 0.5)) / math.tanh(beta / 2) + 0.5


def dgm_gradient(x: Tensor, beta: float = 1.0) -> Tensor:
    """g'(x): positive everywhere, β/(2·tanh(β/2)) at half-integers, smaller at integers."""
    t = torch.tanh(beta * (x - torch.floor(x) - 0.5))
    return (0.5 * beta / math.tanh(beta / 2)) * (1.0 - t * t)


class _DGMRound(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, beta: float) -> Tensor:  # noqa: D102
        ctx.save_for_backward(x)
        ctx.beta = beta
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        (x,) = ctx.saved_tensors
        return grad * dgm_gradient(x, ctx.beta), None


class _STERound(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        return grad


def dgm_round(x: Tensor, beta: float = 1.0) -> Tensor:
    """Round to nearest; backward through DGM's distance-aware gradient."""
    if beta <= 0:
        raise ValueError(f"DGM beta must be positive, got {beta}")
    return _DGMRound.apply(x, float(beta))


def ste_round(x: Tensor, beta: float = 1.0) -> Tensor:
    """Round to nearest; backward passes the gradient through unchanged (beta is ignored)."""
    return _STERound.apply(x)


ROUNDINGS: dict[str, Callable[[Tensor, float], Tensor]] = {"dgm": dgm_round, "ste": ste_round}
