"""Per-tensor activation quantizers (`QuantPolicy.activation_granularity="tensor"`, issue 17)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dqsearch.models import build_model, load_checkpoint, save_checkpoint
from dqsearch.quant.blocks import from_float
from dqsearch.quant.quantizer import LearnableQuantizer, fake_quantize
from dqsearch.quant.wrap import QuantPolicy, calibrate, quantized_layers, wrap


def test_per_tensor_quantizer_has_one_scale_per_bit_width():
    torch.manual_seed(0)
    x = torch.randn(3, 6, 5, 5) * torch.arange(1, 7).view(1, -1, 1, 1) + 0.5
    q = LearnableQuantizer(1, 1, [6, 8])
    q.observe(x)
    assert q.per_tensor
    for b in (6, 8):
        assert q.scale[str(b)].shape == (1,) and q.zero_point[str(b)].shape == (1,)
        lo, hi = float(x.min()), float(x.max())  # the whole tensor's range, not one channel's
        assert q.scale[str(b)].item() == pytest.approx((hi - lo) / (2**b - 1), rel=1e-6)
        s, z = q.scale[str(b)].view(1, 1, 1, 1), q.zero_point[str(b)].view(1, 1, 1, 1)
        assert torch.equal(q(x, b), fake_quantize(x, s, z, b))
    y = q(x.requires_grad_(True), 8)  # learned: s and z get gradients, and so does x
    y.square().sum().backward()
    assert q.scale["8"].grad is not None and q.zero_point["8"].grad is not None
    assert x.grad is not None


@pytest.mark.parametrize("percentile", [None, 99.0])
def test_per_tensor_calibration_pools_every_channel(percentile):
    torch.manual_seed(1)
    x = torch.randn(2, 4, 16, 16)
    q = LearnableQuantizer(1, 1, [8], percentile=percentile)
    q.observe(x)
    q.observe(x * 2)
    lo, hi = q.range_low.item(), q.range_high.item()
    if percentile is None:
        assert (lo, hi) == (float((2 * x).min()), float((2 * x).max()))
    else:
        assert (2 * x).min() < lo < 0 < hi < (2 * x).max()


@pytest.mark.parametrize("conv", [nn.Conv2d(5, 4, 3), nn.ConvTranspose2d(5, 4, 3, stride=2)])
def test_per_tensor_blocks_keep_per_channel_weights(conv):
    q = from_float(conv, mode="dynamic", candidates=(6, 8), activation_granularity="tensor")
    assert q.input_quantizer.per_tensor and not q.weight_quantizer.per_tensor
    assert q.weight_quantizer.scale["8"].shape == (4,)
    with pytest.raises(ValueError, match="activation_granularity"):
        from_float(conv, mode="fixed", candidates=(8,), activation_granularity="group")


def test_policy_field_round_trips_through_a_checkpoint(tmp_path, small_image):
    policy = QuantPolicy.fixed(8, activation_granularity="tensor")
    assert QuantPolicy.from_dict(policy.to_dict()) == policy
    stored = QuantPolicy.fixed(8).to_dict()
    del stored["activation_granularity"]  # a policy written before the field existed
    assert QuantPolicy.from_dict(stored).activation_granularity == "channel"
    with pytest.raises(ValueError, match="activation_granularity"):
        QuantPolicy.fixed(8, activation_granularity="group")

    torch.manual_seed(0)
    model = wrap(build_model("bmshj2018-hyperprior", N=16, M=24), policy)
    calibrate(model, [small_image])
    model.update(force=True)
    path = tmp_path / "t.pt"
    save_checkpoint(path, model, "bmshj2018-hyperprior", {"N": 16, "M": 24}, policy)
    ck = load_checkpoint(path)
    assert ck.policy == policy
    for name, m in quantized_layers(ck.model).items():
        assert m.input_quantizer.scale["8"].shape == (1,), name
        assert m.weight_quantizer.scale["8"].shape[0] == m.out_channels, name
    with torch.no_grad():
        a, b = model.eval()(small_image)["x_hat"], ck.model.eval()(small_image)["x_hat"]
    assert torch.equal(a, b)


def test_cli_and_study_files_declare_the_options(tmp_path):
    from dqsearch.cli import build_parser, policy_from_args
    from dqsearch.compare import Benchmark

    args = build_parser().parse_args(["train", "-o", "x.pt", "--bits", "8", "--activation-granularity",
                                      "tensor", "--quantize-outputs", "g_s"])
    policy = policy_from_args(args)
    assert policy.activation_granularity == "tensor" and policy.quantize_outputs == ("g_s",)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "-o", "x.pt", "--bits", "8", "--quantize-outputs", "h_s"])
    default = policy_from_args(build_parser().parse_args(["train", "-o", "x.pt", "--bits", "8"]))
    assert default.activation_granularity == "channel" and default.quantize_outputs == ()
    study = tmp_path / "s.toml"
    study.write_text('name = "s"\ndataset = "."\nfamily = ["a.pt"]\noutput = "out"\n'
                     '[[methods]]\nname = "Q8 per tensor"\nbits = 8\nactivation_granularity = "tensor"\n'
                     'quantize_outputs = ["g_a", "g_s"]\n')
    (method,) = Benchmark.load(study).methods
    assert method.policy.activation_granularity == "tensor"
    assert method.policy.quantize_outputs == ("g_a", "g_s")


def test_output_quantizers_only_where_int8_kernels_run(small_image):
    torch.manual_seed(0)
    policy = QuantPolicy.fixed(8, activation_granularity="tensor", quantize_outputs=["g_a", "g_s"],
                               overrides={"g_s.2": {"mode": "fixed", "bits": [10]}})
    assert QuantPolicy.from_dict(policy.to_dict()) == policy
    model = wrap(build_model("bmshj2018-hyperprior", N=16, M=24), policy)
    calibrate(model, [small_image])
    layers = quantized_layers(model)
    with_out = {n for n, m in layers.items() if m.output_quantizer is not None}
    assert with_out == {n for n in layers if n[:4] in ("g_a.", "g_s.") and n != "g_s.2"}
    decoder_only = wrap(build_model("bmshj2018-hyperprior", N=16, M=24),
                        QuantPolicy.fixed(8, quantize_outputs=("g_s",)))
    assert {n for n, m in quantized_layers(decoder_only).items() if m.output_quantizer is not None} \
        == {n for n in layers if n.startswith("g_s.")}
    with pytest.raises(ValueError, match="quantize_outputs"):
        QuantPolicy.fixed(8, quantize_outputs=("h_s",))
    oq = layers["g_a.0"].output_quantizer
    assert oq.per_tensor and oq.calibrated and oq.bits == (8,)
    with torch.no_grad():  # g_a.0's output lands on its learned uint8 grid
        y = layers["g_a.0"](small_image)
        s, z = oq.scale["8"], oq.zero_point["8"].round()
        codes = y / s + z
    assert torch.allclose(codes, codes.round(), atol=1e-3) and codes.min() >= -1e-3 and codes.max() <= 255.001
    plain = wrap(build_model("bmshj2018-hyperprior", N=16, M=24), QuantPolicy.fixed(8))
    assert not any("output_quantizer" in k for k in plain.state_dict())  # old checkpoints unchanged
    with pytest.raises(ValueError, match="output fusion"):
        from_float(nn.Conv2d(3, 4, 3), mode="dynamic", candidates=(6, 8), fusion="input-mix",
                   quantize_output=True)
