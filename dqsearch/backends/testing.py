"""The conformance suite every backend must pass — run it on yours (needs pytest).

    from dqsearch.backends.testing import BackendConformance

    class TestMyDevice(BackendConformance):
        def make_backend(self):
            return MyBackend(threads=1)

pytest then runs every `test_*` method below against your backend: capabilities are consistent,
measurements are positive and finite and in milliseconds (checked against the wall clock and
against torch running the same transforms on this host), a larger layer is not faster than a
smaller one, unknown bit-widths and profiles are refused with ValueError before anything is
measured, a latency table of a tiny real model adds up (fixed + Σ layers ≈ `profile_model` on a
few bit profiles, which also shows `profile_model` follows the bit profile), process-wide settings
(torch's threads, thread environment variables) are left as they were, and a table resumes
without re-measuring what it holds. Sizes are small so a real device finishes in seconds.

Class attributes tune the checks for your device: `magnitude` (allowed ratio to torch's FP32
time; None for remote devices, whose times have no relation to this host; skipped as well for
analytical backends, whose `metadata()` says `simulated: True`) and `additivity_tolerance`.
Each check is also a plain function (`check_*`) for use outside pytest.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from .base import CONV, DECONV, FP32, Backend, ContextProfile, Deployment, LayerSpec, Measurement, ModelTrace

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


# --- process-wide state a backend must leave as it found it ------------------------------------
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TVM_NUM_THREADS",
              "OMP_WAIT_POLICY", "ORT_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


def process_state() -> dict[str, Any]:
    """What a backend may change for the whole process and must restore: torch's threads and
    modes, thread-related environment variables, the working directory."""
    return {"torch threads": torch.get_num_threads(), "grad enabled": torch.is_grad_enabled(),
            "default dtype": torch.get_default_dtype(), "quantized engine": torch.backends.quantized.engine,
            "cwd": os.getcwd(), **{f"${k}": os.environ.get(k) for k in THREAD_ENV}}


def check_state_unchanged(before: Mapping[str, Any], what: str) -> None:
    after = process_state()
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert not changed, (f"{what} changed process-wide state {changed} (before → after): save and restore "
                         "it, e.g. with dqsearch.threads.torch_threads(n)")


# --- references -----------------------------------------------------------------------------------
def uniform(names: Sequence[str], bits: int) -> dict[str, int]:
    return dict.fromkeys(names, bits)


def torch_ms(model: nn.Module, input_shape: Sequence[int] = TINY_INPUT, repeats: int = 5) -> float:
    """Torch's eager FP32 time (ms, one thread, median) of what `profile_model` times: the sum of
    the model's transforms, each on an input of `trace.group_inputs`."""
    from ..threads import torch_threads
    from .base import trace_model

    trace = trace_model(model, input_shape)
    mods = [(model.get_submodule(g), torch.rand(shape)) for g, shape in trace.group_inputs.items()]
    with torch.no_grad(), torch_threads(1):
        for m, x in mods:
            m(x)
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for m, x in mods:
                m(x)
            runs.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(runs)


def check_units(backend: Backend, model: nn.Module, magnitude: tuple[float, float]) -> None:
    """Milliseconds, not seconds or microseconds: a timed measurement cannot exceed the wall time
    of the call that made it, and the tiny model's FP32 time sits within `magnitude` × torch's."""
    from .base import trace_model

    names = trace_model(model, TINY_INPUT).names
    fp32 = uniform(names, max(backend.capabilities()))
    backend.profile_model(model, fp32, TINY_INPUT)  # builds, compiles, uploads: not timed
    t0 = time.perf_counter()
    m = backend.profile_model(model, fp32, TINY_INPUT)
    wall = (time.perf_counter() - t0) * 1e3
    assert m.min <= wall * 1.05 + 0.05, (
        f"profile_model reported {m.min:.4g} ms but the call took {wall:.4g} ms: results must be in ms")
    ref = torch_ms(model)
    lo, hi = magnitude
    ratio = m.median / ref
    assert lo <= ratio <= hi, (
        f"profile_model says {m.median:.4g} ms for the tiny model's transforms at FP32, torch runs them in "
        f"{ref:.4g} ms here: ratio {ratio:.3g} outside [{lo}, {hi}] — results must be in milliseconds "
        "(set `magnitude` on your test class if your device really is that different)")


