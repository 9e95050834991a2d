import math

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


def test_selector_logits_differ_between_images(sample_paths):
    """A fresh selector already tells two photos apart (small random output layer, mean-std
    features of the pooled first-layer output), so a per-image choice can be learned."""
    from dqsearch.data import load_image
    from dqsearch.models import build_model
    from dqsearch.quant.wrap import QuantPolicy, quantized_layers, wrap

    torch.manual_seed(0)
    model = wrap(build_model("bmshj2018-hyperprior", N=16, M=24),
                 QuantPolicy.dynamic((6, 8, 10), selector="global"))
    first = quantized_layers(model)["g_a.0"]
    x = torch.stack([load_image(p)[:, :64, :64] for p in sample_paths[:2]])
    logits = first.global_selector(first(x))
    assert not torch.allclose(logits[0], logits[1], atol=1e-6)


def test_straight_through_sample_is_one_hot_with_soft_gradient():
    from dqsearch.quant.selector import relaxed_sample

    torch.manual_seed(0)
    logits = torch.randn(16, 3, requires_grad=True)
    w, p = relaxed_sample(logits, 1.0, training=True, relaxation="st")
    assert set(w.detach().unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(w.detach().sum(-1), torch.ones(16))
    assert torch.allclose(p, logits.softmax(-1))
    (w * torch.tensor([6.0, 8.0, 10.0])).sum().backward()
    assert logits.grad.abs().sum() > 0
    w_eval, _ = relaxed_sample(logits, 1.0, training=False)
    assert torch.equal(w_eval.argmax(-1), logits.argmax(-1))


def test_model_bits_loss_is_eq9_on_selector_probabilities():
    """L_bits = mean over layers of Σ_k p_lk·b_k with p = softmax(logits), not the Gumbel sample."""
    from dqsearch.models import build_model
    from dqsearch.quant.wrap import QuantPolicy, dynamic_layers, model_bits_loss, quantized_layers, wrap

    torch.manual_seed(0)
    model = wrap(build_model("bmshj2018-hyperprior", N=16, M=24),
                 QuantPolicy.dynamic((6, 8, 10), selector="global"))
    first = quantized_layers(model)["g_a.0"]
    torch.nn.init.normal_(first.global_selector.mlp[2].weight, std=1.0)
    model.train()
    x = torch.rand(2, 3, 64, 64)
    model(x)
    with torch.no_grad():
        p = first.global_selector(first(x)).softmax(-1)  # [batch, layers, K]
    want = (p @ torch.tensor([6.0, 8.0, 10.0])).mean()
    assert model_bits_loss(model).item() == pytest.approx(want.item(), rel=1e-5)
    weights = torch.stack([m.last_weights for m in dynamic_layers(model).values()], dim=1)
    assert set(weights.detach().unique().tolist()) <= {0.0, 1.0}  # the sample is not what L_bits uses


def test_mutual_information_between_image_and_choice():
    from dqsearch.quant.selector import mutual_information

    same = torch.tensor([[0.2, 0.8], [0.2, 0.8]])
    assert mutual_information(same).item() == pytest.approx(0.0, abs=1e-6)
    split = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert mutual_information(split).item() == pytest.approx(math.log(2), rel=1e-5)
