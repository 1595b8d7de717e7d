"""``motorec.ops.code_usage``: per-level, per-codeword mean soft assignment of residual quantization, fused.

Custom ops ``motorec::code_usage`` (forward) and ``motorec::code_usage_backward``. The function and its
gradients are defined in :mod:`motorec.reference.code_usage`; every backend computes the same. The C++ and
Triton backends recompute the distance tiles in the backward and never hold an [N, K] tensor.
"""
from __future__ import annotations

from functools import partial
from typing import Optional, Tuple

import torch
from torch import Tensor

from motorec import _ext
from motorec._dispatch import Backend, dispatcher
from motorec.ops._common import c_cpu_float_check, check_float_matrix, triton_codebook_check, triton_interpreter_auto
from motorec.ops._eager import eager
from motorec.reference import code_usage as _ref

_D = dispatcher("code_usage")
MODES = _ref.MODES


def _triton_fwd(z_e, codes, codebooks, temperature, mode):
    from motorec.kernels import code_usage as k

    return k.code_usage_fwd(z_e, codes, codebooks, temperature, mode)


def _triton_bwd(grad_rho, z_e, codes, codebooks, aux, temperature, mode):
    from motorec.kernels import code_usage as k

    return k.code_usage_bwd(grad_rho, z_e, codes, codebooks, aux, temperature, mode)


def _c_fwd(z_e, codes, codebooks, temperature, mode):
    return tuple(torch.ops.motorec_C.code_usage_fwd(z_e, codes, codebooks, temperature, mode == "softmax"))


def _c_bwd(grad_rho, z_e, codes, codebooks, aux, temperature, mode):
    return tuple(torch.ops.motorec_C.code_usage_bwd(grad_rho, z_e, codes, codebooks, aux, temperature,
                                                    mode == "softmax"))


_D.register(Backend("triton", forward=_triton_fwd, backward=_triton_bwd, static_reason=_ext.TRITON_REASON or None,
                    input_check=partial(triton_codebook_check, max_dim=256), auto_check=triton_interpreter_auto,
                    note="fused Triton kernels: online softmax over K tiles, atomics into [L, K]"))
_D.register(Backend("cuda", static_reason="no CUDA C++ kernel for code_usage: the Triton kernel serves CUDA tensors"))
_D.register(Backend("cpu", forward=_c_fwd, backward=_c_bwd,
                    static_reason=None if _ext.c_has_op("code_usage_fwd")
                    else (_ext.C_REASON or "motorec._C has no code_usage (built before it was added: rebuild)"),
                    input_check=c_cpu_float_check, note="blocked OpenMP C++ kernel (motorec._C), per-thread [L, K] sums"))
_D.register(Backend("torch", forward=_ref.code_usage_forward, backward=_ref.code_usage_backward,
                    note="per-level matmul + softmax/sigmoid reference (materializes N x K)"))


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op("motorec::code_usage", mutates_args=())
def code_usage_op(z_e: Tensor, codes: Tensor, codebooks: Tensor, temperature: float, mode: str,
                  backend: str) -> Tuple[Tensor, Tensor]:
    """Raw op: (rho [L, K], aux [N, L]); see :mod:`motorec.reference.code_usage`."""
    rho, aux = _D.forward(backend)(z_e.contiguous(), codes.contiguous(), codebooks.contiguous(), temperature, mode)
    return rho, aux


@code_usage_op.register_fake
def _(z_e, codes, codebooks, temperature, mode, backend):
    torch._check(z_e.dim() == 2 and codes.dim() == 2 and codebooks.dim() == 3,
                 lambda: "z_e must be [N, D], codes [N, L] and codebooks [L, K, D]")
    torch._check(z_e.shape[1] == codebooks.shape[2], lambda: "z_e and codebooks must share D")
    torch._check(codes.shape[0] == z_e.shape[0], lambda: "codes must have one row per row of z_e")
    torch._check(codes.shape[1] == codebooks.shape[0], lambda: "codes must have one column per level")
    acc = _acc_dtype(z_e.dtype)
    num_levels, k = codebooks.shape[0], codebooks.shape[1]
    return z_e.new_empty((num_levels, k), dtype=acc), z_e.new_empty((z_e.shape[0], num_levels), dtype=acc)


@torch.library.custom_op("motorec::code_usage_backward", mutates_args=())
def code_usage_backward_op(grad_rho: Tensor, z_e: Tensor, codes: Tensor, codebooks: Tensor, aux: Tensor,
                           temperature: float, mode: str, backend: str) -> Tuple[Tensor, Tensor]:
    """Raw op: (grad_z_e [N, D], grad_codebooks [L, K, D])."""
    gz, gc = _D.backward(backend)(grad_rho.contiguous(), z_e.contiguous(), codes.contiguous(),
                                  codebooks.contiguous(), aux.contiguous(), temperature, mode)
    return gz, gc


@code_usage_backward_op.register_fake
def _(grad_rho, z_e, codes, codebooks, aux, temperature, mode, backend):
    return z_e.new_empty(z_e.shape), codebooks.new_empty(codebooks.shape)


def _setup(ctx, inputs, output):
    z_e, codes, codebooks, temperature, mode, backend = inputs
    ctx.temperature, ctx.mode, ctx.backend = temperature, mode, backend
    ctx.save_for_backward(z_e, codes, codebooks, output[1])


def _incoming(grad_rho: Optional[Tensor], aux: Tensor, codebooks: Tensor) -> Tensor:
    """The backward's incoming gradient of rho, zeros when it got none, in aux's dtype."""
    if grad_rho is None:
        return aux.new_zeros((codebooks.shape[0], codebooks.shape[1]))
    return grad_rho.to(aux.dtype)


