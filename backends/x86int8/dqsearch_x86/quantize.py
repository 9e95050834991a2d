"""The learned integers of one layer in the form PyTorch's x86 int8 engine takes.

The x86 engine runs uint8 activations with one (scale, zero-point) per tensor and int8 weights
with per-channel scales but *no* weight zero-points, so:

* input quantizer: the learned per-tensor pair (a model trained with per-tensor activations: the
  int8 input is then exactly the fake-quantized one), else the union of the learned per-channel
  clipping ranges at 255 levels — the same rule as the ort-cpu int8 export, so both engines run
  the same integers (`input_params`, `u8_params`: deliberately the same few lines as
  `dqsearch_ort.onnx_graph`, which this plugin does not depend on; a test checks they agree);
* weights: q − z_w as int8 (`symmetric_int8`), exact wherever it fits [−127, 127];
* sub-pixel deconvolutions: output channels in phase-major order (`phase_major`), so that in
  channels-last memory each pixel holds 4 whole C-vectors and an IGDN runs on the conv's output
  without unshuffling it.
"""

from __future__ import annotations

import numpy as np

from dqsearch.integer.params import LayerQuant


def symmetric_int8(lq: LayerQuant) -> tuple[np.ndarray, np.ndarray]:
    """The learned integers q − z_w as int8 without zero-points, and their per-channel scales
    (float64): exact for every output channel whose values fit [−127, 127]; the few channels that
    do not (asymmetric 8-bit ranges: ≤ 0.1% of 8-bit weights in our models) are rescaled to fit
    instead of clipped, so their largest weights keep their size. Conv2d layout [O, C, kh, kw]."""
    if lq.transposed:
        raise ValueError(f"{lq.name}: int8 weights are built for Conv2d (rewrite deconvolutions first)")
    centred = (lq.w_int - lq.w_zero.reshape(-1, 1, 1, 1)).astype(np.float64)
    peak = np.abs(centred).reshape(len(centred), -1).max(axis=1)
    shrink = np.where(peak > 127, peak / 127, 1.0)
    q = np.round(centred / shrink.reshape(-1, 1, 1, 1)).astype(np.int8)
    return q, lq.w_scale.astype(np.float64) * shrink


def phase_major(channels: int, factor: int = 2) -> np.ndarray:
    """PixelShuffle's channel order (c, a, b) → phase-major (a, b, c): index array over channels."""
    phases = factor * factor
    return np.arange(channels).reshape(channels // phases, phases).T.reshape(-1)


def union_range(lq: LayerQuant) -> tuple[float, float]:
    """The smallest range holding every input channel's learned clipping range, and zero."""
    lo = lq.x_scale * (0 - lq.x_zero)
    hi = lq.x_scale * (lq.qmax - lq.x_zero)
    return min(float(lo.min()), 0.0), max(float(hi.max()), 0.0)


def u8_params(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero-point) of an asymmetric uint8 quantizer over [lo, hi] (which holds zero)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / 255.0
    return scale, int(np.clip(round(-lo / scale), 0, 255))


def input_params(lq: LayerQuant) -> tuple[float, int]:
    """The int8 layer's input (scale, zero-point): the learned pair for a per-tensor quantizer,
    else the union of the learned per-channel clipping ranges at 255 levels (an approximation)."""
    if lq.x_per_tensor:
        return float(lq.x_scale[0]), int(lq.x_zero[0])
    return u8_params(*union_range(lq))
