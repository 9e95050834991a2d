"""Ranges of the conv outputs, the one quantity an integer kernel needs that training did not learn.

QLinearConv writes uint8, so each int8 layer's output is requantized; the fake-quantized model has no
quantizer there (its convs output float into GDN or the next quantizer). The range is measured on a
few images with the fake-quantized PyTorch model at the exported profile — the learned scales and
zero-points themselves are never recalibrated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ..backends.tracing import float_model
from ..codec import PAD_MULTIPLE
from ..data import list_images, load_image, pad_to_multiple, sample_images_dir
from ..quant.wrap import QuantPolicy, calibrate, conv_layers, quantized_layers, set_profile, wrap

CALIBRATION_SIDE = 256


def calibration_images(folder: str | Path | None = None, limit: int = 4, side: int = CALIBRATION_SIDE
                       ) -> list[torch.Tensor]:
    """Up to `limit` images (default: the bundled samples), centre-cropped to at most side×side."""
    paths = list_images(folder or sample_images_dir())[:limit]
    if not paths:
        raise ValueError(f"no calibration images in {folder}")
    out = []
    for p in paths:
        x = load_image(p)
        h, w = x.shape[-2:]
        top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
        out.append(pad_to_multiple(x[:, top:top + side, left:left + side].unsqueeze(0), PAD_MULTIPLE)[0])
    return out


def ptq_copy(model: nn.Module, bits: Sequence[int], images: Sequence[torch.Tensor] | None = None
             ) -> tuple[nn.Module, list[torch.Tensor]]:
    """(a post-training-quantized copy of `model`, the images it was calibrated on): every conv
    wrapped dynamic over `bits` (DPA quantizers, the training default) and its ranges calibrated
    on `images` (default: two bundled 128² crops). What the deploying backends profile: timing
    does not depend on weight values, only on the graph a profile deploys."""
    with torch.random.fork_rng(devices=[]):  # selectors' random init must not move the caller's RNG
        torch.manual_seed(0)
        copy = wrap(float_model(model), QuantPolicy.dynamic(tuple(bits))).eval()
    images = list(images) if images is not None else calibration_images(limit=2, side=128)
    with torch.no_grad():
        calibrate(copy, images)
    return copy, images


@torch.no_grad()
def output_ranges(model: nn.Module, profile: Mapping[str, int], images: Sequence[torch.Tensor]
                  ) -> dict[str, tuple[float, float]]:
    """(min, max) of every conv's output over `images`, the model forced to `profile`."""
    ranges: dict[str, list[float]] = {}

    def hook(name: str):
        def record(_m, _inp, out):
            lo, hi = float(out.min()), float(out.max())
            r = ranges.setdefault(name, [lo, hi])
            r[0], r[1] = min(r[0], lo), max(r[1], hi)
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in conv_layers(model)]
    was_training = model.training
    model.eval()
    try:
        if quantized_layers(model):
            set_profile(model, profile, allow_fp32=True)
        for x in images:
            model(x)
    finally:
        for h in handles:
            h.remove()
        if quantized_layers(model):
            set_profile(model, None)
        model.train(was_training)
    return {n: (lo, hi) for n, (lo, hi) in ranges.items()}
