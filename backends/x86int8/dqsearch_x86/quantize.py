"""The learned integers of one layer in the form PyTorch's x86 int8 engine takes.

The x86 engine runs uint8 activations with one (scale, zero-point) per tensor and int8 weights
with per-channel scales but *no* weight zero-points, so:

* input quantizer: `dqsearch.integer.params.input_params`, the rule the ort-cpu int8 export uses
  too (the learned per-tensor pair, else the union of the learned per-channel clipping ranges at
  255 levels), so both engines run the same integers;
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
