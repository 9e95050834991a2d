"""The integer h_s's int8 limb path gives exactly the float64 reference's integers.

Exact equality (accumulators and indexes), never a tolerance: random models of several shapes and
bit-widths (6, 8, 10, 16, mixed), weights near the 2^49 bound, extreme and clipped inputs, odd sizes,
a calibrated real model at several profiles, the threshold lookup against np.searchsorted.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from dqsearch.integer.int_hyper import IntegerHyperSynthesis, IntLayer
from dqsearch.integer.limb_conv import LimbConv
from dqsearch.integer.limbs import MAX_K, digit_count, digits, int8_matmul, int8_matmul_works
from dqsearch.integer.params import LayerQuant
from dqsearch.integer.threshold_lookup import ThresholdLookup

needs_int8 = pytest.mark.skipif(not int8_matmul_works(), reason="torch._int_mm is missing or inexact here")
TABLE = np.exp(np.linspace(np.log(0.11), np.log(256), 64))  # CompressAI's scale table


def _layer(rng, name, c_in, c_out, bits, transposed, x_bits):
    """A random quantized LayerQuant: k5 s2 deconv (sub-pixel) or k3 conv, learned-looking ranges."""
    shape = (c_in, c_out, 5, 5) if transposed else (c_out, c_in, 3, 3)
    qmax = 2**bits - 1
    w_int = rng.integers(0, qmax + 1, size=shape).astype(np.int32)
    axis = 1 if transposed else 0
    w_zero = rng.integers(qmax // 4, 3 * qmax // 4 + 1, size=c_out).astype(np.int32)
    w_scale = (rng.uniform(0.2, 2.0, size=c_out) / qmax).astype(np.float32)
    sh = [1, 1, 1, 1]
    sh[axis] = -1
    weight = (w_scale.reshape(sh) * (w_int - w_zero.reshape(sh))).astype(np.float32)
    x_qmax = 2**x_bits - 1
    return LayerQuant(name, transposed, bits, weight, rng.normal(0, 0.5, c_out).astype(np.float32),
                      (2, 2) if transposed else (1, 1), (2, 2) if transposed else (1, 1),
                      (1, 1) if transposed else (0, 0), w_int, w_scale, w_zero,
                      (rng.uniform(0.5, 4.0, size=c_in) / x_qmax).astype(np.float32),
                      rng.integers(0, x_qmax // 2 + 1, size=c_in).astype(np.int32))


def _hyper(seed, bits, n=12, m=20):
    """h_s of a ScaleHyperprior (deconv N→N, deconv N→N, conv N→M), `bits` = each layer's bit-width."""
    rng = np.random.default_rng(seed)
    layers = [_layer(rng, "h_s.0", n, n, bits[0], True, bits[0]),
              _layer(rng, "h_s.2", n, n, bits[1], True, bits[1]),
              _layer(rng, "h_s.4", n, m, bits[2], False, bits[2])]
    for lq in layers[1:]:
        lq.x_zero[:] = 0  # after a ReLU
    return IntegerHyperSynthesis.build(layers, TABLE)


@needs_int8
def test_zero_points_outside_the_range():
    """Learned zero-points are not clipped to [0, qmax]: the clip after requantization and the padded
    border follow them (reference semantics) on both paths."""
    rng = np.random.default_rng(11)
    layers = [_layer(rng, "h_s.0", 8, 8, 8, True, 8), _layer(rng, "h_s.2", 8, 8, 6, True, 6),
              _layer(rng, "h_s.4", 8, 10, 10, False, 10)]
    layers[0].x_zero[:3] = [-7, 260, 255]
    layers[1].x_zero[:] = rng.integers(-20, 90, size=8)
    layers[2].x_zero[:] = rng.integers(-300, 1400, size=8)
    ih = IntegerHyperSynthesis.build(layers, TABLE)
    assert ih.fast_path() is not None
    for h, w in [(1, 1), (5, 3)]:
        for z in _inputs(rng, 8, h, w):
            _assert_same(ih, z)


def _assert_same(ih: IntegerHyperSynthesis, z: np.ndarray) -> None:
    acc, ref = ih.accumulator(z), ih.accumulator_reference(z)
    assert acc.dtype == ref.dtype == np.int64 and acc.shape == ref.shape
    np.testing.assert_array_equal(acc, ref)
    idx, ref_idx = ih.indexes(z), ih.indexes_reference(z)
    assert idx.dtype == ref_idx.dtype == np.int32 and idx.shape == ref_idx.shape
    np.testing.assert_array_equal(idx, ref_idx)


