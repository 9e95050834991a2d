"""Plain float PyTorch twins of a model's transforms, ready to export: each conv carries its
deployed (fake-quantized) weights, deconvolutions are optionally in sub-pixel form, and GDN's
parametrisation is folded into constants.

Exporting these (instead of the quantized blocks) gives a clean graph — one Conv per layer, no
quantizer arithmetic — onto which the ONNX step puts the learned quantization explicitly.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping

import torch
import torch.nn.functional as F
from compressai.layers import GDN
from torch import Tensor, nn

from ..integer import subpixel
from ..integer.params import LayerQuant


class FoldedGDN(nn.Module):
    """GDN/IGDN with β and γ computed once (CompressAI recomputes the reparametrisation per call);
    the same arithmetic as `compressai.layers.GDN.forward`."""

    def __init__(self, gdn: GDN):
        super().__init__()
        with torch.no_grad():
            beta = gdn.beta_reparam(gdn.beta).detach().clone()
            gamma = gdn.gamma_reparam(gdn.gamma).detach().clone()
        c = beta.numel()
        self.register_buffer("beta", beta)
        self.register_buffer("gamma", gamma.reshape(c, c, 1, 1))
        self.inverse = gdn.inverse

    def forward(self, x: Tensor) -> Tensor:
        norm = F.conv2d(x**2, self.gamma, self.beta)
        norm = torch.sqrt(norm) if self.inverse else torch.rsqrt(norm)
        return x * norm


class SubPixelConv(nn.Module):
    """Zero padding (possibly asymmetric), a stride-1 conv, PixelShuffle: a transposed conv."""

    def __init__(self, conv: nn.Conv2d, pads: tuple[int, int, int, int], factor: int):
        super().__init__()
        top, left, bottom, right = pads
        symmetric = top == bottom and left == right
        self.pad = None if symmetric else nn.ZeroPad2d((left, right, top, bottom))
        if symmetric:
            conv.padding = (top, left)
        self.conv = conv
        self.shuffle = nn.PixelShuffle(factor)

    def forward(self, x: Tensor) -> Tensor:
        if self.pad is not None:
            x = self.pad(x)
        return self.shuffle(self.conv(x))


class Abs(nn.Module):
    """|x|: ScaleHyperprior's h_a reads the magnitude of y."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.abs(x)


def plain_conv(lq: LayerQuant) -> nn.Module:
    """nn.Conv2d / nn.ConvTranspose2d holding the layer's deployed float weights."""
    w = torch.from_numpy(lq.weight)
    cls = nn.ConvTranspose2d if lq.transposed else nn.Conv2d
    c_in, c_out = (w.shape[0], w.shape[1]) if lq.transposed else (w.shape[1], w.shape[0])
    kw = dict(output_padding=lq.output_padding) if lq.transposed else {}
    conv = cls(c_in, c_out, tuple(w.shape[2:]), stride=lq.stride, padding=lq.padding,
               bias=lq.bias is not None, **kw)
    with torch.no_grad():
        conv.weight.copy_(w)
        if lq.bias is not None:
            conv.bias.copy_(torch.from_numpy(lq.bias))
    return conv


def deployed_layer(lq: LayerQuant, use_subpixel: bool) -> tuple[nn.Module, LayerQuant]:
    """The module a layer becomes, and the LayerQuant its single Conv node carries."""
    if use_subpixel and lq.transposed and subpixel.plan(lq) is not None:
        conv_lq, pads = subpixel.rewrite(lq)
        return SubPixelConv(plain_conv(conv_lq), pads, lq.stride[0]), conv_lq
    return plain_conv(lq), lq


def _set(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def transform_module(model: nn.Module, transform: str, layers: Mapping[str, LayerQuant],
                     use_subpixel: bool | Collection[str] = False, abs_input: bool = False
                     ) -> tuple[nn.Module, dict[str, tuple[str, LayerQuant]]]:
    """A float copy of `model.<transform>` with deployed weights; returns it and, per layer, the
    module path of its Conv2d/ConvTranspose2d inside the copy and that conv's LayerQuant.
    `use_subpixel`: True/False for every deconvolution, or the names of the layers to rewrite."""
    src = model.get_submodule(transform)
    mod = copy.deepcopy(src).eval()
    convs: dict[str, tuple[str, LayerQuant]] = {}
    prefix = transform + "."
    for name, lq in layers.items():
        if not name.startswith(prefix):
            continue
        rel = name[len(prefix):]
        sub = use_subpixel if isinstance(use_subpixel, bool) else name in use_subpixel
        new, conv_lq = deployed_layer(lq, sub)
        _set(mod, rel, new)
        convs[name] = (rel + ".conv" if isinstance(new, SubPixelConv) else rel, conv_lq)
    for path, m in list(mod.named_modules()):
        if isinstance(m, GDN):
            _set(mod, path, FoldedGDN(m))
    for m in mod.modules():
        for p in m.parameters(recurse=False):
            p.requires_grad_(False)
    if abs_input:
        mod = nn.Sequential(Abs(), mod)
        convs = {k: ("1." + p, lq) for k, (p, lq) in convs.items()}
    return mod, convs
