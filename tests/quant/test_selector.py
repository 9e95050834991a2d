import pytest
import torch

from dqsearch.quant.selector import (
    BitSelector,
    TemperatureSchedule,
    bits_loss,
    expected_bits,
    sample_probabilities,
)


def test_selector_shapes_and_eval_one_hot():
    torch.manual_seed(0)
    sel = BitSelector(16, num_choices=3, num_outputs=5, pool=2, hidden=8)
    torch.nn.init.normal_(sel.mlp[2].weight)
    x = torch.randn(4, 16, 9, 7)
    logits = sel(x)
    assert logits.shape == (4, 5, 3)
    p = sample_probabilities(logits, 1.0, training=False)
    assert torch.equal(p.sum(-1), torch.ones(4, 5))
    assert set(p.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(p.argmax(-1), logits.argmax(-1))


def test_training_probabilities_are_soft_and_differentiable():
    torch.manual_seed(0)
    logits = torch.randn(8, 3, requires_grad=True)
    p = sample_probabilities(logits, 5.0, training=True)
    assert torch.allclose(p.sum(-1), torch.ones(8))
    assert ((p > 0) & (p < 1)).all()
    (p * torch.tensor([6.0, 8.0, 10.0])).sum().backward()
    assert logits.grad.abs().sum() > 0


def test_bits_loss_hand_computation():
    p1 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])  # 6 and 9 → mean 7.5
    p2 = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])  # 10
    c = (6, 8, 10)
    assert expected_bits(p1, c).tolist() == [6.0, 9.0]
    assert bits_loss([(p1, c), (p2, c)]).item() == pytest.approx((7.5 + 10) / 2)


def test_temperature_anneals():
    sched = TemperatureSchedule(5.0, 0.5, 100)
    assert sched(0) == pytest.approx(5.0)
    assert sched(50) == pytest.approx((5.0 * 0.5) ** 0.5)
    assert sched(100) == pytest.approx(0.5) and sched(1000) == pytest.approx(0.5)
