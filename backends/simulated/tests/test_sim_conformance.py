"""How a plugin runs dqsearch's conformance suite on its own backend: subclass, make_backend."""

from dqsearch_sim import SimulatedBackend, shipped_specs

from dqsearch.backends.testing import BackendConformance


class TestStripes(BackendConformance):
    magnitude = None  # computed latencies of a simulated accelerator: not comparable with this host
    additivity_tolerance = 1e-6  # exact: the model is its layers plus the fixed ops

    def make_backend(self):
        return SimulatedBackend(shipped_specs()["stripes"])


class TestNpu(BackendConformance):
    magnitude = None
    additivity_tolerance = 1e-6

    def make_backend(self):
        return SimulatedBackend(shipped_specs()["npu"])
