"""Integer-only hyper-synthesis: where it and the float h_s diverge, and why integers do not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dqsearch.codec import BitstreamError, decode
from dqsearch.deploy.runtime import Runtime
from dqsearch.evaluate import psnr
from dqsearch.integer.int_hyper import IntegerHyperSynthesis
from dqsearch.integer.params import model_layers
from dqsearch.models import load_checkpoint
from dqsearch.quant.wrap import quantized_layers, set_profile


@pytest.fixture(scope="module")
def hyper_case(mixed_checkpoint, image):
    ck = load_checkpoint(mixed_checkpoint)
    model = ck.model.eval()
    profile = {n: m.candidates[0] for n, m in quantized_layers(model).items()}
    set_profile(model, profile)
    layers = model_layers(model, profile)
    gc = model.gaussian_conditional
    ih = IntegerHyperSynthesis.build([layers[n] for n in ("h_s.0", "h_s.2", "h_s.4")],
                                     gc.scale_table.tolist())
    x = torch.nn.functional.pad(image, (16, 16, 0, 0), mode="replicate")
    with torch.no_grad():
        z = model.h_a(model.g_a(x).abs())
        z_hat = model.entropy_bottleneck.decompress(model.entropy_bottleneck.compress(z), z.shape[-2:])
        scales = model.h_s(z_hat)
    return model, ih, z_hat, scales


def _boundary_distance(scales: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Relative distance of each scale to the nearest scale-table boundary."""
    return np.min(np.abs(scales[..., None] / table[:-1] - 1), axis=-1)


def test_float_and_integer_paths_diverge_only_at_table_boundaries(hyper_case):
    model, ih, z_hat, scales = hyper_case
    gc = model.gaussian_conditional
    table = gc.scale_table.numpy().astype(np.float64)
    float_idx = gc.build_indexes(scales).numpy()
    int_idx = ih.indexes(z_hat.numpy())
    int_scales = ih.scales(z_hat.numpy())
    assert np.abs(int_scales - scales.numpy()).max() <= 1e-5 * float(scales.abs().max()) + 1e-6
    differ = float_idx != int_idx
    dist = _boundary_distance(scales.numpy().astype(np.float64), table)
    assert (dist[differ] < 1e-3).all()  # every divergence is a scale sitting on a boundary
    assert differ.mean() < 1e-3
    # a machine whose float h_s rounds differently (here: ±2e-7 relative) moves boundary scales
    # into the next table; the integer path has nothing to round differently
    rng = np.random.default_rng(0)
    moved = scales.numpy() * (1 + rng.choice([-2e-7, 2e-7], size=scales.shape)).astype(np.float32)
    other_idx = gc.build_indexes(torch.from_numpy(moved)).numpy()
    assert (dist[other_idx != float_idx] < 1e-6).all()
    np.testing.assert_array_equal(ih.indexes(z_hat.numpy()), int_idx)


def test_forced_boundary_shows_the_float_path_flip(hyper_case):
    """Put one scale exactly on a table entry: float predictions one ulp apart pick different tables."""
    model, _, _, scales = hyper_case
    gc = model.gaussian_conditional
    t = gc.scale_table[10].reshape(1, 1, 1, 1)
    below, above = np.nextafter(t.numpy(), 0), np.nextafter(t.numpy(), 1)
    idx = [int(gc.build_indexes(torch.from_numpy(v))) for v in (below, t.numpy(), above)]
    assert idx[0] == idx[1] < idx[2]


def test_integer_streams_round_trip_and_are_tagged(exported, mixed_checkpoint, image):
    rt = Runtime(exported["integer"])
    enc, _ = rt.encode(image)
    x_hat, header, info = rt.decode(enc.data)
    assert header.hyper == "integer" and psnr(image, x_hat) > 5
    ck = load_checkpoint(mixed_checkpoint)
    torch_x, torch_header = decode(ck.model, ck.model_id, enc.data)  # PyTorch decodes it too
    assert torch_header.hyper == "integer" and psnr(image, torch_x) > 5
    # an export made with --hyper float builds the integer h_s from its source checkpoint
    y_float_export, _, _ = Runtime(exported["exact"]).latents(enc.data)
    y_own, _, _ = rt.latents(enc.data)
    assert torch.equal(y_float_export, y_own)


def test_integer_hyper_survives_save_and_load(hyper_case, tmp_path):
    _, ih, z_hat, _ = hyper_case
    ih.save(tmp_path / "h.npz")
    again = IntegerHyperSynthesis.load(tmp_path / "h.npz")
    np.testing.assert_array_equal(again.indexes(z_hat.numpy()), ih.indexes(z_hat.numpy()))


def test_pytorch_and_deployed_integer_codecs_interoperate(exported, mixed_checkpoint, image):
    """Integer streams cross between PyTorch and ONNX Runtime both ways with identical indexes:
    the same bytes, the same latents; only g_s's arithmetic (int8 here) separates the images."""
    from dqsearch.deploy import torch_codec

    ck = load_checkpoint(mixed_checkpoint)
    model = ck.model.eval()
    enc = torch_codec.encode(model, ck.model_id, image)
    ref, _ = torch_codec.decode(model, ck.model_id, enc.data)
    rt = Runtime(exported["integer"])
    x_hat, header, _ = rt.decode(enc.data)
    assert header.hyper == "integer"
    assert abs(psnr(image, x_hat) - psnr(image, ref)) < 0.5
    own, _ = rt.encode(image)
    back, _ = torch_codec.decode(model, ck.model_id, own.data)
    assert psnr(image, back) > 5
    from dqsearch.codec import encode as any_encode

    float_data = any_encode(model, ck.model_id, image, hyper="float:torch").data
    with pytest.raises(BitstreamError, match="float:torch"):
        rt.decode(float_data)


def test_int8_limb_path_equals_the_float64_reference(hyper_case):
    """The fast path (int8 limb products) and the float64 reference give the same integers on the
    mixed checkpoint (its 12-bit g_s layer aside, h_s at 8 bits): accumulators and indexes."""
    from dqsearch.integer.limbs import int8_matmul_works

    _, ih, z_hat, _ = hyper_case
    if not int8_matmul_works():
        pytest.skip("torch._int_mm is missing or inexact here")
    assert ih.fast_path() is not None
    z = z_hat.numpy()
    np.testing.assert_array_equal(ih.accumulator(z), ih.accumulator_reference(z))
    np.testing.assert_array_equal(ih.indexes(z), ih.indexes_reference(z))
