"""The PyTorch fake-quantized codec with the integer hyper-synthesis.

`dqsearch.codec` computes the entropy parameters with the float h_s, and ONNX Runtime's float h_s
is not bit-identical to PyTorch's: on Kodak, 4 (6 with a sub-pixel h_s) of 24 PyTorch
streams picked a different scale table for some latent in the deployed decoder and decoded to
garbage. Encoding with the integer h_s on both sides removes that: this module is the PyTorch
side (same bitstream format, tagged `integer`), so a stream from the training framework decodes
bit-exactly through an export made with `--hyper integer`, and the other way round.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from ..codec import PAD_MULTIPLE, BitstreamError, Encoded, Header, _profile_for, pack, unpack
from ..data import crop_padding, pad_to_multiple
from ..quant.wrap import quantized_layers, set_profile
from .int_hyper import IntegerHyperSynthesis
from .params import model_layers


def _hyper(model: nn.Module, profile: dict[str, int]) -> IntegerHyperSynthesis:
    layers = model_layers(model, profile)
    hs = [lq for n, lq in layers.items() if n.startswith("h_s.")]
    return IntegerHyperSynthesis.build(hs, model.gaussian_conditional.scale_table.tolist())


def _check(model: nn.Module) -> None:
    if not quantized_layers(model) or getattr(model, "h_s", None) is None:
        raise ValueError("the integer hyper-synthesis needs a quantized hyperprior model")
    if type(model).__name__ != "ScaleHyperprior":
        raise ValueError(f"the integer hyper-synthesis predicts scales only; {type(model).__name__} "
                         "is not a ScaleHyperprior")


@torch.no_grad()
def encode(model: nn.Module, model_id: str, image: torch.Tensor) -> Encoded:
    """Like `dqsearch.codec.encode`, with the entropy parameters from the integer h_s."""
    _check(model)
    if image.dim() == 3:
        image = image.unsqueeze(0)
    _, _, h, w = image.shape
    model.eval()
    t0 = time.perf_counter()
    x, _ = pad_to_multiple(image, PAD_MULTIPLE)
    profile = _profile_for(model, x)
    set_profile(model, profile)
    y = model.g_a(x)
    z = model.h_a(torch.abs(y))
    z_strings = model.entropy_bottleneck.compress(z)
    z_hat = model.entropy_bottleneck.decompress(z_strings, z.size()[-2:])
    indexes = torch.from_numpy(_hyper(model, profile).indexes(z_hat.numpy()))
    y_strings = model.gaussian_conditional.compress(y, indexes)
    data = pack(Header(model_id, h, w, tuple(profile.values()), "integer"), [y_strings, z_strings],
                z.size()[-2:])
    return Encoded(data, profile, time.perf_counter() - t0, h, w)


@torch.no_grad()
def decode(model: nn.Module, model_id: str, data: bytes) -> tuple[torch.Tensor, Header]:
    """Decode an integer-hyper stream (from here or from a deployed encoder) with PyTorch."""
    _check(model)
    header, strings, shape = unpack(data)
    if header.hyper != "integer":
        raise BitstreamError("file uses the float hyper-synthesis: decode it with dqsearch.codec.decode")
    if header.model_id != model_id:
        raise BitstreamError(f"file was written by model {header.model_id}, not {model_id}")
    layers = list(quantized_layers(model))
    if len(layers) != len(header.profile_bits):
        raise BitstreamError(f"file has {len(header.profile_bits)} layer bit-widths, the model "
                             f"{len(layers)} quantized layers")
    profile = dict(zip(layers, header.profile_bits, strict=True))
    model.eval()
    set_profile(model, profile)
    z_hat = model.entropy_bottleneck.decompress(strings[1], shape)
    indexes = torch.from_numpy(_hyper(model, profile).indexes(z_hat.numpy()))
    y_hat = model.gaussian_conditional.decompress(strings[0], indexes, z_hat.dtype)
    x_hat = model.g_s(y_hat)
    _, pad = pad_to_multiple(torch.empty(1, 1, header.height, header.width), PAD_MULTIPLE)
    return crop_padding(x_hat, pad).clamp(0, 1), header
