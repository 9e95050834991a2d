"""Quantized Conv2d / ConvTranspose2d: FP32, a fixed bit-width (DPA, "Q-"), or a mixture (DBWS, "DQ-").

Weights and input activations share the layer's bit-width. A dynamic layer trains with one of two
fusions of its K quantized branches:

- `output` (default, the paper's probability-weighted fusion): y = Σ_k w_k·conv(Q_k(x), Q_k(W)).
  With the straight-through hard sample w is one-hot in the forward pass, so y is exactly the
  selected branch — the network inference runs — and the gradient to w_k is ⟨∂L/∂y, y_k⟩. Only
  the selected branch needs a backward pass; the others run forward once under no_grad.
- `input-mix` (the earlier fusion, kept as an option): conv(Σ_k w_k·Q_k(x), Σ_k w_k·Q_k(W)) as one
  grouped convolution per batch; one convolution, but a linearised gradient to w.

At inference only the chosen branch runs.

The blocks subclass the torch layers they replace, so parameter names (`g_a.0.weight`) and
`isinstance` checks in CompressAI keep working and an FP32 state dict loads into a wrapped model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .quantizer import QUANTIZERS
from .selector import RELAXATIONS, BitSelector, relaxed_sample

MODES = ("fp32", "fixed", "dynamic")
FUSIONS = ("output", "input-mix")
#: Input-activation quantizer granularity: one (s, z) per input channel (DynaQuant's DPA) or one
#: per tensor (what int8 kernels take). Weights are always per output channel.
GRANULARITIES = ("channel", "tensor")
OUTPUT_BITS = 8  # a learned output quantizer's width: the uint8 output of QLinearConv


class QuantizedConv:
    """Mixin with the quantization state shared by the Conv2d and ConvTranspose2d blocks."""

    weight_channel_dim: int  # output-channel axis of the weight tensor
    # `_conv(x, weight, bias, groups_factor=1)` comes from the Conv2d / ConvTranspose2d subclass.

    def _init_quant(
        self,
        mode: str,
        candidates: Sequence[int],
        quantizer: str = "dpa",
        quantizer_options: dict | None = None,
        selector: str | None = "per-layer",
        selector_options: dict | None = None,
        fusion: str = "output",
        relaxation: str = "st",
        activation_granularity: str = "channel",
        quantize_output: bool = False,
    ) -> None:
        if activation_granularity not in GRANULARITIES:
            raise ValueError(f"activation_granularity must be one of {GRANULARITIES}, "
                             f"got {activation_granularity!r}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if relaxation not in RELAXATIONS:
            raise ValueError(f"relaxation must be one of {RELAXATIONS}, got {relaxation!r}")
        self.fusion, self.relaxation = fusion, relaxation
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {sorted(QUANTIZERS)}, got {quantizer!r}")
        self.mode = mode
        self.candidates: tuple[int, ...] = tuple(sorted(candidates)) if mode != "fp32" else ()
        if mode == "fixed" and len(self.candidates) != 1:
            raise ValueError(f"a fixed-precision layer needs exactly one bit-width, got {candidates}")
        if mode == "dynamic" and len(self.candidates) < 2:
            raise ValueError(f"a dynamic layer needs at least two candidate bit-widths, got {candidates}")
        self.forced_bits: int | None = None
        self.calibrating = False  # while True the layer runs FP32 (activation calibration)
        self.external_probs: Tensor | None = None  # fusion weights given directly (tests, analysis)
        self.external_selection: tuple[Tensor, Tensor] | None = None  # (w, p) from the global selector
        self.last_probs: Tensor | None = None  # selector probabilities p (L_bits, E[T])
        self.last_weights: Tensor | None = None  # fusion weights w of the last forward
        self.last_bits: Tensor | None = None
        self.output_quantizer: nn.Module | None = None
        if mode == "fp32":
            return
        opts = dict(quantizer_options or {})
        cls = QUANTIZERS[quantizer]
        wdim = self.weight_channel_dim
        weight_opts = {**opts, "track": True} if quantizer == "minmax" else opts
        self.weight_quantizer = cls(self.weight.shape[wdim], wdim, self.candidates,
                                    ndim=self.weight.dim(), **weight_opts)
        act_channels = self.in_channels if activation_granularity == "channel" else 1
        self.input_quantizer = cls(act_channels, 1, self.candidates, ndim=4, **opts)
        # What an int8 kernel writes: its output requantized to uint8 with one (s, z) per tensor.
        # Learned like the input's; it quantizes the output of the candidates that run in int8
        # (<= 8 bits), wider ones keep a float output as their deployment (int16 QDQ) does.
        if quantize_output:
            if quantizer != "dpa":
                raise ValueError("learned output quantizers need the dpa quantizer")
            if mode == "dynamic" and fusion == "input-mix":
                raise ValueError("learned output quantizers need the output fusion")
            if min(self.candidates) <= OUTPUT_BITS:
                self.output_quantizer = cls(1, 1, (OUTPUT_BITS,), ndim=4, **opts)
        with torch.no_grad():
            self.weight_quantizer.observe(self._effective_weight())
        if mode == "dynamic" and selector == "per-layer":
            self.selector = BitSelector(self.in_channels, len(self.candidates), 1, **(selector_options or {}))

    # --- pieces -------------------------------------------------------------------------------
    def _effective_weight(self) -> Tensor:
        mask = getattr(self, "mask", None)  # CompressAI's MaskedConv2d keeps a causal mask
        return self.weight * mask if mask is not None else self.weight

    def _quantized(self, x: Tensor, bits: int) -> Tensor:
        w = self.weight_quantizer(self._effective_weight(), bits)
        return self._output(self._conv(self.input_quantizer(x, bits), w, self.bias), bits)

    def _output(self, y: Tensor, bits: int) -> Tensor:
        """The conv output as the int8 kernel writes it (with a learned output quantizer)."""
        if self.output_quantizer is None or bits > OUTPUT_BITS:
            return y
        return self.output_quantizer(y, OUTPUT_BITS)

    def _selection(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(fusion weights w, probabilities p), each [batch, K]."""
        if self.external_probs is not None:
            return self.external_probs, self.external_probs
        if self.external_selection is not None:
            return self.external_selection
        if not hasattr(self, "selector"):
            raise RuntimeError("dynamic layer has no selector and got no probabilities from the "
                               "global selector: run the first layer first or force a profile")
        logits = self.selector(x)[:, 0]
        return relaxed_sample(logits, float(self.selector.temperature), self.training, self.relaxation)

    # --- forward ------------------------------------------------------------------------------
    def quant_forward(self, x: Tensor) -> Tensor:
        y = self._select_and_run(x)
        if getattr(self, "global_selector", None) is not None and not self.calibrating:
            self._dispatch_global(y)
        return y

    def _dispatch_global(self, output: Tensor) -> None:
        """Hand each dynamic layer its slice of the global selector's distribution (eq. 7)."""
        sel = self.global_selector
        w, p = relaxed_sample(sel(output), float(sel.temperature), self.training, self.relaxation)
        for i, target in enumerate(self.dispatch_targets):
            target.external_selection = (w[:, i], p[:, i])

    def _select_and_run(self, x: Tensor) -> Tensor:
        if self.mode == "fp32" or self.calibrating or self.forced_bits == 32:
            return self._conv(x, self._effective_weight(), self.bias)
        if self.forced_bits is not None:
            self._record_fixed(x.shape[0], self.forced_bits, x)
            return self._quantized(x, self.forced_bits)
        if self.mode == "fixed":
            self._record_fixed(x.shape[0], self.candidates[0], x)
            return self._quantized(x, self.candidates[0])
        weights, probs = self._selection(x)
        self.last_probs, self.last_weights = probs, weights
        cand = torch.tensor(self.candidates, device=x.device)
        if self.training:
            self.last_bits = cand[weights.detach().argmax(dim=-1)]
            if self.fusion == "input-mix":
                return self._mixture(x, weights)
            return self._output_fusion(x, weights)
        chosen = cand[weights.argmax(dim=-1)]
        self.last_bits = chosen
        return self._per_sample(x, chosen)

    def _record_fixed(self, batch: int, bits: int, x: Tensor) -> None:
        self.last_bits = torch.full((batch,), bits, device=x.device, dtype=torch.long)
        if self.mode == "dynamic":
            onehot = torch.tensor([float(b == bits) for b in self.candidates], device=x.device)
            self.last_probs = self.last_weights = onehot.expand(batch, -1)

    def _per_sample(self, x: Tensor, chosen: Tensor) -> Tensor:
        values = chosen.unique()
        if len(values) == 1:
            return self._quantized(x, int(values[0]))
        outs = [None] * x.shape[0]
        for b in values.tolist():
            idx = (chosen == b).nonzero().flatten()
            y = self._quantized(x[idx], b)
            for j, i in enumerate(idx.tolist()):
                outs[i] = y[j : j + 1]
        return torch.cat(outs)

    def _output_fusion(self, x: Tensor, weights: Tensor) -> Tensor:
        """Σ_k w_k·conv(Q_k(x), Q_k(W)) per image (the paper's fusion of branch outputs)."""
        if self.relaxation == "soft":  # a soft blend: every branch is in the output and the graph
            ys = torch.stack([self._quantized(x, b) for b in self.candidates], dim=1)
            return torch.einsum("bk,bk...->b...", weights.to(ys.dtype), ys)
        # Hard one-hot: the forward value is the selected branch of each image, computed with grad
        # once per bit-width group. Each image's other branches run forward only, under no_grad;
        # `_SelectedBranch` gives w_k the gradient ⟨∂L/∂y, y_k⟩ that autograd would give for
        # Σ_k w_k·y_k, without K backward convolutions.
        batch = x.shape[0]
        idx = weights.detach().argmax(dim=-1)
        need_all = weights.requires_grad
        w_eff = self._effective_weight()
        pieces: list[Tensor] = []
        order: list[Tensor] = []
        others: list[tuple[int, Tensor, Tensor]] = []
        for k, b in enumerate(self.candidates):
            sel = (idx == k).nonzero().flatten()
            wq = self.weight_quantizer(w_eff, b) if len(sel) or need_all else None
            if len(sel):
                xs = x if len(sel) == batch else x[sel]
                pieces.append(self._output(self._conv(self.input_quantizer(xs, b), wq, self.bias), b))
                order.append(sel)
            rest = (idx != k).nonzero().flatten()
            if need_all and len(rest):
                with torch.no_grad():
                    xr = x.detach() if len(rest) == batch else x.detach()[rest]
                    bias = self.bias.detach() if self.bias is not None else None
                    yr = self._output(self._conv(self.input_quantizer(xr, b), wq.detach(), bias), b)
                    others.append((k, rest, yr))
        if len(pieces) == 1:
            y = pieces[0]
        else:
            perm = torch.cat(order)
            y = torch.cat(pieces)[torch.argsort(perm)]
        if not need_all:
            return y
        with torch.no_grad():
            branch = y.new_empty((batch, len(self.candidates), *y.shape[1:]))
            branch[torch.arange(batch, device=y.device), idx] = y.detach()
            for k, rest, yr in others:
                branch[rest, k] = yr
        return _SelectedBranch.apply(y, weights, branch)

    def _mixture(self, x: Tensor, probs: Tensor) -> Tensor:
        """Σ_k p_k·Q_k(x) convolved with Σ_k p_k·Q_k(W), per image, as one grouped convolution
        (`input-mix` fusion; with a hard one-hot it computes exactly the selected branch)."""
        batch = x.shape[0]
        xq = torch.stack([self.input_quantizer(x, b) for b in self.candidates], dim=1)
        x_mix = torch.einsum("bk,bk...->b...", probs.to(x.dtype), xq)
        wq = torch.stack([self.weight_quantizer(self._effective_weight(), b) for b in self.candidates])
        w_mix = torch.einsum("bk,k...->b...", probs.to(wq.dtype), wq)
        if batch == 1:
            return self._conv(x_mix, w_mix[0], self.bias)
        x_flat = x_mix.reshape(1, -1, *x_mix.shape[2:])
        w_flat = w_mix.reshape(-1, *w_mix.shape[2:])
        bias = self.bias.repeat(batch) if self.bias is not None else None
        y = self._conv(x_flat, w_flat, bias, groups_factor=batch)
        return y.view(batch, -1, *y.shape[2:])

    def quant_extra_repr(self) -> str:
        extra = f", fusion={self.fusion}, relaxation={self.relaxation}" if self.mode == "dynamic" else ""
        return f"mode={self.mode}, bits={list(self.candidates)}{extra}"


