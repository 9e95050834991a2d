"""dqsearch's conformance suite on ort-cpu, with short timing so it finishes in seconds."""

from dqsearch_ort import OrtBackend

from dqsearch.backends.testing import BackendConformance


class TestOrtCpu(BackendConformance):
    # the in-context fit with these fast settings on the 64×64 tiny model: −22% (all fp32), +4%
    # (all int8), −17% (alternating) on the build VM; 98-99% within ±10% at 768×512
    additivity_tolerance = 0.5

    def make_backend(self):
        return OrtBackend("ort-cpu", threads=1, warmup=2, repeats=5, min_seconds=0.05,
                          context_repeats=2, context_random=2)