def build_tiny_table(backend: Backend, model: nn.Module, folder: Path):
    """The tiny model's table at one bit-width per container plus what the backend requires."""
    from .profiling import profile_table

    bits = sorted(set(representative_bits(backend)) | backend.required_bits())
    return profile_table(backend, model, TINY_INPUT, bits, folder / "tiny.json", progress=False)


def additivity_profiles(table) -> dict[str, dict[str, int]]:
    """Uniform widest, uniform narrowest, and alternating between them."""
    names = table.layer_names
    lo, hi = min(table.metadata["bits"]), max(table.metadata["bits"])
    return {f"all {hi}": uniform(names, hi), f"all {lo}": uniform(names, lo),
            "alternating": {n: (lo if i % 2 else hi) for i, n in enumerate(names)}}


def check_additivity(backend: Backend, model: nn.Module, table, tolerance: float) -> None:
    """fixed + Σ layers (+ transitions) ≈ profile_model on a few profiles. Fails when layers and
    models are timed differently (units, warm-up, layout), when `profile_model` ignores the bit
    profile, or when the fixed part is not profile_model(FP32) − Σ FP32 layers."""
    rows = []
    for label, profile in additivity_profiles(table).items():
        pred = table.predict(profile)
        # a load spike on a shared machine inflates one measurement; a table that does not add
        # up misses on every try (up to 3 rounds of 2, each profile until it agrees)
        for _ in range(3):
            meas = min(backend.profile_model(model, profile, TINY_INPUT).median for _ in range(2))
            if abs(pred / meas - 1) <= tolerance:
                break
        rows.append((label, pred, meas, pred / meas - 1))
    text = "; ".join(f"{label}: table {p:.4g} ms, profile_model {m:.4g} ms ({e:+.0%})"
                     for label, p, m, e in rows)
    assert all(abs(e) <= tolerance for *_, e in rows), (
        f"the table does not add up to profile_model within ±{tolerance:.0%}: {text}")


def tiny_quantized_checkpoint(path: Path, bits: int = 8) -> Path:
    """The tiny model (`TINY_MODEL`) wrapped at `bits`, calibrated on two random images (seeded),
    saved to `path`: a quantized checkpoint every engine can run in seconds."""
    from ..models import build_model, save_checkpoint
    from ..quant.wrap import QuantPolicy, calibrate, wrap

    policy = QuantPolicy.fixed(bits)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = wrap(build_model(TINY_MODEL[0], **TINY_MODEL[1]), policy)
        calib = [torch.rand(1, 3, 64, 64) for _ in range(2)]
        with torch.no_grad():
            calibrate(model, calib)
    model.update(force=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model, TINY_MODEL[0], TINY_MODEL[1], policy)
    return path


