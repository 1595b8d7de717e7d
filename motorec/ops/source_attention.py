"""``motorec.ops.source_attention``: attention over M sources, ``out_i = sum_m softmax_m(q . tanh(W h_im + b)) h_im``.

Custom ops ``motorec::source_attention`` (forward) and ``motorec::source_attention_backward``. The function and
its gradients are defined in :mod:`motorec.reference.source_attention`; every backend computes the same. The
C++ CPU kernel works on blocks of rows that stay in cache and recomputes them in the backward: it never
allocates an [M, N, d] temporary (the torch path allocates about four), which at catalog scale is a fresh
allocation the OS page-faults in on every call.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from motorec import _ext
from motorec._dispatch import Backend, dispatcher
from motorec.ops._common import c_cpu_float_check, check_float_matrix
from motorec.ops._eager import eager
from motorec.reference import source_attention as _ref

_D = dispatcher("source_attention")


def _c_fwd(hs, weight, bias, query):
    out, attn = torch.ops.motorec_C.source_attention_fwd(hs, weight, bias, query)
    return out, attn, _ref.empty_aux(hs)


def _c_bwd(grad_out, grad_attn, hs, weight, bias, query, attn, aux):
    return tuple(torch.ops.motorec_C.source_attention_bwd(grad_out, grad_attn, hs, weight, bias, query, attn))


_NO_GPU_KERNEL = ("no GPU kernel for source_attention: its cost is three dense [N, d] x [d, d] products per source, "
                  "which the torch path runs through cuBLAS")
_D.register(Backend("triton", static_reason=_NO_GPU_KERNEL))
_D.register(Backend("cuda", static_reason=_NO_GPU_KERNEL))
# Below this many elements (N * M * d) auto keeps the torch path: its [M, N, d] buffers are cheap there, and it
# runs one product per source where the kernel runs one per row block plus the backward's recomputation.
# Measured, one thread, this project's CPU (benchmarks/bench_source_attention.py, 2026-12-01): forward +
# backward 0.98x-1.08x at M=2, N=15k, d=64 (1.9M elements), 1.25x-1.33x at N=100k (12.8M).
CPU_AUTO_MIN_ELEMENTS = 1 << 22


def _cpu_auto_check(**inputs):
    n, d, m = inputs.get("n"), inputs.get("dim"), inputs.get("sources")
    if n is not None and d is not None and m is not None and n * d * m < CPU_AUTO_MIN_ELEMENTS:
        return (f"N * M * d = {n * d * m} < {CPU_AUTO_MIN_ELEMENTS}: the torch path is as fast at this size "
                "(backend='cpu' still runs the kernel)")
    return None


_D.register(Backend("cpu", forward=_c_fwd, backward=_c_bwd,
                    static_reason=None if _ext.c_has_op("source_attention_fwd")
                    else (_ext.C_REASON or "motorec._C has no source_attention (built before it was added: rebuild)"),
                    input_check=c_cpu_float_check, auto_check=_cpu_auto_check,
                    note="blocked OpenMP C++ kernel (motorec._C): cache-sized row blocks, recomputed in the backward; "
                         "auto from N * M * d >= 4M elements"))
_D.register(Backend("torch", forward=_ref.source_attention_forward, backward=_ref.source_attention_backward,
                    note="sigmoid-form reference (saves s: [M, N, d])"))


@torch.library.custom_op("motorec::source_attention", mutates_args=())
def source_attention_op(hs: List[Tensor], weight: Tensor, bias: Tensor, query: Tensor,
                        backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """Raw op: (out [N, d], attn [N, M], aux); see :mod:`motorec.reference.source_attention`."""
    out, attn, aux = _D.forward(backend)([h.contiguous() for h in hs], weight.contiguous(), bias.contiguous(),
                                         query.contiguous())
    return out, attn, aux


@source_attention_op.register_fake
def _(hs, weight, bias, query, backend):
    torch._check(len(hs) >= 1, lambda: "hs must hold at least one tensor")
    n, d = hs[0].shape
    aux = hs[0].new_empty((len(hs), n, d)) if backend == "torch" else hs[0].new_empty((0,))
    return hs[0].new_empty((n, d)), hs[0].new_empty((n, len(hs))), aux


@torch.library.custom_op("motorec::source_attention_backward", mutates_args=())
def source_attention_backward_op(grad_out: Tensor, grad_attn: Optional[Tensor], hs: List[Tensor], weight: Tensor,
                                 bias: Tensor, query: Tensor, attn: Tensor, aux: Tensor,
                                 backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Raw op: (grad_hs [M, N, d], grad_weight [d, d], grad_bias [d], grad_query [d])."""
    g_hs, gw, gb, gq = _D.backward(backend)(
        grad_out.contiguous(), None if grad_attn is None else grad_attn.contiguous(), [h.contiguous() for h in hs],
        weight.contiguous(), bias.contiguous(), query.contiguous(), attn.contiguous(), aux)
    return g_hs, gw, gb, gq


@source_attention_backward_op.register_fake
def _(grad_out, grad_attn, hs, weight, bias, query, attn, aux, backend):
    n, d = hs[0].shape
    return (hs[0].new_empty((len(hs), n, d)), weight.new_empty(weight.shape), bias.new_empty(bias.shape),
            query.new_empty(query.shape))


