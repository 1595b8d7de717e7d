"""Capability flags, computed once at import: which compiled and Triton paths exist on this machine.

Nothing here is re-checked in a hot call. Each flag has a companion ``*_REASON`` string that says why a
path is unavailable (empty when it is available); :mod:`motorec._dispatch` shows these to users.
"""
from __future__ import annotations

import os
import struct
import sys
from typing import List, Optional

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


def elf_needed(path: str) -> Optional[List[str]]:
    """The ``DT_NEEDED`` entries (shared libraries a binary asks the loader for) of a 64-bit little-endian
    ELF file, in order; ``None`` when ``path`` is not such a file or has no dynamic section."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads, dynamic = [], None
    for k in range(phnum):
        off = phoff + k * phentsize
        if off + 56 > len(data):
            return None
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", data, off)
        if p_type == 1:  # PT_LOAD
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == 2:  # PT_DYNAMIC
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return None
    needed, strtab = [], None
    for off in range(dynamic[0], min(dynamic[0] + dynamic[1], len(data) - 15), 16):
        tag, val = struct.unpack_from("<qQ", data, off)
        if tag == 0:  # DT_NULL
            break
        if tag == 1:  # DT_NEEDED: an offset into the string table
            needed.append(val)
        elif tag == 5:  # DT_STRTAB: a virtual address
            strtab = next((val - va + fo for va, fo, sz in loads if va <= val < va + sz), None)
    if strtab is None:
        return [] if not needed else None
    names = []
    for n in needed:
        start = strtab + n
        end = data.find(b"\0", start)
        if start >= len(data) or end < 0:
            return None
        names.append(data[start:end].decode("utf-8", "replace"))
    return names


def _cxx_runtime_problem(so_path: str) -> str:
    """Why a built ``_C`` must not be used, or ``""``: on Linux it must load the shared ``libstdc++.so.6``.

    A ``_C`` with a private static C++ runtime (``-static-libstdc++``, which some compiler wrappers add) turns
    every error torch raises inside it into a segmentation fault: seen on a GPU image with torch 2.11.
    """
    if not sys.platform.startswith("linux"):
        return ""
    needed = elf_needed(so_path)
    if needed is None:  # not an ELF we can read: nothing to say
        return ""
    if not any(n.startswith("libstdc++.so") for n in needed):
        return (f"motorec._C ({so_path}) does not load libstdc++.so.6 (linked with a static C++ runtime, e.g. by "
                "a compiler wrapper adding -static-libstdc++): a C++ error inside it would crash the process "
                "instead of raising. Rebuild with a plain g++: `CXX=g++ pip install --no-build-isolation -e .`")
    return ""


def _load_c():
    if os.environ.get("MOTOREC_DISABLE_C", "0") == "1":
        return False, "motorec._C disabled by MOTOREC_DISABLE_C=1"
    import importlib.util

    spec = importlib.util.find_spec("motorec._C")
    if spec is None:
        return False, "motorec._C is not built; run `pip install --no-build-isolation -e .`"
    problem = _cxx_runtime_problem(spec.origin) if spec.origin else ""
    if problem:  # checked on the file, before loading registers any op
        return False, problem
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
    """Whether ``motorec._C`` registered a CPU kernel for ``motorec_C::<name>`` (False, not an error, for a
    ``_C`` built before that op existed)."""
    if not HAS_C:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"motorec_C::{name}", "CPU")
    except RuntimeError:  # no schema of that name in this _C
        return False
