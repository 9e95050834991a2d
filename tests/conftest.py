"""Shared fixtures: small real images, tiny real CompressAI models, a temp workspace."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from dqsearch.data import list_images, load_image, sample_images_dir

torch.set_num_threads(int(os.environ.get("DQSEARCH_TEST_THREADS", "2")))
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
