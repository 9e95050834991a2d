"""The conformance suite every backend must pass — run it on yours (needs pytest).

    from dqsearch.backends.testing import BackendConformance

    class TestMyDevice(BackendConformance):
        def make_backend(self):
            return MyBackend(threads=1)

pytest then runs every `test_*` method below against your backend: capabilities are consistent,
measurements are positive and finite, a larger layer is not faster than a smaller one, unknown
bit-widths and profiles are refused with ValueError, whole-model timing works, and a latency table
resumes without re-measuring what it holds. Sizes are small so a real device finishes in seconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from torch import nn

from .base import CONV, DECONV, FP32, Backend, ContextProfile, LayerSpec, Measurement, ModelTrace

#: a tiny real CompressAI model (ScaleHyperprior N=8, M=8) and an input it runs at
TINY_MODEL = ("bmshj2018-hyperprior", {"N": 8, "M": 8})
TINY_INPUT = (64, 64)


def conv_spec(name: str, channels: int, size: int, op: str = CONV, kernel: int = 3) -> LayerSpec:
    """A stride-1 ("conv") or stride-2 upsampling ("deconv") layer of `channels` at size×size."""
    if op == DECONV:
        return LayerSpec(name, DECONV, channels, channels, (kernel, kernel), (2, 2), (kernel // 2,) * 2,
                         (1, 1), input_shape=(1, channels, size, size),
                         output_shape=(1, channels, 2 * size, 2 * size))
    return LayerSpec(name, CONV, channels, channels, (kernel, kernel), (1, 1), (kernel // 2,) * 2,
                     input_shape=(1, channels, size, size), output_shape=(1, channels, size, size))


def tiny_model() -> nn.Module:
    from ..models import build_model

    return build_model(TINY_MODEL[0], **TINY_MODEL[1]).eval()


def representative_bits(backend: Backend) -> list[int]:
    """One bit-width per container (the widest), so slow backends time each kernel once."""
    by_container: dict[str, int] = {}
    for b, c in sorted(backend.capabilities().items()):
        by_container[c] = b
    return sorted(by_container.values())


def check_measurement(m: Any, what: str) -> None:
    assert isinstance(m, Measurement), f"{what}: expected a Measurement, got {type(m).__name__}"
    for key in ("median", "mean", "min", "max"):
        v = getattr(m, key)
        assert math.isfinite(v) and v > 0, f"{what}: {key} = {v} is not positive and finite"
    assert m.n >= 1 and m.std >= 0 and m.min <= m.median <= m.max, f"{what}: inconsistent {m}"
    assert m.unit == "ms"
    if m.samples:
        assert len(m.samples) == m.n, f"{what}: n = {m.n} but {len(m.samples)} samples"


class CountingBackend(Backend):
    """Delegates to another backend and counts measurements; `interrupt_after` raises
    KeyboardInterrupt on that many-th layer measurement (to test resuming)."""

    def __init__(self, inner: Backend, interrupt_after: int | None = None) -> None:
        self.inner, self.interrupt_after = inner, interrupt_after
        self.name, self.latency_by_container = inner.name, inner.latency_by_container
        self.layer_calls: list[tuple[str, int]] = []
        self.context_calls = 0

    @property
    def measures_context(self) -> bool:
        return self.inner.measures_context

    def capabilities(self) -> dict[int, str]:
        return self.inner.capabilities()

    def metadata(self) -> dict[str, Any]:
        return self.inner.metadata()

    def profile_layer(self, spec: LayerSpec, bits: int) -> Measurement:
        if self.interrupt_after is not None and len(self.layer_calls) >= self.interrupt_after:
            raise KeyboardInterrupt
        self.layer_calls.append((spec.name, bits))
        return self.inner.profile_layer(spec, bits)

    def profile_model(self, model: nn.Module, bit_profile: Mapping[str, int],
                      input_shape: str | Sequence[int]) -> Measurement:
        return self.inner.profile_model(model, bit_profile, input_shape)

    def profile_fixed(self, model: nn.Module, trace: ModelTrace) -> Measurement | None:
        return self.inner.profile_fixed(model, trace)

    def profile_context(self, model: nn.Module, trace: ModelTrace, bits: Sequence[int], **kw: Any
                        ) -> ContextProfile | None:
        self.context_calls += 1
        return self.inner.profile_context(model, trace, bits, **kw)


class BackendConformance:
    """Base class of the conformance suite; subclass it as `Test…` and define `make_backend`."""

    def make_backend(self) -> Backend:
        raise NotImplementedError("define make_backend() returning the backend under test")

    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls) -> Backend:
        return cls().make_backend()

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls) -> nn.Module:
        return tiny_model()

    # --- capabilities -------------------------------------------------------------------------
    def test_name_is_a_registry_name(self, backend: Backend) -> None:
        assert isinstance(backend.name, str) and backend.name and " " not in backend.name

    def test_capabilities_are_consistent(self, backend: Backend) -> None:
        caps = backend.capabilities()
        assert isinstance(caps, dict) and caps, "capabilities() must map at least one bit-width"
        for b, c in caps.items():
            assert isinstance(b, int) and (2 <= b <= 16 or b == FP32), f"bit-width {b!r} out of range"
            assert isinstance(c, str) and c, f"bits {b}: container must be a non-empty string"
            assert backend.container(b) == c
        assert caps == backend.capabilities(), "capabilities() must be stable between calls"
        # bit-widths sharing a container must be contiguous: a wider container never sits
        # between two bit-widths of a narrower one
        seen: list[str] = []
        for b in sorted(caps):
            if seen and caps[b] != seen[-1]:
                assert caps[b] not in seen, f"container {caps[b]} is used by non-adjacent bit-widths"
            seen.append(caps[b])
        meta = backend.metadata()
        assert isinstance(meta, dict), "metadata() must return a dict"

    def test_unsupported_bits_are_refused(self, backend: Backend) -> None:
        missing = next(b for b in (1, 17, 31, 33) if b not in backend.capabilities())
        with pytest.raises(ValueError):
            backend.profile_layer(conv_spec("small", 8, 16), missing)

    # --- layer measurements -------------------------------------------------------------------
    @pytest.mark.parametrize("op", [CONV, DECONV])
    def test_layer_measurements_positive_and_finite(self, backend: Backend, op: str) -> None:
        spec = conv_spec("layer", 8, 16, op)
        for b in representative_bits(backend):
            check_measurement(backend.profile_layer(spec, b), f"{op} at {b} bits")

    @pytest.mark.parametrize("op", [CONV, DECONV])
    def test_larger_layer_not_faster(self, backend: Backend, op: str) -> None:
        small, large = conv_spec("small", 8, 16, op), conv_spec("large", 32, 64, op)
        for b in representative_bits(backend):
            s, big = backend.profile_layer(small, b), backend.profile_layer(large, b)
            # 256x the MACs: not faster, with a 10% allowance for timing noise
            assert big.median >= 0.9 * s.median, f"{op} at {b} bits: {big.median} ms < {s.median} ms"

    # --- whole models ---------------------------------------------------------------------------
    def test_model_measurement_positive_and_finite(self, backend: Backend, model: nn.Module) -> None:
        from .base import trace_model

        names = trace_model(model, TINY_INPUT).names
        for b in representative_bits(backend):
            check_measurement(backend.profile_model(model, dict.fromkeys(names, b), TINY_INPUT),
                              f"model at {b} bits")

    def test_model_refuses_bad_profiles(self, backend: Backend, model: nn.Module) -> None:
        b = max(backend.capabilities())
        with pytest.raises(ValueError):
            backend.profile_model(model, {"no.such.layer": b}, TINY_INPUT)

    # --- tables ---------------------------------------------------------------------------------
    def test_resume_skips_measured_entries(self, backend: Backend, model: nn.Module, tmp_path: Path) -> None:
        from ..latency import LatencyTable
        from .profiling import profile_table

        bits = representative_bits(backend)
        out = tmp_path / "table.json"
        first = CountingBackend(backend, interrupt_after=3)
        with pytest.raises(KeyboardInterrupt):
            profile_table(first, model, TINY_INPUT, bits, out, progress=False)
        partial = LatencyTable.load(out)
        measured = {(n, b) for n, per in {**partial.layers, **partial.isolated}.items() for b in per}
        assert len(first.layer_calls) == 3 and measured, "the table must be saved after every layer"
        second = CountingBackend(backend)
        table = profile_table(second, model, TINY_INPUT, bits, out, resume=True, progress=False)
        again = {(n, b) for n, b in second.layer_calls} & measured
        assert not again, f"resume re-measured {sorted(again)}"
        assert table.complete
        third = CountingBackend(backend)
        profile_table(third, model, TINY_INPUT, bits, out, resume=True, progress=False)
        assert not third.layer_calls, "a complete table must not be measured again"
        profile = dict.fromkeys(table.layer_names, bits[0])
        assert math.isfinite(table.predict(profile)) and table.predict(profile) > 0
