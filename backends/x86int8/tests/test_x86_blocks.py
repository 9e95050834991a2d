"""The x86-int8 building blocks: the oneDNN uint8 convolution against PyTorch's quantized Conv2d,
the compiled kernels against their eager forms, h_a in int8 against the exact h_a, the artifact
version and the manifest's GDN line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from dqsearch_x86 import kernels as K
from dqsearch_x86.engine import x86
from dqsearch_x86.onednn import Int8Conv
from dqsearch_x86.program import (
    VERSION,
    ArtifactError,
    build_program,
    calibrate_gdn,
    load_program,
    save_program,
)
from dqsearch_x86.transform import X86Transform
from torch.ao.nn.quantized import Conv2d as QConv2d
from x86_helpers import photo

from dqsearch.deploy.calibrate import output_ranges
from dqsearch.integer.params import model_layers
from dqsearch.models import load_checkpoint
from dqsearch.quant.wrap import quantized_layers, set_profile


def _reference(w, w_scale, bias, stride, padding, in_q, out_q, x_u8):
    """The same layer as torch.ao's quantized Conv2d on quint8 tensors (the plugin's previous path)."""
    o, c, kh, kw = w.shape
    scales = torch.from_numpy(w_scale.astype(np.float64))
    zeros = torch.zeros(o, dtype=torch.long)
    qw = torch._make_per_channel_quantized_tensor(torch.from_numpy(w), scales, zeros, 0)
    conv = QConv2d(c, o, (kh, kw), stride=stride, padding=padding)
    conv.set_weight_bias(qw, torch.from_numpy(bias))
    conv.scale, conv.zero_point = out_q
    q = torch._make_per_tensor_quantized_tensor(x_u8, *in_q)
    return conv(q).int_repr()


@pytest.mark.parametrize(("shape", "out", "k", "stride", "padding"), [
    ((1, 5, 13, 7), 7, 5, 2, 2), ((1, 16, 9, 11), 12, 3, 1, 1), ((2, 8, 6, 5), 8, 1, 1, 0),
    ((1, 3, 17, 31), 16, 5, 2, 2)])
def test_onednn_conv_is_the_quantized_conv2d_bit_for_bit(shape, out, k, stride, padding):
    gen = torch.Generator().manual_seed(sum(shape) + out)
    c = shape[1]
    w = torch.randint(-127, 128, (out, c, k, k), dtype=torch.int8, generator=gen).numpy()
    w_scale = (torch.rand(out, generator=gen) * 0.01 + 1e-3).numpy()
    bias = torch.randn(out, generator=gen).numpy()
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
    x = x.contiguous(memory_format=torch.channels_last)
    in_q, out_q = (0.02, 17), (0.5, 101)
    with x86():
        got = Int8Conv(w, w_scale, bias, (stride, stride), (padding, padding), in_q, out_q)(x)
        ref = _reference(w, w_scale, bias, (stride, stride), (padding, padding), in_q, out_q, x)
        assert got.dtype == torch.uint8 and got.shape == ref.shape
        assert torch.equal(got, ref)
        assert got.is_contiguous(memory_format=torch.channels_last)
        # ReLU fused: the reference's output clipped at its zero-point
        relu = Int8Conv(w, w_scale, bias, (stride, stride), (padding, padding), in_q, out_q, "relu")(x)
        assert torch.equal(relu, torch.clamp_min(ref, out_q[1]))
        # float output: the float32 accumulators (bias included), within float rounding of a float conv
        acc = Int8Conv(w, w_scale, bias, (stride, stride), (padding, padding), in_q, None)(x)
        xf = (x.float() - in_q[1]) * in_q[0]
        wf = torch.from_numpy(w).float() * torch.from_numpy(w_scale).view(-1, 1, 1, 1)
        exact = torch.nn.functional.conv2d(xf, wf, torch.from_numpy(bias), stride, padding)
        assert acc.dtype == torch.float32
        assert torch.allclose(acc, exact, rtol=1e-4, atol=1e-4)
        # hardtanh clips before the output quantizer: the bytes of [lo, hi]
        lo, hi = (0 - out_q[1]) * out_q[0], (63 - out_q[1]) * out_q[0]
        clipped = Int8Conv(w, w_scale, bias, (stride, stride), (padding, padding), in_q, out_q, "hardtanh",
                           (lo, hi))(x)
        assert torch.equal(clipped, torch.clamp(ref, 0, 63))


def test_compiled_kernels_compute_what_the_eager_ones_compute():
    if K.compile_unavailable():
        pytest.skip(f"torch.compile unavailable here: {K.compile_unavailable()}")
    fast, slow = K.Kernels(), K.Kernels(compile=False)
    gen = torch.Generator().manual_seed(1)
    n, c, h, w = 1, 8, 7, 5
    x = torch.randn(n, c, h, w, generator=gen) * 3
    t = torch.tensor
    for absolute in (False, True):
        a = fast("quantize", x, t(9.0), t(120.0), t(200.0), absolute)
        b = slow("quantize", x, t(9.0), t(120.0), t(200.0), absolute)
        assert a.is_contiguous(memory_format=torch.channels_last) and int(a.max()) <= 200
        assert (a.int() - b.int()).abs().max() <= 1 and (a != b).float().mean() < 0.01
    u8 = torch.randint(0, 256, (n * h * w * 4 * c,), dtype=torch.uint8, generator=gen)
    n8 = torch.randint(0, 256, u8.shape, dtype=torch.uint8, generator=gen)
    sq = (t(97.0), t(0.031))
    assert (fast("square", u8, *sq).int() - slow("square", u8, *sq).int()).abs().max() <= 1
    for inverse in (False, True):
        g = (t(97.0), t(0.9), t(0.021), t(3.0), t(250.0), inverse)
        for name, extra in (("gdn", ()), ("gdn_shuffle", (n, h, w, c))):
            a, b = fast(name, u8, n8, *g, *extra), slow(name, u8, n8, *g, *extra)
            assert a.shape == b.shape and (a.int() - b.int()).abs().max() <= 1
            assert (a != b).float().mean() < 0.01
    view = u8[: n * c * h * w].view(n, h, w, c).permute(0, 3, 1, 2)
    a, b = fast("dequantize", view, t(0.1), t(7.0)), slow("dequantize", view, t(0.1), t(7.0))
    assert a.is_contiguous() and torch.equal(a, b)


def test_h_a_in_int8_is_close_to_the_exact_h_a(ptq8):
    """h_a on int8 kernels (ReLU and the next input quantizer fused into each convolution): z
    within a few steps of the exact (fake-quantized) h_a's, on the bundled model's real y."""
    ck = load_checkpoint(ptq8)
    model = ck.model.eval()
    profile = {n: 8 for n in quantized_layers(model)}
    layers = model_layers(model, profile)
    images = [photo(128, 128, index=i) for i in (0, 1)]
    ranges = output_ranges(model, profile, images)
    gdn = calibrate_gdn(model, profile, images)
    mods = {a: X86Transform(*build_program(model, "h_a", layers, a, ranges, gdn, abs_input=True))
            for a in ("int8", "exact")}
    assert {e.kind for e in mods["int8"].layers} == {"int8"}
    with torch.no_grad():
        set_profile(model, profile)
        y = model.g_a(photo(192, 128, index=2))
        set_profile(model, None)
    z8, z = mods["int8"](y), mods["exact"](y)
    # measured: max |Δz| 0.39, mean 0.017, 0.5% of the rounded z (what is coded) differ by one
    assert (z8 - z).abs().max() < 1.0
    assert (z8 - z).abs().mean() < 0.05
    assert (torch.round(z8) != torch.round(z)).float().mean() < 0.03


def test_an_export_of_the_previous_layout_says_re_export(tmp_path, x86_export):
    folder = next(p for p in (x86_export.folder / "profiles").iterdir() if (p / "profile.json").is_file())
    meta, arrays = load_program(folder / "g_s.npz")
    assert meta["version"] == VERSION
    save_program(tmp_path / "g_s.npz", {**meta, "version": 1}, arrays)
    with pytest.raises(ArtifactError, match="re-export") as err:
        load_program(tmp_path / "g_s.npz")
    assert "\n" not in str(err.value)


def test_the_manifest_says_how_gdn_runs(x86_export):
    manifest = json.loads((x86_export.folder / "manifest.json").read_text())
    assert "int8" in manifest["gdn"] and "float" in manifest["gdn"]


def test_runtime_keeps_freed_memory_unless_asked_not_to(monkeypatch):
    """The runtime's malloc policy is on by default (measured 22 vs 29 ms per decoder next to other
    sessions) and `DQSEARCH_X86_MALLOC=default` turns it off."""
    from dqsearch_x86 import memory

    monkeypatch.delenv("DQSEARCH_X86_MALLOC", raising=False)
    assert memory.wanted()
    monkeypatch.setenv("DQSEARCH_X86_MALLOC", "default")
    assert not memory.wanted()
    monkeypatch.setenv("DQSEARCH_X86_MALLOC", "keep")
    assert memory.wanted()


def test_profile_model_takes_fp32_layers_next_to_the_integer_h_s():
    """`dqsearch latency validate` draws random profiles with FP32 layers anywhere; the integer h_s
    of the backend's PTQ copy must be built with an FP32 h_a (it failed on h_a.0 = 32)."""
    from dqsearch_x86.backend import X86Backend

    from dqsearch.backends import trace_model
    from dqsearch.models import load_checkpoint, resolve_checkpoint

    model = load_checkpoint(resolve_checkpoint("embedded:3")).model.eval()
    names = trace_model(model, (1, 3, 64, 64)).names
    profile = {n: 32 if n in ("h_a.0", "g_a.2", "g_s.4") else 8 for n in names}
    m = X86Backend(repeats=1, warmup=0).profile_model(model, profile, (1, 3, 64, 64))
    assert m.median > 0
