"""Rewrites and storage are exact: sub-pixel deconvolution, folded GDN, int8 weights, bit packing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from compressai.layers import GDN
from dqsearch_ort.onnx_graph import int8_weights
from torch import nn

from dqsearch.deploy.modules import FoldedGDN, deployed_layer
from dqsearch.integer import subpixel
from dqsearch.integer.packing import pack_bits, unpack_bits
from dqsearch.integer.params import float_layer, layer_quant
from dqsearch.quant.blocks import from_float


@pytest.mark.parametrize("k,p,op", [(5, 2, 1), (3, 1, 1), (4, 1, 0)])
def test_subpixel_equals_conv_transpose(k, p, op):
    torch.manual_seed(k)
    ct = nn.ConvTranspose2d(6, 5, k, stride=2, padding=p, output_padding=op)
    module, _ = deployed_layer(float_layer("l", ct), use_subpixel=True)
    x = torch.randn(2, 6, 7, 9)
    with torch.no_grad():
        ref, out = ct(x), module(x)
    assert out.shape == ref.shape
    assert (out - ref).abs().max() < 1e-5 * ref.abs().max()


def test_no_subpixel_form_when_sizes_do_not_match():
    lq = float_layer("l", nn.ConvTranspose2d(4, 4, 5, stride=2, padding=2, output_padding=0))
    assert subpixel.plan(lq) is None
    with pytest.raises(ValueError, match="no sub-pixel form"):
        subpixel.rewrite(lq)


def test_subpixel_keeps_learned_integers_and_scales():
    torch.manual_seed(0)
    q = from_float(nn.ConvTranspose2d(4, 3, 5, stride=2, padding=2, output_padding=1), mode="fixed",
                   candidates=(6,))
    lq = layer_quant("l", q, 6)
    conv, _ = subpixel.rewrite(lq)
    deq = conv.w_scale[:, None, None, None] * (conv.w_int - conv.w_zero[:, None, None, None])
    np.testing.assert_array_equal(deq.astype(np.float32), conv.weight)  # missing taps are exact zeros
    assert conv.w_int.min() >= 0 and conv.w_int.max() <= 63


@pytest.mark.parametrize("inverse", [False, True])
def test_folded_gdn_equals_gdn(inverse):
    torch.manual_seed(1)
    gdn = GDN(8, inverse=inverse)
    with torch.no_grad():
        gdn.gamma.add_(0.05 * torch.rand_like(gdn.gamma))
    x = torch.randn(1, 8, 5, 6)
    with torch.no_grad():
        assert torch.equal(FoldedGDN(gdn)(x), gdn(x))


def test_int8_weights_are_the_learned_integers():
    torch.manual_seed(2)
    q = from_float(nn.Conv2d(8, 6, 3), mode="fixed", candidates=(8,))
    with torch.no_grad():  # off-centre zero-points: some channels cannot use zero-point 0
        q.weight_quantizer.zero_point["8"].copy_(torch.tensor([10.0, 128, 250, 127, 60, 200]))
    lq = layer_quant("l", q, 8)
    stored, zero = int8_weights(lq)
    deq = (stored.astype(np.float32) - zero[:, None, None, None]) * lq.w_scale[:, None, None, None]
    np.testing.assert_array_equal(deq, lq.weight)
    assert (zero == 0).any() and (zero != 0).any()


@pytest.mark.parametrize("bits", [2, 5, 8, 12, 16])
def test_bit_packing_round_trip(bits):
    v = np.random.default_rng(bits).integers(0, 2**bits, size=1001)
    data = pack_bits(v, bits)
    assert len(data) == -(-1001 * bits // 8)
    np.testing.assert_array_equal(unpack_bits(data, bits, 1001), v)


def test_symmetric_int8_weights_clip_only_out_of_range_values():
    torch.manual_seed(3)
    q = from_float(nn.Conv2d(4, 3, 3), mode="fixed", candidates=(8,))
    with torch.no_grad():
        q.weight_quantizer.zero_point["8"].copy_(torch.tensor([128.0, 20, 235]))
        q.weight_quantizer.scale["8"].mul_(0.5)  # weights span ±255 steps: some beyond int8
    lq = layer_quant("l", q, 8)
    stored, zero = int8_weights(lq, "symmetric")
    centred = lq.w_int - lq.w_zero[:, None, None, None]
    assert not zero.any()
    np.testing.assert_array_equal(stored, np.clip(centred, -128, 127))
    assert (stored != centred).any()  # channels 1 and 2 had values beyond int8
