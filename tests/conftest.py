"""Shared fixtures: small real images, tiny real CompressAI models, a temp workspace."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from dqsearch.data import list_images, load_image, sample_images_dir

torch.set_num_threads(int(os.environ.get("DQSEARCH_TEST_THREADS", "1")))
os.environ.setdefault("DQSEARCH_THREADS", os.environ.get("DQSEARCH_TEST_THREADS", "1"))  # CLI calls
# Latency tables that tests profile go to a throw-away user cache, never to ~/.cache/dqsearch.
if "DQSEARCH_CACHE" not in os.environ:
    import tempfile

    os.environ["DQSEARCH_CACHE"] = tempfile.mkdtemp(prefix="dqsearch-test-cache-")
warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="session")
def sample_paths():
    return list_images(sample_images_dir())


@pytest.fixture(scope="session")
def small_image(sample_paths):
    """A real photo crop, 64×64, as [1, 3, H, W]."""
    return load_image(sample_paths[0])[:, :64, :64].unsqueeze(0).contiguous()


@pytest.fixture()
def rng():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="session")
def tiny_quant_checkpoint(tmp_path_factory, sample_paths):
    """A real (untrained) tiny ScaleHyperprior, DQ-wrapped with a global selector, saved to disk."""
    from dqsearch.data import pad_to_multiple
    from dqsearch.models import build_model, save_checkpoint
    from dqsearch.quant.wrap import QuantPolicy, calibrate, wrap

    torch.manual_seed(0)
    policy = QuantPolicy.dynamic((4, 8), selector="global")
    model = wrap(build_model("bmshj2018-hyperprior", N=16, M=24), policy)
    with torch.no_grad():  # make the selector prefer different bits on different images
        model.g_a[0].global_selector.mlp[2].weight.normal_(0, 1.0)
    calibrate(model, [pad_to_multiple(load_image(p).unsqueeze(0), 64)[0] for p in sample_paths[:2]])
    model.update(force=True)
    path = tmp_path_factory.mktemp("ck") / "tiny-dq.pt"
    save_checkpoint(path, model, "bmshj2018-hyperprior", {"N": 16, "M": 24}, policy, {"lmbda": 0.01})
    return path
