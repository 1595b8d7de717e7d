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