def _backward(ctx, grad_rho, grad_aux):
    z_e, codes, codebooks, aux = ctx.saved_tensors
    gz, gc = code_usage_backward_op(_incoming(grad_rho, aux, codebooks), z_e, codes, codebooks, aux,
                                    ctx.temperature, ctx.mode, ctx.backend)
    return gz, None, gc, None, None, None


code_usage_op.register_autograd(_backward, setup_context=_setup)


class _CodeUsageEager(torch.autograd.Function):
    """The op's forward and backward kernels without the custom-op dispatch (:mod:`motorec.ops._eager`)."""

    @staticmethod
    def forward(ctx, z_e, codes, codebooks, temperature, mode, backend):
        rho, aux = _D.forward(backend)(z_e.contiguous(), codes.contiguous(), codebooks.contiguous(), temperature,
                                       mode)
        ctx.temperature, ctx.mode, ctx.backend = temperature, mode, backend
        ctx.save_for_backward(z_e, codes, codebooks, aux)
        ctx.mark_non_differentiable(aux)
        return rho, aux

    @staticmethod
    def backward(ctx, grad_rho, grad_aux):
        z_e, codes, codebooks, aux = ctx.saved_tensors
        gz, gc = _D.backward(ctx.backend)(_incoming(grad_rho, aux, codebooks).contiguous(), z_e.contiguous(),
                                          codes.contiguous(), codebooks.contiguous(), aux.contiguous(),
                                          ctx.temperature, ctx.mode)
        return gz, None, gc, None, None, None


def code_usage(z_e: Tensor, codes: Tensor, codebooks: Tensor, temperature: float = 1.0, mode: str = "softmax",
               backend: str = "auto") -> Tensor:
    r"""Mean soft assignment of each level's residual input to every codeword, ``rho [L, K]``.

    Per level k, with ``r_k = z_e - sum_{k' < k} C_{k'}[codes[:, k']]`` and ``d_ij = ||r_i - c_j||^2``:

    * ``mode="softmax"``: ``rho[k, j] = mean_i softmax_j(-d_ij / T)`` (each level's row sums to 1);
    * ``mode="sigmoid"``: ``rho[k, j] = mean_i sigmoid((mean_j' d_ij' - d_ij) / T)``.

    This is ``RQVAE.soft_assignments(z_e, codes).mean(1)`` without the [L, N, K] table: the C++ and Triton
    backends stream distance tiles (online softmax over K tiles, ``||r||^2`` cancelling) and recompute them
    in the backward. Gradients reach ``z_e`` and ``codebooks`` (through the distances and the residuals).

    Empty input (N = 0): ``rho`` is all zeros with zero gradients (a mean over no rows is undefined; the
    caller decides what an empty batch's loss is, as :class:`motorec.nn.RQVAE` does by returning 0).

    Args:
        z_e: [N, D] float tensor (N may be 0).
        codes: [N, L] integer tokens in ``[0, K)`` (e.g. from :func:`residual_quantize`); values are not
            checked here (that would read them back to the host): the C++ kernel checks them as it reads
            them, the torch path raises from ``index_select``, the Triton path does not check.
        codebooks: [L, K, D], dtype and device of z_e.
        temperature: T > 0.
        mode: ``"softmax"`` or ``"sigmoid"``.
        backend: ``auto`` (default; ``MOTOREC_BACKEND`` if set) or one of ``torch | cpu | triton``.

    Shapes:
        z_e [N, D], codes [N, L], codebooks [L, K, D] -> rho [L, K] float32 (float64 for float64 inputs)
    """
    check_float_matrix(z_e, "z_e")
    check_float_matrix(codebooks, "codebooks", dims=3)
    num_levels, k, d = codebooks.shape
    if num_levels < 1 or k < 1:
        raise ValueError(f"codebooks must have L >= 1 and K >= 1, got shape {tuple(codebooks.shape)}")
    if z_e.shape[1] != d:
        raise ValueError(f"z_e has D={z_e.shape[1]} but codebooks have D={d} (shape {tuple(codebooks.shape)})")
    if z_e.dtype != codebooks.dtype:
        raise TypeError(f"z_e ({z_e.dtype}) and codebooks ({codebooks.dtype}) must have the same dtype")
    if z_e.device != codebooks.device or codes.device != z_e.device:
        raise ValueError(f"z_e ({z_e.device}), codes ({codes.device}) and codebooks ({codebooks.device}) must be "
                         "on one device")
    if not isinstance(codes, Tensor) or codes.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"codes must be an integer tensor, got {getattr(codes, 'dtype', type(codes).__name__)}")
    if codes.dim() != 2 or codes.shape[0] != z_e.shape[0] or codes.shape[1] != num_levels:
        raise ValueError(f"codes must be [N, L] = [{z_e.shape[0]}, {num_levels}], got shape {tuple(codes.shape)}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0 \
            or temperature == float("inf"):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be 'softmax' or 'sigmoid', got {mode!r}")
    name = _D.select(backend, device=z_e.device.type, dtype=z_e.dtype, n=z_e.shape[0], dim=d, k=k,
                     levels=num_levels)
    if eager(z_e, codes, codebooks):
        return _CodeUsageEager.apply(z_e, codes.long(), codebooks, float(temperature), mode, name)[0]
    return code_usage_op(z_e, codes.long(), codebooks, float(temperature), mode, name)[0]
