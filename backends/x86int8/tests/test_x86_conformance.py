"""dqsearch's conformance suite on x86-int8, with short timing so it finishes in seconds."""

from dqsearch_x86 import X86Backend

from dqsearch.backends.testing import BackendConformance


class TestX86Int8(BackendConformance):
    # the default additivity tolerance (±35%): the in-context table against profile_model on the
    # 64×64 tiny model was −7% to +7% over 6 profiles on the build VM (load 1.6); at 768×512,
    # embedded:3, −0.5% to +8.8% (load 2.0)

    def make_backend(self):
        return X86Backend(threads=1, warmup=2, repeats=5)