def check_deployment(backend: Backend, folder: Path, image: torch.Tensor | None = None) -> float | None:
    """The deployment part, where a backend has one: a tiny calibrated 8-bit checkpoint exported
    through it, an image compressed with the PyTorch codec (integer entropy parameters, which
    every engine reads) and decoded by the deployed decoder, whose image must be within the
    deployment's `min_psnr_db` of PyTorch's decode. Returns that PSNR (None: no deployment)."""
    from ..codec import decode, encode
    from ..deploy.artifact import Options, export_model
    from ..deploy.runtime import Runtime
    from ..evaluate import psnr
    from ..models import load_checkpoint

    deployment = backend.deployment()
    if deployment is None:
        return None
    assert isinstance(deployment, Deployment), f"deployment() returned {type(deployment).__name__}"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        image = torch.rand(1, 3, 64, 64) if image is None else image
    path = tiny_quantized_checkpoint(folder / "tiny-8bit.pt")
    ck = load_checkpoint(path)
    export_model(path, folder / "export", backend.name, Options(subpixel="off", decide_input=(64, 64)),
                 force=True)
    enc = encode(ck.model.eval(), ck.model_id, image)
    ref, _ = decode(ck.model, ck.model_id, enc.data)
    got, header, _ = Runtime(folder / "export").decode(enc.data)
    assert header.hyper == "integer" and got.shape == ref.shape, (header.hyper, got.shape, ref.shape)
    db = float(psnr(ref, got))
    assert db >= deployment.min_psnr_db, (f"{backend.name}'s deployed decoder is {db:.1f} dB from the "
                                          f"PyTorch codec's image; it states {deployment.min_psnr_db}")
    return db


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

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()

    def required_bits(self) -> set[int]:
        return self.inner.required_bits()

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

    #: allowed ratio of the backend's FP32 time of the tiny model to torch's on this host (catches
    #: seconds or microseconds); None for analytical or remote devices
    magnitude: tuple[float, float] | None = (0.02, 50.0)
    #: allowed relative error between the tiny table's prediction and `profile_model`
    additivity_tolerance: float = 0.35

    def make_backend(self) -> Backend:
        raise NotImplementedError("define make_backend() returning the backend under test")

    @pytest.fixture(autouse=True)
    def _state_restored(self) -> Any:
        before = process_state()
        yield
        check_state_unchanged(before, "this test's backend calls")

    @pytest.fixture(scope="class")
    @classmethod
    def tiny_table(cls, backend: Backend, model: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Any:
        return build_tiny_table(backend, model, tmp_path_factory.mktemp("tiny-table"))

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

    # --- units, additivity, process state, refusing before measuring ------------------------------
    def test_results_are_milliseconds(self, backend: Backend, model: nn.Module) -> None:
        if self.magnitude is None or backend.metadata().get("simulated"):
            pytest.skip("an analytical (metadata simulated=True) or remote device: its times have no "
                        "relation to this host's")
        check_units(backend, model, self.magnitude)

    def test_deployment_reproduces_the_torch_codec(self, backend: Backend, tmp_path: Path) -> None:
        """Backends with a deployment part: the deployed decoder within its stated tolerance."""
        check_deployment(backend, tmp_path)

    def test_table_adds_up_to_the_model(self, backend: Backend, model: nn.Module, tiny_table: Any) -> None:
        check_additivity(backend, model, tiny_table, self.additivity_tolerance)

    def test_process_state_restored(self, backend: Backend, model: nn.Module) -> None:
        from .base import trace_model

        names = trace_model(model, TINY_INPUT).names
        old = torch.get_num_threads()
        torch.set_num_threads(old + 2)  # a value no backend picks by itself
        try:
            before = process_state()
            try:
                fresh = self.make_backend()
                check_state_unchanged(before, "constructing the backend")
            except NotImplementedError:  # a suite that overrides the `backend` fixture instead
                fresh = backend
            fresh.profile_layer(conv_spec("l", 8, 16), max(fresh.capabilities()))
            check_state_unchanged(before, "profile_layer")
            fresh.profile_model(model, uniform(names, min(fresh.capabilities())), TINY_INPUT)
            check_state_unchanged(before, "profile_model")
        finally:
            torch.set_num_threads(old)

    def test_bad_bits_refused_before_measuring(self, backend: Backend, model: nn.Module,
                                               tmp_path: Path) -> None:
        from .base import trace_model
        from .profiling import profile_table

        caps = backend.capabilities()
        bad = next(b for b in (1, 17, 31, 33) if b not in caps)
        counting = CountingBackend(backend)
        with pytest.raises(ValueError):
            profile_table(counting, model, TINY_INPUT, [max(caps), bad], tmp_path / "a.json", progress=False)
        assert not counting.layer_calls, f"measured {counting.layer_calls} before refusing {bad} bits"
        names = trace_model(model, TINY_INPUT).names
        with pytest.raises(ValueError):
            backend.profile_model(model, {**uniform(names, max(caps)), names[-1]: bad}, TINY_INPUT)
        required = backend.required_bits()
        if required:  # a table without them cannot be finished: refused up front
            lacking = [b for b in representative_bits(backend) if b not in required][:1] or [min(caps)]
            if not required <= set(lacking):
                with pytest.raises(ValueError, match="--bits"):
                    profile_table(counting, model, TINY_INPUT, lacking, tmp_path / "b.json", progress=False)
                assert not counting.layer_calls, "measured layers of a table that cannot be finished"
