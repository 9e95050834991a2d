import pytest
import torch
from torch import nn

from dqsearch.models import build_model
from dqsearch.quant.blocks import QuantizedConv
from dqsearch.quant.wrap import (
    FP32,
    LayerPolicy,
    QuantPolicy,
    average_bits,
    calibrate,
    conv_layers,
    get_profile,
    model_bits_loss,
    quantized_layers,
    set_profile,
    wrap,
)

# Small channel counts keep these real architectures fast.
MODELS = {
    "bmshj2018-factorized": dict(N=16, M=24),
    "bmshj2018-hyperprior": dict(N=16, M=24),
    "mbt2018-mean": dict(N=16, M=24),
    "cheng2020-anchor": dict(N=16),
    "elic2022-official": dict(N=32, M=160),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_wrap_covers_every_conv_and_codes(name, small_image):
    torch.manual_seed(0)
    model = build_model(name, **MODELS[name])
    conv_names = [n for n, _ in conv_layers(model)]
    wrap(model, QuantPolicy.fixed(8))
    layers = quantized_layers(model)
    assert list(layers) == conv_names
    assert not [n for n, m in model.named_modules()
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and not isinstance(m, QuantizedConv)]
    calibrate(model, [small_image])
    model.eval()
    model.update(force=True)
    with torch.no_grad():
        fwd = model(small_image)["x_hat"].clamp(0, 1)
        enc = model.compress(small_image)
        dec = model.decompress(enc["strings"], enc["shape"])["x_hat"]
    assert dec.shape == small_image.shape
    assert (dec - fwd).abs().max() < 0.05
    if name in ("bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean"):
        assert torch.equal(dec, fwd)  # the decoder runs exactly the quantized forward path


def test_layer_names_are_module_paths():
    model = wrap(build_model("bmshj2018-hyperprior", N=16, M=24), QuantPolicy.fixed(8))
    names = list(quantized_layers(model))
    assert names[:2] == ["g_a.0", "g_a.2"] and "g_s.6" in names and "h_s.4" in names


def test_pins_overrides_and_profiles():
    model = build_model("bmshj2018-hyperprior", N=16, M=24)
    policy = QuantPolicy.dynamic((4, 8), pin_first=8, pin_last=FP32,
                                 overrides={"h_a.0": LayerPolicy("fixed", (6,))})
    wrap(model, policy)
    layers = quantized_layers(model)
    assert layers["g_a.0"].mode == "fixed" and layers["g_a.0"].candidates == (8,)
    assert layers["g_s.6"].mode == "fp32"
    assert layers["h_a.0"].candidates == (6,)
    assert layers["g_a.2"].mode == "dynamic"
    x = torch.rand(2, 3, 64, 64)
    calibrate(model, [x])
    model.eval()
    with torch.no_grad():
        model(x)
    prof = get_profile(model)
    assert prof["g_s.6"] == FP32 and prof["g_a.0"] == 8 and prof["g_a.2"] in (4, 8)
    forced = {n: (b if n in ("g_a.0", "g_s.6", "h_a.0") else 4) for n, b in prof.items()}
    set_profile(model, forced)
    with torch.no_grad():
        model(x)
    assert get_profile(model) == forced
    with pytest.raises(ValueError, match="cannot run at 6 bits"):
        set_profile(model, {**forced, "g_a.2": 6})
    with pytest.raises(ValueError, match="missing"):
        set_profile(model, {"g_a.0": 8})
    assert average_bits(model, forced) == pytest.approx(sum(forced.values()) / len(forced))


def test_global_selector_drives_all_dynamic_layers():
    torch.manual_seed(0)
    model = wrap(build_model("bmshj2018-hyperprior", N=16, M=24),
                 QuantPolicy.dynamic((6, 8, 10), selector="global"))
    layers = quantized_layers(model)
    assert layers["g_a.0"].mode == "fixed" and layers["g_a.0"].candidates == (10,)
    assert hasattr(layers["g_a.0"], "global_selector")
    assert not any(hasattr(m, "selector") for m in layers.values())
    x = torch.rand(2, 3, 64, 64)
    model.train()
    out = model(x)
    lb = model_bits_loss(model)
    (out["x_hat"].mean() + lb).backward()
    assert layers["g_a.0"].global_selector.mlp[2].weight.grad.abs().sum() > 0


def test_policy_round_trip_and_validation():
    p = QuantPolicy.dynamic((6, 8, 10), rounding="ste", overrides={"g_a.2": LayerPolicy("fp32")})
    assert QuantPolicy.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="unknown quantization policy fields"):
        QuantPolicy.from_dict({"bitz": 3})
    model = build_model("bmshj2018-hyperprior", N=16, M=24)
    with pytest.raises(ValueError, match="unknown layers"):
        wrap(model, QuantPolicy.fixed(8, overrides={"nope": LayerPolicy("fp32")}))
    wrap(model, QuantPolicy.fixed(8))
    with pytest.raises(ValueError, match="already wrapped"):
        wrap(model, QuantPolicy.fixed(8))


def test_fp32_state_dict_loads_into_wrapped_model():
    fp = build_model("bmshj2018-hyperprior", N=16, M=24)
    q = wrap(build_model("bmshj2018-hyperprior", N=16, M=24), QuantPolicy.fixed(8))
    missing, unexpected = q.load_state_dict(fp.state_dict(), strict=False)
    assert not unexpected
    assert all("quantizer" in k for k in missing)
