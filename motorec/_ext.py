"""Capability flags, computed once at import: which compiled and Triton paths exist on this machine.

Nothing here is re-checked in a hot call. Each flag has a companion ``*_REASON`` string that says why a
path is unavailable (empty when it is available); :mod:`motorec._dispatch` shows these to users.
"""
from __future__ import annotations

import os

import torch

__all__ = [
    "HAS_C",
    "C_REASON",
    "HAS_C_CUDA",
    "C_CUDA_REASON",
    "HAS_TRITON",
    "TRITON_REASON",
    "TRITON_INTERPRET",
    "CUDA_AVAILABLE",
]

CUDA_AVAILABLE: bool = torch.cuda.is_available()
TRITON_INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _load_c():
    if os.environ.get("MOTOREC_DISABLE_C", "0") == "1":
        return False, "motorec._C disabled by MOTOREC_DISABLE_C=1"
    import importlib.util

    if importlib.util.find_spec("motorec._C") is None:
        return False, "motorec._C is not built; run `pip install --no-build-isolation -e .`"
    try:
        from motorec import _C  # noqa: F401  (registers torch.ops.motorec_C.*)
    except ImportError as e:  # built against another torch, or a missing shared library
        return False, f"motorec._C is not built or failed to load ({e}); run `pip install --no-build-isolation -e .`"
    return True, ""


HAS_C, C_REASON = _load_c()


def _c_has_cuda():
    if not HAS_C:
        return False, C_REASON
    if not torch._C._dispatch_has_kernel_for_dispatch_key("motorec_C::spmm", "CUDA"):
        return False, "motorec._C was built without CUDA (MOTOREC_WITH_CUDA=auto found no CUDA torch + nvcc)"
    if not CUDA_AVAILABLE:
        return False, "no CUDA device visible (torch.cuda.is_available() is False)"
    return True, ""


HAS_C_CUDA, C_CUDA_REASON = _c_has_cuda()


def _load_triton():
    if os.environ.get("MOTOREC_DISABLE_TRITON", "0") == "1":
        return False, "Triton disabled by MOTOREC_DISABLE_TRITON=1"
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError as e:
        return False, f"triton is not installed ({e}); `pip install triton`"
    if not CUDA_AVAILABLE and not TRITON_INTERPRET:
        return False, "no CUDA device, and TRITON_INTERPRET=1 is not set (the interpreter is for tests: slow)"
    return True, ""


HAS_TRITON, TRITON_REASON = _load_triton()


def c_has_op(name: str) -> bool:
    """Whether ``motorec._C`` registered a CPU kernel for ``motorec_C::<name>``."""
    return HAS_C and torch._C._dispatch_has_kernel_for_dispatch_key(f"motorec_C::{name}", "CPU")