def _inputs(rng, channels, h, w):
    yield np.round(rng.normal(0, 3, size=(1, channels, h, w))).astype(np.float32)
    yield np.round(rng.normal(0, 40, size=(1, channels, h, w))).astype(np.float32)  # clips often
    yield rng.choice([-1e6, 1e6], size=(1, channels, h, w)).astype(np.float32)  # every value at a bound
    yield np.zeros((1, channels, h, w), np.float32)


def test_digits_round_trip_and_count():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.integers(-2**62, 2**62, 1000), [0, 1, -1, 127, 128, -128, -129, 2**49, -2**49,
                                                              2**62 - 1, -2**62]])
    d = digits(v)
    assert d.dtype == np.int8
    back = sum(d[i].astype(object) * 256**i for i in range(len(d)))
    assert all(int(a) == int(b) for a, b in zip(back, v, strict=True))
    assert digit_count(-128, 127) == 1 and digit_count(0, 128) == 2 and digit_count(-129, 0) == 2
    assert len(digits(np.array([2**49]))) == 7


@needs_int8
def test_int8_matmul_is_exact_for_small_and_extreme_products():
    for m, k, n in [(1, 8, 8), (16, 64, 8), (17, 576, 24), (40, MAX_K // 64 * 8, 8)]:
        a = torch.full((m, k), -128, dtype=torch.int8)
        b = torch.full((k, n), -128, dtype=torch.int8)
        assert int(int8_matmul(a, b)[0, 0]) == 128 * 128 * k
        gen = torch.Generator().manual_seed(m)
        a = torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int8)
        b = torch.randint(-128, 128, (k, n), generator=gen, dtype=torch.int8)
        assert torch.equal(int8_matmul(a, b).long(), a.long() @ b.long())


@needs_int8
@pytest.mark.parametrize("bits", [(8, 8, 8), (6, 6, 6), (10, 10, 10), (16, 16, 16), (10, 8, 6), (6, 16, 8)])
def test_limb_path_equals_reference_on_random_models(bits):
    ih = _hyper(sum(bits), bits)
    assert ih.fast_path() is not None
    rng = np.random.default_rng(1)
    for h, w in [(1, 1), (3, 5), (7, 9), (4, 4)]:
        for z in _inputs(rng, 12, h, w):
            _assert_same(ih, z)


@needs_int8
def test_indexes_span_the_table():
    """A model whose scales cover the whole table (every index and both ends get exercised)."""
    ih = _hyper(3, (8, 8, 8))
    rng = np.random.default_rng(2)
    z = np.round(rng.normal(0, 6, size=(1, 12, 9, 7))).astype(np.float32)
    scales = ih.scales(z)
    lo, hi = np.quantile(scales[scales > 0], [0.02, 0.98])
    # a geometric table over the predicted scales, so that they span it
    table = np.exp(np.linspace(np.log(lo), np.log(hi), 64))
    ih2 = IntegerHyperSynthesis(ih.layers, ih.x_scale, ih.multipliers, ih.next_zero,
                                np.floor(np.ldexp(table[:-1], ih.layers[-1].frac)).astype(np.int64))
    idx = ih2.indexes(z)
    assert idx.min() == 0 and idx.max() == 63 and len(np.unique(idx)) > 40
    _assert_same(ih2, z)


def _wide_layer(weight, qmax, x_zero=None, bias=None, shuffle=1):
    o = weight.shape[0]
    return IntLayer(weight.astype(np.int64), np.zeros(o, np.int64) if bias is None else bias, 40,
                    (1, 1, 1, 1), shuffle, np.zeros(weight.shape[1], np.int64) if x_zero is None else x_zero,
                    qmax)


@needs_int8
def test_weights_near_the_2_49_bound():
    """Weights of up to 2^49 (seven digits) whose accumulators still fit the reference's 2^50 bound."""
    rng = np.random.default_rng(4)
    w1 = rng.integers(-2**30, 2**30, size=(8, 4, 3, 3))
    w1[:, 0, 1, 1] = rng.choice([2**49 - 1, -(2**49 - 3), 2**49 - 2**41], size=8)
    w2 = rng.integers(-2**20, 2**20, size=(6, 8, 3, 3))
    w2[:, :, 1, 1] = 2**44 + rng.integers(-2**40, 2**40, size=(6, 8))
    layers = [_wide_layer(w1, 1), _wide_layer(w2, 1)]
    thresholds = np.floor(np.ldexp(TABLE[:-1], 42)).astype(np.int64)
    ih = IntegerHyperSynthesis(layers, np.full(4, 0.5), [np.full(8, 2.0**-49)], [np.zeros(8, np.int64)],
                               thresholds)
    assert ih.fast_path() is not None and ih.fast_path().convs[0].limbs == 7
    for z in _inputs(rng, 4, 5, 3):
        _assert_same(ih, z)
    z = np.ones((1, 4, 5, 3), np.float32)  # q = 1 everywhere: the largest weights all count
    _assert_same(ih, z)


@needs_int8
def test_digits_too_large_to_pair_in_int32():
    """Every weight digit at -128 over K = 576 taps: a digit pair could overflow int32, so the layer
    recombines digit by digit (the other path), with the same integers."""
    rng = np.random.default_rng(12)
    w = np.full((16, 64, 3, 3), -128 - 128 * 256, np.int64)
    w[:, :, 0, 0] = rng.integers(-2**15, 2**15, size=(16, 64))
    layers = [_wide_layer(w, 255, x_zero=rng.integers(0, 256, size=64))]
    ih = IntegerHyperSynthesis(layers, np.full(64, 0.25), [], [], np.arange(1, 64, dtype=np.int64) * 2**22)
    assert ih.fast_path() is not None and not ih.fast_path().convs[0].paired
    assert _hyper(13, (8, 8, 8)).fast_path().convs[0].paired
    for z in _inputs(rng, 64, 4, 6):
        _assert_same(ih, z)


def test_limb_conv_refuses_what_it_cannot_hold():
    """Too wide a kernel for int32 or an accumulator beyond 2^52: None, and the synthesis keeps float64."""
    wide = MAX_K // 9 + 1
    assert LimbConv.build(np.ones((4, wide, 3, 3), np.int64), np.zeros(4, np.int64), (1, 1, 1, 1), 1,
                          np.zeros(wide, np.int64), 255) is None
    big = np.full((4, 2, 3, 3), 2**45, np.int64)
    assert LimbConv.build(big, np.zeros(4, np.int64), (1, 1, 1, 1), 1, np.zeros(2, np.int64), 255) is None
    ih = IntegerHyperSynthesis([_wide_layer(big, 255)], np.ones(2), [], [],
                               np.arange(1, 64, dtype=np.int64) * 2**50)
    assert ih.fast_path() is None
    z = np.round(np.random.default_rng(5).normal(0, 50, size=(1, 2, 3, 4))).astype(np.float32)
    np.testing.assert_array_equal(ih.indexes(z), ih.indexes_reference(z))


@needs_int8
def test_results_are_fresh_arrays_and_threads_do_not_share_workspaces():
    ih = _hyper(7, (8, 8, 8))
    rng = np.random.default_rng(6)
    za, zb = (np.round(rng.normal(0, 4, size=(1, 12, 6, 5))).astype(np.float32) for _ in range(2))
    first = ih.indexes(za)
    kept = first.copy()
    ih.indexes(zb)
    np.testing.assert_array_equal(first, kept)
    want = {i: ih.indexes_reference(z) for i, z in enumerate((za, zb))}
    errors = []

    def worker(i, z):
        for _ in range(20):
            if not np.array_equal(ih.indexes(z), want[i]):
                errors.append(i)

    threads = [threading.Thread(target=worker, args=(i, z)) for i, z in enumerate((za, zb))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@needs_int8
def test_the_int8_path_is_built_by_the_first_large_input():
    """One small call keeps the float64 path (cheaper than building the int8 one); an input of
    FAST_MIN_PIXELS builds it, and from then on every size uses it. Same integers throughout."""
    from dqsearch.integer.int_hyper import FAST_MIN_PIXELS

    ih = _hyper(16, (8, 8, 8))
    rng = np.random.default_rng(17)
    small = np.round(rng.normal(0, 4, size=(1, 12, 2, 3))).astype(np.float32)
    large = np.round(rng.normal(0, 4, size=(1, 12, 8, FAST_MIN_PIXELS // 8))).astype(np.float32)
    want_small = ih.indexes_reference(small)
    np.testing.assert_array_equal(ih.indexes(small), want_small)
    assert ih._fast is False  # not built
    np.testing.assert_array_equal(ih.indexes(large), ih.indexes_reference(large))
    assert ih._fast is not False and ih._fast is not None
    np.testing.assert_array_equal(ih.indexes(small), want_small)


@needs_int8
def test_pickles_for_worker_processes():
    import copy
    import pickle

    ih = _hyper(14, (8, 8, 8))
    z = np.round(np.random.default_rng(15).normal(0, 4, size=(1, 12, 3, 3))).astype(np.float32)
    want = ih.indexes(z)
    for again in (pickle.loads(pickle.dumps(ih)), copy.deepcopy(ih)):
        assert again.fast_path() is not None
        np.testing.assert_array_equal(again.indexes(z), want)


@needs_int8
def test_save_load_keeps_the_format_and_derives_the_limbs(tmp_path):
    ih = _hyper(8, (10, 8, 6))
    ih.save(tmp_path / "h.npz")
    with np.load(tmp_path / "h.npz", allow_pickle=False) as d:
        keys = set(d.files)
    per_layer = {"weight", "bias", "frac", "pads", "shuffle", "x_zero", "qmax"}
    assert keys == ({"x_scale", "thresholds", "count"} | {f"{i}.{k}" for i in range(3) for k in per_layer}
                    | {f"{i}.{k}" for i in range(2) for k in ("mult", "next_zero")})
    again = IntegerHyperSynthesis.load(tmp_path / "h.npz")
    assert again.fast_path() is not None
    z = np.round(np.random.default_rng(9).normal(0, 5, size=(1, 12, 3, 7))).astype(np.float32)
    np.testing.assert_array_equal(again.indexes(z), ih.indexes_reference(z))
    _assert_same(again, z)


def test_threshold_lookup_equals_searchsorted():
    rng = np.random.default_rng(10)
    for frac in (20, 42, 44):
        t = np.floor(np.ldexp(TABLE[:-1], frac)).astype(np.int64)
        lookup = ThresholdLookup.build(t)
        assert lookup is not None
        y = np.concatenate([t, t - 1, t + 1, [0, 1, 2**53 - 1],
                            rng.integers(0, 2**53, 5000), rng.integers(0, int(t[-1]) * 2, 5000)])
        got = lookup(torch.from_numpy(y.astype(np.float64)))
        np.testing.assert_array_equal(got.numpy(), np.searchsorted(t, y, side="left"))
    # tables no key width separates, negative or huge thresholds: None (callers keep searchsorted)
    assert ThresholdLookup.build(np.array([5, 5, 9])) is None
    assert ThresholdLookup.build(np.array([-3, 4])) is None
    assert ThresholdLookup.build(np.array([1, 2**60])) is None
    dense = ThresholdLookup.build(np.arange(1000, 1064))  # neighbours 1 apart: needs fine keys
    y = np.arange(900, 1200)
    if dense is not None:
        np.testing.assert_array_equal(dense(torch.from_numpy(y.astype(np.float64))).numpy(),
                                      np.searchsorted(np.arange(1000, 1064), y, side="left"))


@pytest.fixture(scope="module")
def calibrated(sample_paths):
    """A tiny real ScaleHyperprior with DynaQuant candidates 6/8/10/16, calibrated (no training)."""
    from dqsearch.data import load_image, pad_to_multiple
    from dqsearch.models import build_model
    from dqsearch.quant.wrap import QuantPolicy, calibrate, wrap

    torch.manual_seed(0)
    model = wrap(build_model("bmshj2018-hyperprior", N=16, M=24), QuantPolicy.dynamic((6, 8, 10, 16))).eval()
    images = [pad_to_multiple(load_image(p).unsqueeze(0)[..., :128, :192], 64)[0] for p in sample_paths[:2]]
    calibrate(model, images)
    model.update(force=True)
    return model, images


@needs_int8
@pytest.mark.parametrize("profile", [(8, 8, 8), (16, 16, 16), (10, 8, 6), (6, 10, 16)])
def test_limb_path_equals_reference_on_a_calibrated_model(calibrated, profile):
    from dqsearch.integer.int_entropy import integer_hyper
    from dqsearch.quant.wrap import quantized_layers, set_profile

    model, images = calibrated
    names = [n for n in quantized_layers(model) if n.startswith("h_s.")]
    full = {n: 8 for n in quantized_layers(model)} | dict(zip(names, profile, strict=True))
    set_profile(model, full)
    ih = integer_hyper(model, full)
    assert ih.fast_path() is not None
    with torch.no_grad():
        for x in images:
            z_hat = torch.round(model.h_a(model.g_a(x).abs())).numpy()
            _assert_same(ih, z_hat)
            _assert_same(ih, z_hat * 7)  # far outside the calibrated range: clipped inputs
