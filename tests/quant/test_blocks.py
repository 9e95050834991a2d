import pytest
import torch
from torch import nn

from dqsearch.quant.blocks import from_float


def make(conv, mode="dynamic", candidates=(4, 8), **kw):
    torch.manual_seed(0)
    return from_float(conv, mode=mode, candidates=candidates, **kw)


@pytest.mark.parametrize("conv", [
    nn.Conv2d(6, 5, 5, stride=2, padding=2),
    nn.ConvTranspose2d(6, 5, 5, stride=2, padding=2, output_padding=1),
])
def test_mixture_with_one_hot_equals_fixed_branch(conv):
    """The grouped per-image mixture must compute exactly each image's chosen branch."""
    block = make(conv)
    x = torch.randn(3, 6, 8, 8)
    block.input_quantizer.observe(x)
    block.train()
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    block.external_probs = probs
    y = block(x)
    for i, b in enumerate([4, 8, 4]):
        ref = block._quantized(x[i : i + 1], b)
        assert torch.allclose(y[i : i + 1], ref, atol=1e-5)


def test_soft_mixture_is_between_branches_and_trains_selector():
    block = make(nn.Conv2d(4, 4, 3, padding=1))
    x = torch.randn(2, 4, 6, 6)
    block.input_quantizer.observe(x)
    block.train()
    y = block(x)
    y.pow(2).mean().backward()
    assert block.selector.mlp[2].weight.grad.abs().sum() > 0  # zero-initialised output layer
    assert block.last_probs.shape == (2, 2)


def test_inference_runs_each_image_at_its_chosen_bits():
    block = make(nn.Conv2d(4, 3, 3, padding=1), candidates=(2, 8))
    x = torch.randn(2, 4, 6, 6)
    block.input_quantizer.observe(x)
    block.eval()
    block.external_probs = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    y = block(x)
    assert block.last_bits.tolist() == [8, 2]
    assert torch.allclose(y[0:1], block._quantized(x[0:1], 8))
    assert torch.allclose(y[1:2], block._quantized(x[1:2], 2))


def test_forced_bits_override_selector():
    block = make(nn.Conv2d(4, 3, 3, padding=1), candidates=(4, 8))
    x = torch.randn(1, 4, 6, 6)
    block.eval()
    block.forced_bits = 4
    block(x)
    assert block.last_bits.tolist() == [4]


def test_fixed_8bit_close_to_float_and_fp32_exact():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    x = torch.randn(2, 8, 10, 10)
    fp = make(conv, mode="fp32", candidates=())
    assert torch.equal(fp(x), conv(x))
    q8 = make(conv, mode="fixed", candidates=(8,))
    rel = (q8(x) - conv(x)).norm() / conv(x).norm()
    assert 0 < rel < 0.02


def test_mask_of_masked_conv_is_respected():
    from compressai.layers import MaskedConv2d

    conv = MaskedConv2d(4, 4, 5, padding=2, mask_type="A")
    q = make(conv, mode="fixed", candidates=(8,))
    assert torch.equal(q.mask, conv.mask)
    x = torch.zeros(1, 4, 5, 5)
    x[..., 3:, :] = 1.0  # only "future" pixels are non-zero
    q.input_quantizer.observe(torch.randn(1, 4, 5, 5))
    out = q(x)
    assert torch.allclose(out[..., 2, 2], q.bias.view(1, -1).detach(), atol=1e-6)


def test_bad_modes_rejected():
    with pytest.raises(ValueError, match="exactly one bit-width"):
        make(nn.Conv2d(2, 2, 1), mode="fixed", candidates=(4, 8))
    with pytest.raises(ValueError, match="at least two"):
        make(nn.Conv2d(2, 2, 1), mode="dynamic", candidates=(8,))
    with pytest.raises(ValueError, match="padded"):
        make(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), mode="fixed", candidates=(8,))


@pytest.mark.parametrize("conv", [
    nn.Conv2d(6, 5, 5, stride=2, padding=2),
    nn.ConvTranspose2d(6, 5, 5, stride=2, padding=2, output_padding=1),
])
@pytest.mark.parametrize("fusion", ["output", "input-mix"])
def test_training_path_equals_inference_path_for_a_hard_choice(conv, fusion):
    """With the straight-through sample, training runs exactly the network the decoder runs."""
    block = make(conv, candidates=(4, 6, 8), fusion=fusion,
                 selector_options={"init_std": 1.0, "features": "mean-std"})
    x = torch.randn(6, 6, 8, 8)
    block.input_quantizer.observe(x)
    block.selector.temperature.fill_(0.5)
    block.train()
    y_train = block(x)
    chosen = block.last_bits.clone()
    assert set(block.last_weights.detach().unique().tolist()) <= {0.0, 1.0}
    block.eval()
    block.external_probs = nn.functional.one_hot(
        torch.tensor([block.candidates.index(int(b)) for b in chosen]), 3).float()
    y_infer = block(x)
    assert torch.equal(block.last_bits, chosen)
    assert torch.allclose(y_train, y_infer, atol=1e-6)


def test_output_fusion_gradient_equals_full_autograd():
    """The cheap hard-ST path gives w and the network the same gradients as Σ_k w_k·y_k computed
    with every branch in the graph."""
    conv = nn.Conv2d(4, 3, 3, padding=1)
    block = make(conv, candidates=(4, 6, 8))
    x = torch.randn(5, 4, 6, 6)
    block.input_quantizer.observe(x)
    block.train()
    logits = torch.randn(5, 3)
    hard = nn.functional.one_hot(logits.argmax(-1), 3).float()
    target = torch.randn(5, 3, 6, 6)

    def grads(naive: bool):
        soft = logits.softmax(-1).requires_grad_(True)
        w = hard + (soft - soft.detach())
        block.zero_grad()
        if naive:
            ys = torch.stack([block._quantized(x, b) for b in block.candidates], dim=1)
            y = torch.einsum("bk,bk...->b...", w, ys)
        else:
            block.external_probs = w
            y = block(x)
            block.external_probs = None
        ((y - target) ** 2).sum().backward()
        return soft.grad, block.weight.grad.clone(), block.input_quantizer.scale["6"].grad

    for a, b in zip(grads(False), grads(True), strict=True):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-5, rtol=1e-4)
