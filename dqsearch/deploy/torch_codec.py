"""The integer hyper-synthesis on the PyTorch side: `dqsearch.codec` uses it by default.

A float h_s is not bit-identical across engines (ONNX Runtime vs PyTorch: ~3e-7 relative) nor
across machines, and a predicted scale within that distance of a scale-table boundary picks
another table: the rANS stream desynchronises and decodes to garbage without an error (9 of 24
Kodak streams written by PyTorch's float h_s and decoded through ONNX Runtime). The integer h_s
(`int_hyper`) gives the same indexes everywhere, so `dqsearch.codec` computes the entropy
parameters with it whenever the model allows (a quantized ScaleHyperprior whose h_s layers are all
quantized) and tags the stream `integer`; other models keep PyTorch's float h_s (`float:torch`).
`encode`/`decode` here are the same codec with the integer arithmetic required.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..codec import Encoded, Header
from ..codec import decode as _decode
from ..codec import encode as _encode
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
    layers = model_layers(model, profile)
    hs = [lq for n, lq in layers.items() if n.startswith("h_s.")]
    return IntegerHyperSynthesis.build(hs, model.gaussian_conditional.scale_table.tolist())


def integer_indexes(model: nn.Module, profile: dict[str, int], z_hat: torch.Tensor) -> torch.Tensor:
    """Scale-table indexes [1, M, H, W] from z_hat, bit-identical on every engine and machine."""
    idx = integer_hyper(model, profile).indexes(np.ascontiguousarray(z_hat.numpy()))
    return torch.from_numpy(idx)


def encode(model: nn.Module, model_id: str, image: torch.Tensor) -> Encoded:
    """`dqsearch.codec.encode` with the integer entropy parameters required."""
    return _encode(model, model_id, image, hyper="integer")


def decode(model: nn.Module, model_id: str, data: bytes) -> tuple[torch.Tensor, Header]:
    """`dqsearch.codec.decode` (it decodes integer streams with the integer h_s)."""
    return _decode(model, model_id, data)
