import math

import pytest
import torch

from dqsearch.quant.rounding import dgm_gradient, dgm_round, dgm_surrogate, ste_round


def grad_of(fn, x, **kw):
    x = x.clone().requires_grad_(True)
    fn(x, **kw).sum().backward()
    return x.grad


def test_forward_is_exact_rounding():
    x = torch.linspace(-5.3, 5.3, 1001)
    assert torch.equal(dgm_round(x), torch.round(x))
    assert torch.equal(ste_round(x), torch.round(x))


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0, 5.0])
def test_dgm_gradient_shape(beta):
    x = torch.linspace(-3, 3, 6001)
    g = grad_of(dgm_round, x, beta=beta)
    assert (g > 0).all(), "positive everywhere"
    half = grad_of(dgm_round, torch.tensor([-1.5, 0.5, 2.5]), beta=beta)
    integer = grad_of(dgm_round, torch.tensor([-1.0, 0.0, 2.0]), beta=beta)
    assert torch.allclose(half, torch.full_like(half, g.max()), atol=1e-4), "largest at half-integers"
    assert torch.allclose(integer, torch.full_like(integer, g.min()), atol=1e-4), "smallest at integers"
    assert half[0] > integer[0]
    assert half[0].item() == pytest.approx(beta / (2 * math.tanh(beta / 2)), rel=1e-5)


@pytest.mark.parametrize("beta", [0.3, 1.0, 4.0])
def test_surrogate_normalised(beta):
    assert dgm_surrogate(torch.tensor(0.0), beta).item() == pytest.approx(0.0, abs=1e-6)
    assert dgm_surrogate(torch.tensor(1.0 - 1e-7), beta).item() == pytest.approx(1.0, abs=1e-5)
    # its derivative is the DGM gradient (finite differences)
    x = torch.tensor([0.2, 0.45, 1.7], dtype=torch.float64)
    eps = 1e-6
    fd = (dgm_surrogate(x + eps, beta) - dgm_surrogate(x - eps, beta)) / (2 * eps)
    assert torch.allclose(fd, dgm_gradient(x, beta), atol=1e-6)


def test_beta_one_matches_paper_form():
    x = torch.linspace(0, 1, 11)
    paper = 0.5 * (1 - torch.tanh(x - torch.floor(x) - 0.5) ** 2) / math.tanh(0.5)
    assert torch.allclose(dgm_gradient(x, 1.0), paper)


def test_ste_passes_gradient_unchanged():
    g = grad_of(ste_round, torch.linspace(-2, 2, 9))
    assert torch.equal(g, torch.ones(9))


def test_dgm_rejects_nonpositive_beta():
    with pytest.raises(ValueError, match="beta"):
        dgm_round(torch.zeros(1), beta=0.0)
