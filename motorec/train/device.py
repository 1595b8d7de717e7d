"""The device a run trains and scores on, checked once where a user names it (``--device``, ``train.device``)."""
from __future__ import annotations

import torch

from motorec.config import ConfigError

__all__ = ["resolve_device"]


def resolve_device(device: str) -> torch.device:
    """``torch.device`` for a user string, with a clear error if it is not usable here."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r} is not a device (use cpu, cuda or cuda:N)") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: CUDA is not available on this machine")
    if d.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r}: only cpu and cuda are supported")
    return d
