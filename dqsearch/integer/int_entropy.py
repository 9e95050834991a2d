"""Integer entropy parameters of a quantized ScaleHyperprior: the scale-table indexes from an
integer-only hyper-synthesis, identical on every engine and machine. Apart from the codec so that
the codec (which writes integer streams by default) can use it without importing the deploy
engine that itself builds on the codec."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..quant.wrap import FP32, quantized_layers
from .int_hyper import IntegerHyperSynthesis
from .params import model_layers


def integer_unsupported(model: nn.Module, profile: dict[str, int]) -> str | None:
    """Why this model at this profile cannot compute integer entropy parameters (None: it can)."""
    if type(model).__name__ != "ScaleHyperprior":
        return f"{type(model).__name__} is not a ScaleHyperprior (the integer h_s predicts scales only)"
    layers = quantized_layers(model)
    hs = [n for n in layers if n.startswith("h_s.")]
    if not hs:
        return "its h_s is not quantized (an FP32 model)"
    if any(profile.get(n, FP32) == FP32 for n in hs):
        return "an h_s layer runs in FP32 at this precision profile"
    return None


def integer_hyper(model: nn.Module, profile: dict[str, int]) -> IntegerHyperSynthesis:
    """The integer h_s of the model at `profile` (built from the learned parameters, ~ms)."""
    # only h_s matters here: other layers may run at any precision, FP32 included (a latency
    # backend's PTQ copy is wrapped over 2–16 bits and timed with FP32 layers elsewhere)
    layers = model_layers(model, profile, allow_fp32=True)
    hs = [lq for n, lq in layers.items() if n.startswith("h_s.")]
    return IntegerHyperSynthesis.build(hs, scale_table(model))


def scale_table(model: nn.Module) -> list[float]:
    """The model's scale table, or CompressAI's default where it is not built yet (a freshly
    initialised model, e.g. the copy a latency backend profiles: same number of entries)."""
    table = model.gaussian_conditional.scale_table
    if table.numel() == 0:
        from compressai.models.google import get_scale_table

        table = get_scale_table()
    return table.tolist()


def integer_indexes(model: nn.Module, profile: dict[str, int], z_hat: torch.Tensor) -> torch.Tensor:
    """Scale-table indexes [1, M, H, W] from z_hat, bit-identical on every engine and machine."""
    idx = integer_hyper(model, profile).indexes(np.ascontiguousarray(z_hat.numpy()))
    return torch.from_numpy(idx)
