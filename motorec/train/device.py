"""The device a run trains and scores on, checked once where a user names it (``--device``, ``train.device``), and
the process's memory allocator (:func:`cpu_allocator`), which a run's log records."""
from __future__ import annotations

from pathlib import Path

import torch

from motorec.config import ConfigError

__all__ = ["resolve_device", "cpu_allocator"]

# shared libraries that replace malloc when loaded (LD_PRELOAD), as they appear in /proc/self/maps
_ALLOCATORS = (("tcmalloc", "libtcmalloc"), ("jemalloc", "libjemalloc"), ("mimalloc", "libmimalloc"))


def cpu_allocator(maps: str | Path = "/proc/self/maps") -> str:
    """The malloc this process runs on: ``tcmalloc``, ``jemalloc`` or ``mimalloc`` when one is loaded (by
    ``LD_PRELOAD``, say), else ``system`` (glibc's, or the platform's); ``unknown`` where ``maps`` cannot be read
    (not Linux).

    It matters at catalog scale on the CPU: glibc maps every block above 32 MB afresh and unmaps it when freed,
    so each catalog-sized temporary is page-faulted in again (``docs/results/2026-12-07-fanout.md``).
    """
    try:
        text = Path(maps).read_text()
    except OSError:
        return "unknown"
    libs = {line.rsplit("/", 1)[-1] for line in text.splitlines() if "/" in line}
    for name, prefix in _ALLOCATORS:
        if any(lib.startswith(prefix) for lib in libs):
            return name
    return "system"


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
