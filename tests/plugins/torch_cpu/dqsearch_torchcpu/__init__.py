"""torch-cpu: PyTorch's own int8 CPU kernels (x86/fbgemm or qnnpack) as a dqsearch backend.

A timed backend of the kind docs/plugins.md describes: each layer at its container (int8 =
quantize → quantized conv → dequantize, fp32 = the float conv), the whole model as the sum of
its transforms (g_a, h_a, h_s, g_s) on inputs shaped as `trace.group_inputs`, in milliseconds,
with torch's threads and quantized engine restored after every call.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.ao.nn.quantized as nnq
from torch import nn

from dqsearch.backends import (
    Backend,
    LayerSpec,
    Measurement,
    ModelTrace,
    container_of,
    cpu_model,
    cpu_signature,
    float_model,
    parse_input_shape,
    trace_model,
)
from dqsearch.threads import torch_threads


@contextmanager
def _quiet():
    """torch ≥ 2.10 warns that quantized tensors are deprecated; they still run its int8 kernels."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor", category=UserWarning)
        yield


class Int8Conv(nn.Module):
    """A float conv run by torch's int8 kernel: float in, float out, as inside a float graph."""

    def __init__(self, conv: nn.Conv2d | nn.ConvTranspose2d) -> None:
        super().__init__()
        deconv = isinstance(conv, nn.ConvTranspose2d)
        kw = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                  bias=conv.bias is not None)
        if deconv:
            self.q = nnq.ConvTranspose2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                                         output_padding=conv.output_padding, **kw)
        else:
            self.q = nnq.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, **kw)
        w = conv.weight.detach()
        qw = torch.quantize_per_tensor(w, float(w.abs().max()) / 127 or 1.0, 0, torch.qint8)
        self.q.set_weight_bias(qw, None if conv.bias is None else conv.bias.detach())
        self.q.scale, self.q.zero_point = 0.05, 128

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q(torch.quantize_per_tensor(x, 0.05, 128, torch.quint8)).dequantize()


class TorchCpuBackend(Backend):
    """Options: threads (default 1), repeats (timed runs, default 7), warmup (2), engine
    (torch's quantized engine: x86, fbgemm, qnnpack; default the first one torch supports)."""

    name = "torch-cpu"
    latency_by_container = True  # 2…8 bits all run torch's int8 kernel

    def __init__(self, threads: int = 1, repeats: int = 7, warmup: int = 2,
                 engine: str | None = None) -> None:
        supported = torch.backends.quantized.supported_engines
        self.engine = engine or next(e for e in ("x86", "fbgemm", "qnnpack") if e in supported)
        if self.engine not in supported:
            raise ValueError(f"engine {self.engine!r} not in torch's {supported}")
        if int(threads) < 1 or int(repeats) < 1:
            raise ValueError("threads and repeats must be at least 1")
        self.threads, self.repeats, self.warmup = int(threads), int(repeats), int(warmup)
        self._traces: dict[tuple, ModelTrace] = {}

    def capabilities(self) -> dict[int, str]:
        return {**{b: "int8" for b in range(2, 9)}, 32: "fp32"}

    def metadata(self) -> dict[str, Any]:
        return {"device": f"torch-cpu on {cpu_model()}", "cpu": cpu_model(), "cpu_id": cpu_signature(),
                "threads": self.threads,
                "versions": {"torch": torch.__version__}, "tuned": False, "engine": self.engine,
                "timing": {"repeats": self.repeats, "warmup": self.warmup}}

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "engine": self.engine}  # a different engine is another device

    def profile_layer(self, spec: LayerSpec, bits: int) -> Measurement:
        container = self.container(bits)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            conv = spec.module().eval()
            x = torch.randn(spec.input_shape)
        return self._time([(self._at(conv, container), x)])

    def profile_model(self, model: nn.Module, bit_profile: Mapping[str, int],
                      input_shape: str | Sequence[int]) -> Measurement:
        """Σ over transforms (trace.group_inputs: g_a, h_a, h_s, g_s) of their time; no entropy coding."""
        shape = parse_input_shape(input_shape)
        key = (id(model), shape)
        if key not in self._traces:
            self._traces[key] = trace_model(model, shape)
        trace = self._traces[key]
        self.check_profile(trace.names, bit_profile)  # refuses bad bit-widths before anything runs
        plain = float_model(model)
        for spec in trace.layers:
            parent, _, child = spec.name.rpartition(".")
            owner = plain.get_submodule(parent) if parent else plain
            conv = plain.get_submodule(spec.name)
            setattr(owner, child, self._at(conv, container_of(bit_profile[spec.name])))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            runs = [(plain.get_submodule(g), torch.randn(s)) for g, s in trace.group_inputs.items()]
        return self._time(runs)

    # --- helpers --------------------------------------------------------------------------------
    def _at(self, conv: nn.Module, container: str) -> nn.Module:
        if container == "fp32":
            return conv
        with _quiet():
            return Int8Conv(conv)

    @contextmanager
    def _settings(self):
        """This backend's threads and engine, and the caller's restored afterwards."""
        before = torch.backends.quantized.engine
        torch.backends.quantized.engine = self.engine
        try:
            with torch_threads(self.threads), torch.no_grad(), _quiet():
                yield
        finally:
            torch.backends.quantized.engine = before

    def _time(self, runs: list[tuple[nn.Module, torch.Tensor]]) -> Measurement:
        with self._settings():
            for _ in range(self.warmup):
                for m, x in runs:
                    m(x)
            samples = []
            for _ in range(self.repeats):
                t0 = time.perf_counter()
                for m, x in runs:
                    m(x)
                samples.append((time.perf_counter() - t0) * 1e3)  # milliseconds
        return Measurement.from_samples(samples)


__all__ = ["Int8Conv", "TorchCpuBackend"]
