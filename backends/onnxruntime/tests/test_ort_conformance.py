"""dqsearch's conformance suite on ort-cpu, with short timing so it finishes in seconds."""

from dqsearch_ort import OrtBackend

from dqsearch.backends.testing import BackendConformance


class TestOrtCpu(BackendConformance):
    def make_backend(self):
        return OrtBackend("ort-cpu", threads=1, warmup=2, repeats=5, min_seconds=0.05,
                          context_repeats=2, context_random=2)
