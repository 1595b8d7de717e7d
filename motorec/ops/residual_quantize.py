"""``motorec.ops.residual_quantize``: nearest-codeword search over L residual levels, fused.

Custom ops ``motorec::residual_quantize`` (forward) and ``motorec::residual_quantize_backward``. The function
and its gradients are defined in :mod:`motorec.reference.residual_quantize`; every backend computes the same.
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from motorec import _ext
from motorec._dispatch import Backend, dispatcher
from motorec.ops._common import c_cpu_float_check, check_float_matrix, triton_codebook_check, triton_interpreter_auto
from motorec.ops._eager import eager
from motorec.reference import residual_quantize as _ref

_D = dispatcher("residual_quantize")


class RQOutput(NamedTuple):
    """Result of :func:`residual_quantize`.

    Attributes:
        codes: [N, L] int64, the chosen codeword per level (the item's tokens).
        quantized: [N, D], sum over levels of the chosen codewords.
        residual_sq: [N, L] float32 (float64 for float64 inputs): ``||r^(k)||^2`` after level k, i.e. the
            squared distance to the chosen codeword; its mean is the codebook/commitment loss.
    """

    codes: Tensor
    quantized: Tensor
    residual_sq: Tensor


def _triton_fwd(x, codebooks):
    from motorec.kernels import residual_quantize as k

    return k.residual_quantize_fwd(x, codebooks)


def _triton_bwd(gq, gr, x, codebooks, codes):
    from motorec.kernels import residual_quantize as k

    return k.residual_quantize_bwd(gq, gr, x, codebooks, codes)


def _c_fwd(x, codebooks):
    return tuple(torch.ops.motorec_C.residual_quantize_fwd(x, codebooks))


def _c_bwd(gq, gr, x, codebooks, codes):
    return tuple(torch.ops.motorec_C.residual_quantize_bwd(gq, gr, x, codebooks, codes))


def _cpu_auto(**inputs):
    # Measured (single-thread CPU time, N = 20k..50k): the reference's few vectorized passes beat the blocked
    # kernel's per-row work only for tiny float32 codebooks; the kernel wins from K*D = 32 up.
    k, dim = inputs.get("k"), inputs.get("dim")
    if inputs.get("dtype") == torch.float32 and k is not None and dim is not None and k * dim < 32:
        return f"K*D = {k * dim} < 32: for such tiny codebooks the torch reference is faster in float32"
    return None


_D.register(Backend("triton", forward=_triton_fwd, backward=_triton_bwd, static_reason=_ext.TRITON_REASON or None,
                    input_check=partial(triton_codebook_check, max_dim=None), auto_check=triton_interpreter_auto,
                    note="fused Triton kernels, all levels in one launch"))
_D.register(Backend("cuda", static_reason="no CUDA C++ kernel for residual_quantize: the Triton kernel serves CUDA "
                    "tensors"))
_D.register(Backend("cpu", forward=_c_fwd, backward=_c_bwd,
                    static_reason=None if _ext.c_has_op("residual_quantize_fwd")
                    else (_ext.C_REASON or "motorec._C has no residual_quantize"),
                    input_check=c_cpu_float_check, auto_check=_cpu_auto, note="blocked OpenMP C++ kernel (motorec._C)"))
_D.register(Backend("torch", forward=_ref.residual_quantize_forward, backward=_ref.residual_quantize_backward,
                    note="per-level matmul + argmin + gather reference (materializes N x K)"))


def _res_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op("motorec::residual_quantize", mutates_args=())
def residual_quantize_op(x: Tensor, codebooks: Tensor, backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """Raw op: (codes [N, L] int64, quantized [N, D], residual_sq [N, L])."""
    codes, q, r = _D.forward(backend)(x.contiguous(), codebooks.contiguous())
    return codes, q, r


@residual_quantize_op.register_fake
def _(x, codebooks, backend):
    torch._check(x.dim() == 2 and codebooks.dim() == 3, lambda: "x must be [N, D] and codebooks [L, K, D]")
    torch._check(x.shape[1] == codebooks.shape[2], lambda: "x and codebooks must share D")
    n, num_levels = x.shape[0], codebooks.shape[0]
    return (x.new_empty((n, num_levels), dtype=torch.int64), x.new_empty(x.shape),
            x.new_empty((n, num_levels), dtype=_res_dtype(x.dtype)))


@torch.library.custom_op("motorec::residual_quantize_backward", mutates_args=())
def residual_quantize_backward_op(
    grad_quantized: Tensor, grad_residual_sq: Tensor, x: Tensor, codebooks: Tensor, codes: Tensor, backend: str
) -> Tuple[Tensor, Tensor]:
    """Raw op: (grad_x [N, D], grad_codebooks [L, K, D]); see the module docstring for the definition."""
    gx, gc = _D.backward(backend)(grad_quantized.contiguous(), grad_residual_sq.contiguous(), x.contiguous(),
                                  codebooks.contiguous(), codes.contiguous())
    return gx, gc


@residual_quantize_backward_op.register_fake
def _(grad_quantized, grad_residual_sq, x, codebooks, codes, backend):
    return x.new_empty(x.shape), codebooks.new_empty(codebooks.shape)


def _setup(ctx, inputs, output):
    x, codebooks, backend = inputs
    codes = output[0]
    ctx.backend = backend
    ctx.save_for_backward(x, codebooks, codes)
    ctx.res_dtype = output[2].dtype


def _incoming(x: Tensor, codes: Tensor, grad_q: Optional[Tensor], grad_r: Optional[Tensor], res_dtype: torch.dtype
              ) -> Tuple[Tensor, Tensor]:
    """The backward's incoming gradients, zeros for an output that got none, residual_sq's in its dtype."""
    if grad_q is None:
        grad_q = torch.zeros_like(x)
    if grad_r is None:
        grad_r = x.new_zeros(codes.shape, dtype=res_dtype)
    return grad_q, grad_r.to(res_dtype)


def _backward(ctx, grad_codes, grad_q, grad_r):
    x, codebooks, codes = ctx.saved_tensors
    grad_q, grad_r = _incoming(x, codes, grad_q, grad_r, ctx.res_dtype)
    gx, gc = residual_quantize_backward_op(grad_q, grad_r, x, codebooks, codes, ctx.backend)
    return gx, gc, None


residual_quantize_op.register_autograd(_backward, setup_context=_setup)


class _ResidualQuantizeEager(torch.autograd.Function):
    """The op's forward and backward kernels without the custom-op dispatch (:mod:`motorec.ops._eager`)."""

    @staticmethod
    def forward(ctx, x, codebooks, backend):
        codes, q, r = _D.forward(backend)(x.contiguous(), codebooks.contiguous())
        ctx.backend, ctx.res_dtype = backend, r.dtype
        ctx.save_for_backward(x, codebooks, codes)
        ctx.mark_non_differentiable(codes)
        return codes, q, r

    @staticmethod
    def backward(ctx, grad_codes, grad_q, grad_r):
        x, codebooks, codes = ctx.saved_tensors
        grad_q, grad_r = _incoming(x, codes, grad_q, grad_r, ctx.res_dtype)
        gx, gc = _D.backward(ctx.backend)(grad_q.contiguous(), grad_r.contiguous(), x.contiguous(),
                                          codebooks.contiguous(), codes.contiguous())
        return gx, gc, None


def residual_quantize(x: Tensor, codebooks: Tensor, backend: str = "auto") -> RQOutput:
    """Residual quantization of ``x`` over ``L`` codebooks, all levels fused.

    Per level k: ``codes[:, k] = argmin_j ||r - C_k[j]||^2`` (squared L2; ties go to the lowest index), then
    ``r -= C_k[codes[:, k]]``, starting from ``r = x``.

    Args:
        x: [N, D] float tensor (N may be 0).
        codebooks: [L, K, D], same dtype and device as x, L >= 1, K >= 1.
        backend: ``auto`` (default; ``MOTOREC_BACKEND`` if set) or one of ``torch | cpu | triton``.

    Returns:
        :class:`RQOutput` ``(codes [N, L] int64, quantized [N, D], residual_sq [N, L])``. Gradients: see
        :mod:`motorec.reference.residual_quantize`.
    """
    check_float_matrix(x, "x")
    check_float_matrix(codebooks, "codebooks", dims=3)
    num_levels, k, d = codebooks.shape
    if num_levels < 1:
        raise ValueError(f"codebooks must have at least one level (L >= 1), got shape {tuple(codebooks.shape)}")
    if k < 1:
        raise ValueError(f"codebooks must have at least one codeword per level (K >= 1), got shape {tuple(codebooks.shape)}")
    if x.shape[1] != d:
        raise ValueError(f"x has D={x.shape[1]} but codebooks have D={d} (shape {tuple(codebooks.shape)})")
    if x.dtype != codebooks.dtype:
        raise TypeError(f"x ({x.dtype}) and codebooks ({codebooks.dtype}) must have the same dtype")
    if x.device != codebooks.device:
        raise ValueError(f"x is on {x.device} but codebooks are on {codebooks.device}")
    name = _D.select(backend, device=x.device.type, dtype=x.dtype, n=x.shape[0], dim=d, k=k, levels=num_levels)
    if eager(x, codebooks):
        return RQOutput(*_ResidualQuantizeEager.apply(x, codebooks, name))
    return RQOutput(*residual_quantize_op(x, codebooks, name))
