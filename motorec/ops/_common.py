"""Input validation shared by the public ops: once, at the boundary, naming the argument."""
from __future__ import annotations

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_float_matrix(t, name: str, *, dims: int = 2) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D, got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")


def device_of(t: Tensor) -> str:
    return t.device.type


def cpu_only(**inputs):
    d = inputs.get("device")
    if d is not None and d != "cpu":
        return f"inputs are on {d}; this backend serves CPU tensors"
    return None


def cuda_only(**inputs):
    d = inputs.get("device")
    if d is not None and d != "cuda":
        return f"inputs are on {d}; this backend serves CUDA tensors"
    return None


def triton_codebook_check(max_dim=None, **inputs):
    """Why the Triton codebook kernels (residual_quantize, code_usage) cannot serve these inputs, or None:
    CUDA tensors (CPU ones only under ``TRITON_INTERPRET=1``), float32/16/bf16, and ``dim <= max_dim`` where the
    kernel keeps a row block's residual in registers."""
    from motorec import _ext

    d = inputs.get("device")
    if d == "cpu" and not _ext.TRITON_INTERPRET:
        return "inputs are on cpu; Triton runs CUDA tensors (or CPU tensors under TRITON_INTERPRET=1)"
    if d not in (None, "cpu", "cuda"):
        return f"inputs are on {d}; Triton runs CUDA tensors"
    if inputs.get("dtype") not in (None, torch.float32, torch.float16, torch.bfloat16):
        return f"dtype {inputs['dtype']} not supported by the Triton kernel (float32, float16, bfloat16)"
    dim = inputs.get("dim")
    if max_dim is not None and dim is not None and dim > max_dim:
        return f"D={dim} > {max_dim}: the Triton kernel keeps a row block's residual in registers"
    return None


def triton_interpreter_auto(**inputs):
    """``backend='auto'`` never picks the Triton interpreter: it is for tests (slow)."""
    if inputs.get("device") == "cpu":
        return "the Triton interpreter is for tests (slow); ask for backend='triton' explicitly"
    return None


def c_cpu_float_check(**inputs):
    """Why the C++ CPU codebook kernels cannot serve these inputs (CPU tensors, float32/float64), or None."""
    r = cpu_only(**inputs)
    if r is None and inputs.get("dtype") not in (None, torch.float32, torch.float64):
        r = f"dtype {inputs['dtype']} not supported by the C++ CPU kernel (float32, float64)"
    return r
