"""The contract's data types, layer extraction by hooks, and the entry-point registry."""

from __future__ import annotations

import math

import pytest
import torch

from dqsearch.backends import (
    BackendError,
    LayerSpec,
    Measurement,
    extract_layer_specs,
    float_model,
    inspect_backends,
    load_backend,
    parse_input_shape,
    trace_model,
)
from dqsearch.backends.testing import tiny_model
from dqsearch.quant.wrap import QuantPolicy, conv_layers, quantized_layers, wrap


def test_measurement_statistics():
    m = Measurement.from_samples([3.0, 1.0, 2.0, 10.0])
    assert (m.median, m.min, m.max, m.n) == (2.5, 1.0, 10.0, 4)
    assert m.mean == pytest.approx(4.0) and m.std == pytest.approx(math.sqrt(12.5))
    assert Measurement.from_dict(m.to_dict()) == m
    with pytest.raises(ValueError, match="finite"):
        Measurement.from_samples([1.0, float("nan")])
    with pytest.raises(ValueError, match="at least one"):
        Measurement.from_samples([])
    assert Measurement.exact(2.0).std == 0 and Measurement.exact(2.0).value("min") == 2.0


def test_input_shapes():
    assert parse_input_shape("768x512") == (1, 3, 768, 512)
    assert parse_input_shape((64, 32)) == (1, 3, 64, 32)
    assert parse_input_shape([2, 3, 64, 64]) == (2, 3, 64, 64)
    for bad in ("768", "axb", "0x64", (1, 2, 3)):
        with pytest.raises(ValueError, match="input size"):
            parse_input_shape(bad)


def test_specs_of_plain_and_wrapped_models_agree():
    plain = tiny_model()
    specs = extract_layer_specs(plain, (64, 64))
    assert [s.name for s in specs] == [n for n, _ in conv_layers(plain)]
    first = specs[0]
    assert (first.name, first.op, first.in_channels) == ("g_a.0", "conv", 3)
    assert (first.kernel, first.stride) == ((5, 5), (2, 2))
    assert first.input_shape == (1, 3, 64, 64) and first.output_shape == (1, 8, 32, 32)
    assert first.macs == 32 * 32 * 8 * 3 * 25
    deconv = next(s for s in specs if s.name == "g_s.0")
    assert deconv.op == "deconv" and deconv.output_padding == (1, 1)
    assert deconv.module()(torch.zeros(deconv.input_shape)).shape == deconv.output_shape
    wrapped = wrap(tiny_model(), QuantPolicy.dynamic([4, 8]))
    assert extract_layer_specs(wrapped, (64, 64)) == specs
    assert [LayerSpec.from_dict(s.to_dict()) for s in specs] == specs


def test_trace_records_transform_inputs_and_other_ops():
    trace = trace_model(tiny_model(), (64, 64))
    assert trace.group_inputs == {"g_a": (1, 3, 64, 64), "h_a": (1, 8, 4, 4), "h_s": (1, 8, 1, 1),
                                  "g_s": (1, 8, 4, 4)}
    kinds = {o.name: o.kind for o in trace.ops}
    assert kinds["g_a.1"] == "GDN" and kinds["h_a.1"] == "ReLU"
    gdn = next(o for o in trace.ops if o.name == "g_a.1")
    assert gdn.macs == 8 * 8 * 32 * 32


def test_wrong_input_size_is_a_clear_error():
    with pytest.raises(ValueError, match="divisible by 64"):
        trace_model(tiny_model(), (40, 40))


def test_float_model_drops_quantization_and_keeps_weights(small_image):
    wrapped = wrap(tiny_model(), QuantPolicy.fixed(8))
    plain = float_model(wrapped)
    assert not quantized_layers(plain) and quantized_layers(wrapped)
    ref = wrap(tiny_model(), QuantPolicy(mode="fp32", bits=()))
    ref.load_state_dict(wrapped.state_dict(), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(plain.g_a(small_image), ref.eval().g_a(small_image))


def test_registry_errors_are_clear():
    with pytest.raises(BackendError, match="unknown backend 'nope'.*installed backends"):
        load_backend("nope")
    infos = {i.name: i for i in inspect_backends()}
    for info in infos.values():
        assert info.ok or info.error, f"{info.name}: a failed backend must say why"
    if "sim" in infos:
        assert infos["sim"].needs_options and "--spec" in infos["sim"].error
        with pytest.raises(BackendError, match="does not accept options"):
            load_backend("sim-npu", colour="red")
