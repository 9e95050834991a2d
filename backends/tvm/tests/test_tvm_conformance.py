"""The shared conformance suite on tvm-cpu (untuned builds, one thread)."""

from dqsearch_tvm import TvmBackend

from dqsearch.backends.testing import BackendConformance


class TestTvmCpu(BackendConformance):
    def make_backend(self):
        return TvmBackend("tvm-cpu", threads=1, repeats=5, budget_seconds=0.3, min_repeat_ms=5)