def _grads(backend, grad_out, grad_attn, hs, weight, bias, query, attn, aux, raw):
    """The backward call shared by both paths; ``raw`` calls the kernels directly (eager path) instead of the
    custom op. The forward's ``out`` got no gradient when only ``attn`` was used: zeros then."""
    if grad_out is None:
        grad_out = hs[0].new_zeros(hs[0].shape)
    args = (grad_out.contiguous(), None if grad_attn is None else grad_attn.contiguous(), hs, weight, bias, query,
            attn, aux)
    if raw:
        g_hs, gw, gb, gq = _D.backward(backend)(*args)
    else:
        g_hs, gw, gb, gq = source_attention_backward_op(*args, backend)
    return list(g_hs.unbind(0)), gw, gb, gq


def _setup(ctx, inputs, output):
    hs, weight, bias, query, backend = inputs
    ctx.backend, ctx.m = backend, len(hs)
    ctx.save_for_backward(*hs, weight, bias, query, output[1], output[2])


def _backward(ctx, grad_out, grad_attn, grad_aux):
    saved = ctx.saved_tensors
    hs, (weight, bias, query, attn, aux) = list(saved[:ctx.m]), saved[ctx.m:]
    g_hs, gw, gb, gq = _grads(ctx.backend, grad_out, grad_attn, hs, weight, bias, query, attn, aux, raw=False)
    return g_hs, gw, gb, gq, None


source_attention_op.register_autograd(_backward, setup_context=_setup)


class _SourceAttentionEager(torch.autograd.Function):
    """The op's forward and backward kernels without the custom-op dispatch (:mod:`motorec.ops._eager`)."""

    @staticmethod
    def forward(ctx, weight, bias, query, backend, *hs):
        hs = [h.contiguous() for h in hs]
        out, attn, aux = _D.forward(backend)(hs, weight.contiguous(), bias.contiguous(), query.contiguous())
        ctx.backend, ctx.m = backend, len(hs)
        ctx.save_for_backward(*hs, weight, bias, query, attn, aux)
        ctx.mark_non_differentiable(aux)
        ctx.set_materialize_grads(False)
        return out, attn, aux

    @staticmethod
    def backward(ctx, grad_out, grad_attn, grad_aux):
        saved = ctx.saved_tensors
        hs, (weight, bias, query, attn, aux) = list(saved[:ctx.m]), saved[ctx.m:]
        g_hs, gw, gb, gq = _grads(ctx.backend, grad_out, grad_attn, hs, weight.contiguous(), bias.contiguous(),
                                  query.contiguous(), attn, aux, raw=True)
        return (gw, gb, gq, None, *g_hs)


def source_attention(hs: Sequence[Tensor], weight: Tensor, bias: Tensor, query: Tensor,
                     backend: str = "auto") -> Tuple[Tensor, Tensor]:
    r"""Attention over M sources: ``a_im = softmax_m(q . tanh(W h_im + b))``, ``out_i = sum_m a_im h_im``.

    MoToRec's fusion of its modality views (:class:`motorec.models.SourceAttention`), usable in any model that
    mixes several [N, d] views of the same rows (modalities, graph sources, heads). Gradients reach every
    ``hs[m]``, ``weight``, ``bias`` and ``query``.

    Args:
        hs: a list or tuple of M >= 1 float tensors [N, d] (one shape, dtype and device; N may be 0).
        weight: [d, d] (``nn.Linear(d, d).weight`` layout: ``W h`` is ``h @ weight.T``).
        bias: [d].
        query: [d].
        backend: ``auto`` (default; ``MOTOREC_BACKEND`` if set) or one of ``torch | cpu``. ``cpu`` is the C++
            kernel (float32/float64 CPU tensors); CUDA and half-precision tensors take the ``torch`` path.

    Returns:
        ``(out [N, d], attn [N, M])``: the fused rows and each row's weights over the sources (rows sum to 1).

    Shapes:
        hs M x [N, d], weight [d, d], bias [d], query [d] -> out [N, d], attn [N, M]
    """
    if isinstance(hs, Tensor) or not isinstance(hs, (list, tuple)):
        raise TypeError(f"hs must be a list or tuple of [N, d] tensors, got {type(hs).__name__}")
    if len(hs) == 0:
        raise ValueError("hs must hold at least one [N, d] tensor, got an empty sequence")
    for i, h in enumerate(hs):
        check_float_matrix(h, f"hs[{i}]")
    h0 = hs[0]
    n, d = h0.shape
    for i, h in enumerate(hs[1:], start=1):
        if h.shape != h0.shape or h.dtype != h0.dtype or h.device != h0.device:
            raise ValueError(f"hs[{i}] is {tuple(h.shape)} {h.dtype} on {h.device}, but hs[0] is {tuple(h0.shape)} "
                             f"{h0.dtype} on {h0.device}: every source must match")
    check_float_matrix(weight, "weight")
    for name, t in (("bias", bias), ("query", query)):
        check_float_matrix(t, name, dims=1)
    if weight.shape != (d, d) or bias.shape != (d,) or query.shape != (d,):
        raise ValueError(f"with d={d}, weight must be [{d}, {d}], bias and query [{d}]; got weight "
                         f"{tuple(weight.shape)}, bias {tuple(bias.shape)}, query {tuple(query.shape)}")
    for name, t in (("weight", weight), ("bias", bias), ("query", query)):
        if t.dtype != h0.dtype or t.device != h0.device:
            raise ValueError(f"{name} is {t.dtype} on {t.device}; it must have the dtype and device of hs "
                             f"({h0.dtype} on {h0.device})")
    name = _D.select(backend, device=h0.device.type, dtype=h0.dtype, n=n, dim=d, sources=len(hs))
    hs = list(hs)
    if eager(weight, bias, query, *hs):
        out, attn, _ = _SourceAttentionEager.apply(weight, bias, query, name, *hs)
    else:
        out, attn, _ = source_attention_op(hs, weight, bias, query, name)
    return out, attn
