"""dqsearch's conformance suite on x86-int8, with short timing so it finishes in seconds."""

from dqsearch_x86 import X86Backend

from dqsearch.backends.testing import BackendConformance


class TestX86Int8(BackendConformance):
    additivity_tolerance = 0.5

    def make_backend(self):
        return X86Backend(threads=1, warmup=2, repeats=5)
