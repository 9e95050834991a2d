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

import torch
from torch import nn

from ..codec import Encoded, Header
from ..codec import decode as _decode
from ..codec import encode as _encode
from ..integer.int_entropy import integer_hyper, integer_indexes, integer_unsupported  # noqa: F401


def encode(model: nn.Module, model_id: str, image: torch.Tensor) -> Encoded:
    """`dqsearch.codec.encode` with the integer entropy parameters required."""
    return _encode(model, model_id, image, hyper="integer")


def decode(model: nn.Module, model_id: str, data: bytes) -> tuple[torch.Tensor, Header]:
    """`dqsearch.codec.decode` (it decodes integer streams with the integer h_s)."""
    return _decode(model, model_id, data)
