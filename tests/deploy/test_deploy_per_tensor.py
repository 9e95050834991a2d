"""A model trained with per-tensor activation quantizers runs in int8 with its learned input
quantizer: QLinearConv's input is the fake-quantized one, the output differs by the requantization."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from dqsearch_ort.deployment import session
from dqsearch_ort.onnx_graph import export, quantize_graph, shuffles_in_uint8
from dqsearch_ort.session import SessionConfig
from torch import nn

from dqsearch.deploy.modules import transform_module
from dqsearch.integer.params import input_params, layer_quant, u8_params
from dqsearch.quant.blocks import from_float
from dqsearch.quant.wrap import calibrate, quantized_layers


def _layer(conv: nn.Module, bits: int, granularity: str = "tensor"):
    torch.manual_seed(bits)
    q = from_float(conv, mode="fixed", candidates=(bits,), activation_granularity=granularity).eval()
    x = torch.randn(2, conv.in_channels, 12, 16) * torch.linspace(0.5, 3, conv.in_channels).view(1, -1, 1, 1)
    q.input_quantizer.observe(x + 0.3)
    with torch.no_grad():  # off-centre, learned-looking (s, z): not exactly the calibrated ones
        for p in (q.input_quantizer.scale, q.input_quantizer.zero_point):
            p[str(bits)].mul_(0.9)
    return q, torch.randn(1, conv.in_channels, 12, 16) * 2 + 0.3


def _graph(q: nn.Module, bits: int, out_range, extra_outputs=()):
    """The layer as the export builds it (sub-pixel for a deconvolution), in int8 arithmetic."""
    lq = layer_quant("t.0", q, bits)
    model = nn.Module()
    model.t = nn.Sequential(q)
    mod, convs = transform_module(model, "t", {"t.0": lq}, use_subpixel=True)
    g = quantize_graph(export(mod, lq.weight.shape[0] if lq.transposed else lq.weight.shape[1]), convs,
                       "int8", {"t.0": out_range})
    g = shuffles_in_uint8(g)
    for name in extra_outputs:
        g.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return g, lq


CASES = [(nn.Conv2d(6, 5, 5, stride=2, padding=2), 8), (nn.Conv2d(6, 5, 3, padding=1), 6),
         (nn.ConvTranspose2d(6, 5, 5, stride=2, padding=2, output_padding=1), 8)]


@pytest.mark.parametrize("conv,bits", CASES)
def test_int8_input_is_the_fake_quantized_input(conv, bits):
    q, x = _layer(conv, bits)
    with torch.no_grad():
        ref_in = q.input_quantizer(x, bits).numpy()
        y = q(x).numpy()
    g, lq = _graph(q, bits, (float(y.min()), float(y.max())), ["t.0@x.dq"])
    assert lq.x_per_tensor
    assert input_params(lq) == (float(lq.x_scale[0]), int(lq.x_zero[0]))
    x_dq = session(g).run(["t.0@x.dq"], {"x": x.numpy()})[0]
    # identical up to float32 ties in x/s (QuantizeLinear and fake_quantize round the same quotient)
    assert np.mean(x_dq == ref_in) > 0.999
    assert np.abs(x_dq - ref_in).max() <= lq.x_scale[0] * 1.0001


@pytest.mark.parametrize("conv,bits", CASES)
def test_qlinearconv_output_is_the_requantized_fake_quantized_output(conv, bits, tmp_path):
    """The fused integer kernel (checked: QLinearConv runs) computes the fake-quantized conv output
    requantized to uint8 over its range: equal codes but for float rounding at code boundaries."""
    q, x = _layer(conv, bits)
    with torch.no_grad():
        y = q(x).numpy()
    lo, hi = float(y.min()), float(y.max())
    g, _ = _graph(q, bits, (lo, hi))
    opt = tmp_path / "opt.onnx"
    SessionConfig().session(g, optimized_path=str(opt))
    assert "QLinearConv" in [n.op_type for n in onnx.load(str(opt)).graph.node]
    out = session(g).run(None, {"x": x.numpy()})[0]
    so, zo = u8_params(lo, hi)
    ref = (np.clip(np.round(y / np.float32(so)) + zo, 0, 255) - zo) * np.float32(so)
    codes_off = np.abs(out - ref) / so
    # at most one output code, where y is within the int32 bias rounding (<= s_x s_w / 2) or float
    # rounding of the requantization multiplier of a code boundary: a few percent of the values
    assert codes_off.max() <= 1.0001
    assert np.mean(codes_off < 1e-3) > 0.95


def test_per_channel_model_gets_the_union_approximation():
    q, x = _layer(nn.Conv2d(6, 5, 3, padding=1), 8, granularity="channel")
    lq = layer_quant("t.0", q, 8)
    assert not lq.x_per_tensor
    lo = float((lq.x_scale * -lq.x_zero).min())
    hi = float((lq.x_scale * (255 - lq.x_zero)).max())
    assert input_params(lq) == u8_params(lo, hi)


def test_tiny_per_tensor_model_exports_every_int8_layer_exactly(sample_paths):
    """A whole tiny ScaleHyperprior trained per tensor: each int8 layer's input quantizer in the
    exported g_a / g_s is its learned (s, z)."""
    from dqsearch.data import load_image, pad_to_multiple
    from dqsearch.integer.params import model_layers
    from dqsearch.models import build_model
    from dqsearch.quant.wrap import QuantPolicy, wrap

    torch.manual_seed(0)
    model = wrap(build_model("bmshj2018-hyperprior", N=16, M=24),
                 QuantPolicy.fixed(8, activation_granularity="tensor")).eval()
    calibrate(model, [pad_to_multiple(load_image(sample_paths[0]).unsqueeze(0)[..., :64, :64], 64)[0]])
    profile = {n: 8 for n in quantized_layers(model)}
    layers = model_layers(model, profile)
    assert all(lq.x_per_tensor for lq in layers.values())
    mod, convs = transform_module(model, "g_s", layers, use_subpixel=True)
    ranges = {n: (-1.0, 1.0) for n in layers}
    g = quantize_graph(export(mod, 24), convs, "int8", ranges)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in g.graph.initializer}
    for name, (_, lq) in convs.items():
        assert inits[f"{name}@x.scale"] == np.float32(lq.x_scale[0])
        assert inits[f"{name}@x.zero"] == lq.x_zero[0]


@pytest.mark.parametrize("conv,bits", CASES)
def test_learned_output_quantizer_makes_the_int8_layer_exact(conv, bits):
    """With `quantize_outputs` the model itself requantizes the conv output to uint8 with a learned
    (s, z); the int8 graph uses that pair (no calibrated range), so it computes the fake-quantized
    layer: equal up to one output code where the int32 bias or float rounding differs at a code
    boundary. The exact graph carries the same output quantizer."""
    torch.manual_seed(bits)
    q = from_float(conv, mode="fixed", candidates=(bits,), activation_granularity="tensor",
                   quantize_output=True).eval()
    assert q.output_quantizer is not None and q.output_quantizer.per_tensor
    x = torch.randn(1, conv.in_channels, 12, 16) * 2 + 0.3
    with torch.no_grad():
        q.input_quantizer.observe(x)
        q.output_quantizer.observe(q._conv(x, q.weight, q.bias) * 0.8)  # some outputs clip
        y = q(x).numpy()
    lq = layer_quant("t.0", q, bits)
    assert lq.y_scale == pytest.approx(q.output_quantizer.scale["8"].item())
    model = nn.Module()
    model.t = nn.Sequential(q)
    for arithmetic in ("int8", "exact"):
        mod, convs = transform_module(model, "t", {"t.0": lq}, use_subpixel=arithmetic == "int8")
        g = quantize_graph(export(mod, conv.in_channels), convs, arithmetic, None)
        out = session(g).run(None, {"x": x.numpy()})[0]
        codes_off = np.abs(out - y) / lq.y_scale
        assert codes_off.max() <= 1.0001, arithmetic
        assert np.mean(codes_off < 1e-3) > 0.95, arithmetic


@pytest.mark.parametrize("outputs", [(), ("g_s",)])
def test_int8_synthesis_of_a_per_tensor_model(outputs):
    """A tiny per-tensor ScaleHyperprior's g_s as exported (int8, sub-pixel, uint8 shuffles). With
    learned g_s output quantizers it computes the fake-quantized g_s: the image on the last layer's
    output grid, equal but for a few percent of values a code or two off; without them (calibrated
    requantization) it does not."""
    from dqsearch.deploy.calibrate import output_ranges
    from dqsearch.integer.params import model_layers
    from dqsearch.models import build_model
    from dqsearch.quant.wrap import QuantPolicy, wrap

    torch.manual_seed(0)
    policy = QuantPolicy.fixed(8, activation_granularity="tensor", quantize_outputs=outputs)
    model = wrap(build_model("bmshj2018-hyperprior", N=16, M=24), policy).eval()
    calibrate(model.g_s, [torch.randn(2, 24, 8, 8) * 4])  # latents (the untrained g_a gives zeros)
    profile = {n: 8 for n in quantized_layers(model)}
    layers = model_layers(model, profile)
    y_hat = torch.round(torch.randn(1, 24, 8, 12) * 4)
    ranges = output_ranges(model.g_s, {n[4:]: 8 for n in profile if n.startswith("g_s.")}, [y_hat])
    mod, convs = transform_module(model, "g_s", layers, use_subpixel=True)
    g = shuffles_in_uint8(quantize_graph(export(mod, 24), convs, "int8",
                                         {f"g_s.{k}": v for k, v in ranges.items()}))
    out = session(g).run(None, {"x": y_hat.numpy()})[0]
    with torch.no_grad():
        ref = model.g_s(y_hat).numpy()
    step = (layers["g_s.6"].y_scale if outputs else u8_params(*ranges["6"])[0])
    codes_off = np.abs(out - ref) / step
    if outputs:
        # one-code flips (int32 bias, float requantization at code boundaries) in one layer move
        # the next layers' values a little: here ~97% of output values equal, none > 3 codes off
        assert np.mean(codes_off < 1e-3) > 0.95 and codes_off.max() <= 3.0001
    else:  # the calibrated requantization: off the fake-quantized output nearly everywhere
        assert np.mean(codes_off < 1e-3) < 0.5
