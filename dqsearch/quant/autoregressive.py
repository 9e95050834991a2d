"""Serial context-model coding for wrapped autoregressive models (mbt2018, cheng2020).

CompressAI's `_compress_ar` / `_decompress_ar` call `F.conv2d` with the context model's raw
weights, bypassing the module — so a quantized `context_prediction` would be ignored while coding
and the decoder would disagree with `forward()`. These replacements (adapted from CompressAI 1.2.8,
BSD 3-Clause Clear licence) run the quantized block on each 5×5 crop instead; everything else is
unchanged. The precision profile must be forced (`set_profile`) before coding, as the codec does.
"""

from __future__ import annotations

import types

import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from torch import Tensor, nn

from .blocks import QuantizedConv


def _context(model: nn.Module, y_crop: Tensor, padding: int) -> Tensor:
    """The context model's output at the crop centre (its own padding covers the crop exactly)."""
    out = model.context_prediction(y_crop)
    return out[:, :, padding : padding + 1, padding : padding + 1]


def _compress_ar(self, y_hat, params, height, width, kernel_size, padding):
    cdf = self.gaussian_conditional.quantized_cdf.tolist()
    cdf_lengths = self.gaussian_conditional.cdf_length.tolist()
    offsets = self.gaussian_conditional.offset.tolist()
    encoder = BufferedRansEncoder()
    symbols_list, indexes_list = [], []
    for h in range(height):
        for w in range(width):
            y_crop = y_hat[:, :, h : h + kernel_size, w : w + kernel_size]
            ctx_p = _context(self, y_crop, padding)
            p = params[:, :, h : h + 1, w : w + 1]
            gaussian_params = self.entropy_parameters(torch.cat((p, ctx_p), dim=1))
            gaussian_params = gaussian_params.squeeze(3).squeeze(2)
            scales_hat, means_hat = gaussian_params.chunk(2, 1)
            indexes = self.gaussian_conditional.build_indexes(scales_hat)
            y_crop = y_crop[:, :, padding, padding]
            y_q = self.gaussian_conditional.quantize(y_crop, "symbols", means_hat)
            y_hat[:, :, h + padding, w + padding] = y_q + means_hat
            symbols_list.extend(y_q.squeeze().tolist())
            indexes_list.extend(indexes.squeeze().tolist())
    encoder.encode_with_indexes(symbols_list, indexes_list, cdf, cdf_lengths, offsets)
    return encoder.flush()


def _decompress_ar(self, y_string, y_hat, params, height, width, kernel_size, padding):
    cdf = self.gaussian_conditional.quantized_cdf.tolist()
    cdf_lengths = self.gaussian_conditional.cdf_length.tolist()
    offsets = self.gaussian_conditional.offset.tolist()
    decoder = RansDecoder()
    decoder.set_stream(y_string)
    for h in range(height):
        for w in range(width):
            y_crop = y_hat[:, :, h : h + kernel_size, w : w + kernel_size]
            ctx_p = _context(self, y_crop, padding)
            p = params[:, :, h : h + 1, w : w + 1]
            gaussian_params = self.entropy_parameters(torch.cat((p, ctx_p), dim=1))
            scales_hat, means_hat = gaussian_params.chunk(2, 1)
            indexes = self.gaussian_conditional.build_indexes(scales_hat)
            rv = decoder.decode_stream(indexes.squeeze().tolist(), cdf, cdf_lengths, offsets)
            rv = torch.Tensor(rv).reshape(1, -1, 1, 1)
            rv = self.gaussian_conditional.dequantize(rv, means_hat)
            hp, wp = h + padding, w + padding
            y_hat[:, :, hp : hp + 1, wp : wp + 1] = rv


def patch_autoregressive(model: nn.Module) -> bool:
    """Route a wrapped autoregressive model's serial coding through its quantized context block."""
    ctx = getattr(model, "context_prediction", None)
    if not hasattr(model, "_compress_ar") or not isinstance(ctx, QuantizedConv):
        return False
    model._compress_ar = types.MethodType(_compress_ar, model)
    model._decompress_ar = types.MethodType(_decompress_ar, model)
    return True
