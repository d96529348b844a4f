"""``--device`` of predict and prepare: a device the machine lacks is refused with the fix."""

import pytest
import torch

from aukit.utils.device import check_device


def test_cpu_passes_and_a_missing_gpu_or_a_bad_name_is_refused(monkeypatch):
    assert check_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="--device cuda needs a CUDA GPU.*--device cpu"):
        check_device("cuda")
    with pytest.raises(ValueError, match="'gpu0' is not a device"):
        check_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda:1") == "cuda:1"
    with pytest.raises(ValueError, match="has 2 GPU"):
        check_device("cuda:2")
