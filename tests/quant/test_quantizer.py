import pytest
import torch

from dqsearch.quant.quantizer import (
    LearnableQuantizer,
    MinMaxQuantizer,
    PAMSQuantizer,
    channel_range,
    check_bits,
    fake_quantize,
)


@pytest.mark.parametrize("bits", [2, 4, 6, 8, 10, 16])
def test_round_trip_error_within_half_step(bits):
    torch.manual_seed(bits)
    x = torch.randn(4, 8, 5, 5) * 3
    q = LearnableQuantizer(8, 1, [bits])
    q.observe(x)
    s = q.scale[str(bits)].detach().view(1, -1, 1, 1)
    err = (q(x, bits) - x).abs()
    # float32 holds x/s + z to ~2^-24 relative: at 16 bits that is ~0.004 of a step
    assert (err <= s / 2 * 1.01 + 1e-7).all()


def test_values_land_on_the_integer_grid():
    x = torch.randn(2, 3, 4, 4)
    q = LearnableQuantizer(3, 1, [4])
    q.observe(x)
    s = q.scale["4"].view(1, -1, 1, 1)
    z = q.zero_point["4"].view(1, -1, 1, 1)
    codes = q(x, 4) / s + z
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert codes.min() >= -1e-4 and codes.max() <= 15 + 1e-4


def test_gradients_reach_scale_zero_point_and_input():
    torch.manual_seed(0)
    x = (torch.randn(2, 4, 6, 6) * 2).requires_grad_(True)
    q = LearnableQuantizer(4, 1, [4, 8])
    q.observe(x.detach())
    (q(x, 4) ** 2).sum().backward()
    assert q.scale["4"].grad is not None and q.scale["4"].grad.abs().sum() > 0
    assert q.zero_point["4"].grad is not None and q.zero_point["4"].grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0
    assert q.scale["8"].grad is None  # the other bit-width's parameters are untouched


def test_clipped_inputs_get_no_gradient():
    s, z = torch.tensor(0.1), torch.tensor(0.0)
    x = torch.tensor([-1.0, 0.05, 0.3, 100.0], requires_grad=True)
    fake_quantize(x, s, z, 4).sum().backward()
    assert x.grad[0] == 0 and x.grad[3] == 0  # below 0 and above 15·s are clipped
    assert x.grad[1] > 0 and x.grad[2] > 0


def test_frozen_scale_and_zero_point():
    q = LearnableQuantizer(2, 1, [8], learn_scale=False, learn_zero_point=False)
    assert not q.scale["8"].requires_grad and not q.zero_point["8"].requires_grad


def test_weights_quantize_per_output_channel():
    w = torch.randn(3, 2, 3, 3) * torch.tensor([0.01, 1.0, 100.0]).view(3, 1, 1, 1)
    q = LearnableQuantizer(3, 0, [8])
    q.observe(w)
    rel = ((q(w, 8) - w).abs().amax(dim=(1, 2, 3)) / w.abs().amax(dim=(1, 2, 3)))
    assert (rel < 0.01).all(), "each channel gets its own scale"


def test_percentile_calibration_ignores_outliers():
    x = torch.randn(1, 1, 100, 100)
    x[0, 0, 0, 0] = 1000.0
    lo, hi = channel_range(x, 1, percentile=99.9)
    assert hi.item() < 10
    lo, hi = channel_range(x, 1)
    assert hi.item() == 1000.0


def test_bits_validated():
    with pytest.raises(ValueError, match="2..16"):
        check_bits(1)
    q = LearnableQuantizer(1, 1, [8])
    with pytest.raises(KeyError, match="serves bit-widths"):
        q(torch.zeros(1, 1, 2, 2), 6)


def test_minmax_is_static_ste():
    q = MinMaxQuantizer(2, 1, [8])
    x = torch.randn(2, 2, 4, 4)
    q.observe(x)
    assert not any(p.requires_grad for p in q.parameters())
    assert q.rounding == "ste"
    big = x * 10
    assert (q(big, 8).abs().max() <= x.abs().max() + 1e-3), "activations keep the calibrated range"
    wq = MinMaxQuantizer(2, 0, [8], track=True)
    w = torch.randn(2, 3, 3, 3)
    wq(w, 8)
    assert wq.range_high.allclose(w.amax(dim=(1, 2, 3)))


def test_pams_clip_learns_alpha():
    q = PAMSQuantizer(2, 1, [4])
    x = torch.randn(3, 2, 4, 4) * 3
    q.observe(x)
    with torch.no_grad():
        q.alpha["4"].fill_(1.0)
    y = q(x, 4)
    assert y.abs().max() <= 1.0 + 1e-6
    y.sum().backward()
    assert q.alpha["4"].grad.abs().sum() > 0