class _SelectedBranch(torch.autograd.Function):
    """Copy of the selected branch's output y; w gets ⟨∂L/∂y_b, branch_{b,k}⟩ per image and
    candidate (the gradient of Σ_k w_k·y_k at a one-hot w), computed as one batched matmul."""

    @staticmethod
    def forward(ctx, y: Tensor, weights: Tensor, branch: Tensor) -> Tensor:
        ctx.save_for_backward(branch)
        ctx.weights_dtype = weights.dtype
        return y.clone()  # not a view: the next layer (GDN, ReLU) may work in place

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        (branch,) = ctx.saved_tensors
        b, k = branch.shape[:2]
        gw = torch.bmm(branch.reshape(b, k, -1), grad.reshape(b, -1, 1)).view(b, k)
        return grad, gw.to(ctx.weights_dtype), None


class QuantConv2d(QuantizedConv, nn.Conv2d):
    """Conv2d whose weights and inputs are fake-quantized per the layer's policy."""

    weight_channel_dim = 0

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None, groups_factor: int = 1) -> Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation,
                        self.groups * groups_factor)

    def forward(self, x: Tensor) -> Tensor:
        return self.quant_forward(x)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", " + self.quant_extra_repr()


class QuantConvTranspose2d(QuantizedConv, nn.ConvTranspose2d):
    """ConvTranspose2d whose weights and inputs are fake-quantized per the layer's policy."""

    weight_channel_dim = 1

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None, groups_factor: int = 1) -> Tensor:
        return F.conv_transpose2d(x, weight, bias, self.stride, self.padding, self.output_padding,
                                  self.groups * groups_factor, self.dilation)

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if output_size is not None:
            raise ValueError("output_size is not supported by quantized transposed convolutions")
        return self.quant_forward(x)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", " + self.quant_extra_repr()


def from_float(conv: nn.Conv2d | nn.ConvTranspose2d, **quant: object) -> QuantizedConv:
    """Build the quantized twin of `conv` with the same hyper-parameters, weights and mask."""
    if conv.padding_mode != "zeros":
        raise ValueError(f"only zero-padded convolutions can be quantized, not {conv.padding_mode!r}")
    transposed = isinstance(conv, nn.ConvTranspose2d)
    cls = QuantConvTranspose2d if transposed else QuantConv2d
    kwargs = dict(in_channels=conv.in_channels, out_channels=conv.out_channels,
                  kernel_size=conv.kernel_size, stride=conv.stride, padding=conv.padding,
                  dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                  padding_mode=conv.padding_mode)
    if transposed:
        kwargs["output_padding"] = conv.output_padding
    q = cls(**kwargs).to(conv.weight.device, conv.weight.dtype)
    with torch.no_grad():
        q.weight.copy_(conv.weight)
        if conv.bias is not None:
            q.bias.copy_(conv.bias)
    mask = getattr(conv, "mask", None)
    if mask is not None:
        q.register_buffer("mask", mask.detach().clone())
    q._init_quant(**quant)
    return q
