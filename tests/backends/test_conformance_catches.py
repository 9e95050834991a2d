"""The conformance suite catches the mistakes a plugin author made in practice: a `profile_model`
that ignores the bit profile, results in seconds instead of milliseconds, a backend that leaves
torch's thread setting changed, and bad bit-widths measured before being refused."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest
import torch
from torch import nn

from dqsearch.backends import FP32, Backend, LayerSpec, Measurement, trace_model
from dqsearch.backends.testing import (
    TINY_INPUT,
    build_tiny_table,
    check_additivity,
    check_state_unchanged,
    check_units,
    process_state,
    tiny_model,
)


class Toy(Backend):
    """Analytical: a layer costs MACs × ns per MAC of its bit-width; the model adds 1 µs."""

    name = "toy"
    NS = {8: 0.25, FP32: 1.0}

    def capabilities(self) -> dict[int, str]:
        return {8: "int8", FP32: "fp32"}

    def profile_layer(self, spec: LayerSpec, bits: int) -> Measurement:
        self.container(bits)
        return Measurement.exact(spec.macs * self.NS[bits] * 1e-6)

    def profile_model(self, model: nn.Module, bit_profile: Mapping[str, int],
                      input_shape: str | Sequence[int]) -> Measurement:
        trace = trace_model(model, input_shape)
        self.check_profile(trace.names, bit_profile)
        return Measurement.exact(1e-3 + sum(s.macs * self.NS[self.used(bit_profile[s.name])] * 1e-6
                                            for s in trace.layers))

    def used(self, bits: int) -> int:
        return bits


class IgnoresProfile(Toy):
    def used(self, bits: int) -> int:
        return FP32  # the mistake: always times the FP32 model


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return tiny_model()


def test_additivity_holds_for_a_correct_backend(model, tmp_path) -> None:
    check_additivity(Toy(), model, build_tiny_table(Toy(), model, tmp_path), tolerance=1e-6)


def test_profile_model_ignoring_the_bit_profile_is_caught(model, tmp_path) -> None:
    table = build_tiny_table(IgnoresProfile(), model, tmp_path)
    with pytest.raises(AssertionError, match="does not add up"):
        check_additivity(IgnoresProfile(), model, table, tolerance=0.35)


def test_required_fp32_is_refused_before_measuring(model, tmp_path) -> None:
    from dqsearch.backends.profiling import profile_table
    from dqsearch.backends.testing import CountingBackend

    counting = CountingBackend(Toy())
    with pytest.raises(ValueError, match="include 32"):
        profile_table(counting, model, TINY_INPUT, [8], tmp_path / "t.json", progress=False)
    assert not counting.layer_calls and not (tmp_path / "t.json").exists()


@pytest.fixture(scope="module")
def torchcpu():
    return pytest.importorskip("dqsearch_torchcpu", reason="the example plugin is not installed: "
                               "pip install -e tests/plugins/torch_cpu (as .ci/run does)")


def in_seconds(torchcpu):
    class InSeconds(torchcpu.TorchCpuBackend):
        def _time(self, runs):
            m = super()._time(runs)
            return Measurement.from_samples([s / 1e3 for s in m.samples])  # the mistake: seconds

    return InSeconds


def leaks_threads(torchcpu):
    class LeaksThreads(torchcpu.TorchCpuBackend):
        def _time(self, runs):
            torch.set_num_threads(self.threads)  # the mistake: never restored
            return super()._time(runs)

    return LeaksThreads


def test_results_in_seconds_are_caught(model, torchcpu) -> None:
    check_units(torchcpu.TorchCpuBackend(repeats=3), model, (0.02, 50.0))
    with pytest.raises(AssertionError, match="milliseconds"):
        check_units(in_seconds(torchcpu)(repeats=3), model, (0.02, 50.0))


def test_leaking_torch_threads_is_caught(model, torchcpu) -> None:
    old = torch.get_num_threads()
    torch.set_num_threads(old + 2)
    try:
        before = process_state()
        names = trace_model(model, TINY_INPUT).names
        torchcpu.TorchCpuBackend(repeats=1).profile_model(model, dict.fromkeys(names, 8), TINY_INPUT)
        check_state_unchanged(before, "profile_model")
        leaks_threads(torchcpu)(repeats=1).profile_model(model, dict.fromkeys(names, 8), TINY_INPUT)
        with pytest.raises(AssertionError, match="torch threads"):
            check_state_unchanged(before, "profile_model")
    finally:
        torch.set_num_threads(old)
