"""SimulatedBackend: the dqsearch Backend contract implemented with the analytical cost models."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from dqsearch.backends import Backend, LayerSpec, Measurement, ModelTrace, OptionRequired, trace_model

from . import cost
from .spec import DeviceSpec, devices_dir, load_spec, shipped_specs


class SimulatedBackend(Backend):
    """A device described by a TOML spec. Latencies are computed, so every `Measurement` is exact
    (one sample); layers are independent (no graph-context effects, no transition costs)."""

    def __init__(self, spec: DeviceSpec | str | Path, threads: int | None = None) -> None:
        # `threads` is accepted (and ignored) so generic callers can pass it to every backend.
        self.spec = spec if isinstance(spec, DeviceSpec) else load_spec(spec)
        self.name = self.spec.name
        self._traces: dict[tuple[int, tuple[int, ...]], ModelTrace] = {}

    def capabilities(self) -> dict[int, str]:
        return {b: cost.container(self.spec, b) for b in self.spec.bits}

    def metadata(self) -> dict[str, Any]:
        text = Path(self.spec.path).read_bytes() if self.spec.path else repr(self.spec).encode()
        return {"device": self.spec.name, "description": self.spec.description, "simulated": True,
                "kind": self.spec.kind, "spec_file": Path(self.spec.path).name if self.spec.path else None,
                "spec_sha256": hashlib.sha256(text).hexdigest()[:16], "threads": None, "tuned": False,
                "versions": {"dqsearch-sim": _version()}}

    def profile_layer(self, spec: LayerSpec, bits: int) -> Measurement:
        self.container(bits)  # rejects bit-widths the device cannot run
        return Measurement.exact(cost.layer_seconds(self.spec, spec, bits) * 1e3)

    def profile_fixed(self, model: nn.Module, trace: ModelTrace) -> Measurement:
        return Measurement.exact(sum(cost.op_seconds(self.spec, op) for op in trace.ops) * 1e3)

    def profile_model(self, model: nn.Module, bit_profile: Mapping[str, int],
                      input_shape: str | Sequence[int]) -> Measurement:
        trace = self._trace(model, input_shape)
        self.check_profile(trace.names, bit_profile)
        layers = sum(cost.layer_seconds(self.spec, s, int(bit_profile[s.name])) for s in trace.layers)
        fixed = sum(cost.op_seconds(self.spec, op) for op in trace.ops)
        return Measurement.exact((layers + fixed) * 1e3)

    def _trace(self, model: nn.Module, input_shape: str | Sequence[int]) -> ModelTrace:
        from dqsearch.backends import parse_input_shape

        key = (id(model), parse_input_shape(input_shape))
        if key not in self._traces:  # validation calls this once per sampled profile
            self._traces[key] = trace_model(model, input_shape)
        return self._traces[key]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dqsearch-sim")
    except PackageNotFoundError:
        return "source"


def _shipped(stem: str) -> SimulatedBackend:
    return SimulatedBackend(shipped_specs()[stem])


def stripes(threads: int | None = None) -> SimulatedBackend:
    """Entry point `sim-stripes`: a bit-serial array (latency ∝ activation bits)."""
    return _shipped("stripes")


def bitfusion(threads: int | None = None) -> SimulatedBackend:
    """Entry point `sim-bitfusion`: 2-bit bricks fused into wider multipliers."""
    return _shipped("bitfusion")


def npu(threads: int | None = None) -> SimulatedBackend:
    """Entry point `sim-npu`: an int4/int8/int16/fp16 roofline NPU."""
    return _shipped("npu")


def from_spec(spec: str | Path | None = None, threads: int | None = None) -> SimulatedBackend:
    """Entry point `sim`: any device file, `dqsearch profile --backend sim --spec my.toml`."""
    if spec is None:
        raise OptionRequired(f"backend 'sim' needs a device: pass --spec PATH.toml or a shipped name "
                             f"({', '.join(shipped_specs())}, files in {devices_dir()})")
    if str(spec) in shipped_specs():
        return _shipped(str(spec))
    return SimulatedBackend(spec)
