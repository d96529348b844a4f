"""Test-wide settings: offline, deterministic, CPU only, caches in a temp dir."""

import os
import shutil
import tempfile

_CREATED: list[str] = []  # the temp folders made here, removed when the session ends


def _temp_env(name: str, prefix: str) -> None:
    if name not in os.environ:
        os.environ[name] = tempfile.mkdtemp(prefix=prefix)
        _CREATED.append(os.environ[name])


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
_temp_env("TORCH_HOME", "aukit-torch-home-")
_temp_env("AUKIT_CACHE", "aukit-cache-")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_sessionfinish(session, exitstatus):
    for folder in _CREATED:
        shutil.rmtree(folder, ignore_errors=True)

