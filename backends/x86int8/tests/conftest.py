"""Fixtures of the x86-int8 tests: tiny real quantized ScaleHyperprior checkpoints and an export."""

from __future__ import annotations

import pytest
from x86_helpers import export, save_checkpoint_of


@pytest.fixture(scope="session")
def checkpoint_8bit(tmp_path_factory):
    """Every layer at 8 bits, per-tensor activations and learned g_s output quantizers (the
    model made for int8 deployment)."""
    from dqsearch.quant.wrap import QuantPolicy

    policy = QuantPolicy.fixed(8, activation_granularity="tensor", quantize_outputs=("g_s",))
    return save_checkpoint_of(tmp_path_factory.mktemp("x86-ck"), policy, "q8.pt")


@pytest.fixture(scope="session")
def checkpoint_dq(tmp_path_factory):
    """A DynaQuant-style model over {6, 8, 10} bits (per-channel activations, untrained selectors)."""
    from dqsearch.quant.wrap import QuantPolicy

    return save_checkpoint_of(tmp_path_factory.mktemp("x86-ck"), QuantPolicy.dynamic((6, 8, 10)), "dq.pt")


@pytest.fixture(scope="session")
def x86_export(tmp_path_factory, checkpoint_8bit):
    return export(checkpoint_8bit, tmp_path_factory.mktemp("x86-export") / "x86")


@pytest.fixture(scope="session")
def ptq8(tmp_path_factory):
    """The bundled N=64 model (embedded:3), post-training quantized to 8 bits: real weights."""
    from dqsearch.deploy.crosscheck import ptq_checkpoint

    return ptq_checkpoint(tmp_path_factory.mktemp("x86-ptq") / "ptq8.pt")


@pytest.fixture(scope="session")
def ptq_dq(tmp_path_factory):
    """The bundled N=64 model wrapped dynamic over {6, 8, 10} bits and calibrated (PTQ)."""
    from dqsearch.deploy.crosscheck import ptq_checkpoint

    return ptq_checkpoint(tmp_path_factory.mktemp("x86-ptq") / "dq.pt", candidates=(6, 8, 10))
