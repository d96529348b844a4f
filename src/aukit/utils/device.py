"""The ``--device`` of the command-line tools that run without Lightning (predict, prepare)."""

from __future__ import annotations

import torch


def check_device(device: str) -> str:
    """Returns ``device`` (``cpu``, ``cuda``, ``cuda:1`` ...) or refuses, with the fix, one this
    machine does not have: a CUDA device where torch sees no GPU, an index past the last."""
    try:
        parsed = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"--device {device!r} is not a device: give cpu, cuda or cuda:<index> "
                         f"({err})") from None
    if parsed.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device} needs a CUDA GPU, but torch sees none: use --device "
                         "cpu, or install a CUDA build of torch and check nvidia-smi")
    if parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s) "
                         f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return device
