"""Test-wide settings: offline, deterministic, CPU only, caches in a temp dir."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TORCH_HOME", tempfile.mkdtemp(prefix="aukit-torch-home-"))
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("AUKIT_CACHE", tempfile.mkdtemp(prefix="aukit-cache-"))

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
