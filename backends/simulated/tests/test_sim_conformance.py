"""How a plugin runs dqsearch's conformance suite on its own backend: subclass, make_backend."""

from dqsearch_sim import SimulatedBackend, shipped_specs

from dqsearch.backends.testing import BackendConformance


class TestStripes(BackendConformance):
    def make_backend(self):
        return SimulatedBackend(shipped_specs()["stripes"])


class TestNpu(BackendConformance):
    def make_backend(self):
        return SimulatedBackend(shipped_specs()["npu"])
