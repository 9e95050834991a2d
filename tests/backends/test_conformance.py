"""The conformance suite against every installed backend (entry points that load here).

DQSEARCH_TEST_BACKENDS=sim-npu,ort-cpu restricts it to those (slow plugins, e.g. a TVM backend
that compiles every layer, add minutes).
"""

from __future__ import annotations

import os

import pytest

from dqsearch.backends import inspect_backends, load_backend
from dqsearch.backends.testing import BackendConformance, check_additivity

# Fast settings for timed backends; analytical ones ignore what they do not take.
OPTIONS = {"ort-cpu": {"threads": 1, "repeats": 5, "warmup": 2, "min_seconds": 0.05, "context_repeats": 2,
                       "context_random": 2},
           "tvm-cpu": {"threads": 1, "repeats": 5, "budget_seconds": 0.3, "min_repeat_ms": 5},
           "torch-cpu": {"threads": 1, "repeats": 5},
           "x86-int8": {"threads": 1, "repeats": 5, "warmup": 2}}
# see backends/onnxruntime/tests/test_ort_conformance.py and tests/backends/test_torchcpu_plugin.py
# (x86-int8 meets the default: backends/x86int8/tests/test_x86_conformance.py)
TOLERANCE = {"ort-cpu": 0.5, "torch-cpu": 0.6}
ONLY = {n for n in os.environ.get("DQSEARCH_TEST_BACKENDS", "").split(",") if n}
LOADABLE = [i.name for i in inspect_backends() if i.ok and (not ONLY or i.name in ONLY)]


class TestInstalledBackends(BackendConformance):
    @pytest.fixture(scope="class", params=LOADABLE)
    @classmethod
    def backend(cls, request):
        return load_backend(request.param, **OPTIONS.get(request.param, {}))

    def test_table_adds_up_to_the_model(self, backend, model, tiny_table) -> None:
        check_additivity(backend, model, tiny_table, TOLERANCE.get(backend.name, self.additivity_tolerance))


def test_at_least_one_backend_is_installed():
    assert LOADABLE, "no backend loads: pip install -e backends/simulated -e backends/onnxruntime"
