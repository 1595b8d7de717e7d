"""``motorec.ops.spmm``: sparse (CSR) x dense product, the building block of graph propagation.

Custom op ``motorec::spmm`` with a fake kernel and autograd. The gradient with respect to ``x`` is
``A^T @ grad``: the same CSR when the graph is symmetric (LightGCN's normalized adjacency), else the graph's
cached transpose. No gradient flows to the edge values (the normalized adjacency is a constant).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from motorec import _ext
from motorec._dispatch import Backend, dispatcher
from motorec.graph import Graph
from motorec.ops._common import check_float_matrix, cpu_only, cuda_only
from motorec.reference import spmm as _ref  # module

_D = dispatcher("spmm")

_C_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _c_cpu(rowptr, col, val, x):
    return torch.ops.motorec_C.spmm(rowptr, col, val, x)


def _cpu_check(**inputs):
    r = cpu_only(**inputs)
    if r is None and inputs.get("dtype") not in (None,) + _C_DTYPES:
        r = f"dtype {inputs['dtype']} not supported by the C++ CPU kernel (float32, float64)"
    return r


def _cpu_auto_check(**inputs):
    """``auto`` passes over the C++ CPU kernels where they measured slower than torch CSR (MKL): narrow
    feature widths that are not a multiple of 4 (2, 3, 5, 6, 7, 9, ..., 15), which take the kernels' generic
    path. An explicit ``backend="cpu"`` still runs them."""
    d = inputs.get("dim")
    if d is not None and 1 < d < 16 and d % 4 != 0:
        return f"dim {d}: below 16 and not a multiple of 4, the C++ CPU kernel is slower than torch CSR (MKL)"
    return None


def _cuda_check(**inputs):
    r = cuda_only(**inputs)
    if r is None and inputs.get("dtype") not in (None,) + _CUDA_DTYPES:
        r = f"dtype {inputs['dtype']} not supported by the CUDA kernel"
    return r


_D.register(Backend("cuda", _c_cpu, _ext.C_CUDA_REASON or None, _cuda_check,
                    note="C++/CUDA CSR SpMM (motorec._C)"))
_D.register(Backend("cpu", _c_cpu, None if _ext.c_has_op("spmm") else (_ext.C_REASON or "motorec._C has no spmm"),
                    _cpu_check, auto_check=_cpu_auto_check, note="C++ OpenMP CSR SpMM (motorec._C)"))
_D.register(Backend("triton", None, "no Triton SpMM kernel: the C++/CUDA kernels cover every device "
                    "(a Triton SpMM is kept only where a benchmark shows it winning)"))
_D.register(Backend("torch", _ref.spmm, None, None, note="torch CSR sparse matmul (MKL / cuSPARSE) reference"))


def _run(backend: str, rowptr: Tensor, col: Tensor, val: Tensor, x: Tensor) -> Tensor:
    return _D.impl(backend)(rowptr, col, val, x)


@torch.library.custom_op("motorec::spmm", mutates_args=())
def spmm_op(
    rowptr: Tensor,
    col: Tensor,
    val: Tensor,
    x: Tensor,
    t_rowptr: Optional[Tensor],
    t_col: Optional[Tensor],
    t_val: Optional[Tensor],
    backend: str,
) -> Tensor:
    """Raw op: ``A @ x`` with the CSR of ``A`` and, when ``A`` is not symmetric, the CSR of ``A^T``
    (``t_*``, used by the backward; ``None`` means symmetric). ``backend`` is a resolved name."""
    return _run(backend, rowptr, col, val, x.contiguous())


@spmm_op.register_fake
def _(rowptr, col, val, x, t_rowptr, t_col, t_val, backend):
    torch._check(x.dim() == 2, lambda: f"x must be 2-D, got {x.dim()}-D")
    torch._check(col.shape == val.shape, lambda: "col and val must have the same shape")
    return x.new_empty((rowptr.shape[0] - 1, x.shape[1]))


def _setup(ctx, inputs, output):
    rowptr, col, val, x, t_rowptr, t_col, t_val, backend = inputs
    ctx.backend = backend
    ctx.symmetric = t_rowptr is None
    if ctx.symmetric:
        ctx.save_for_backward(rowptr, col, val)
    else:
        ctx.save_for_backward(rowptr, col, val, t_rowptr, t_col, t_val)


def _backward(ctx, grad):
    saved = ctx.saved_tensors
    if ctx.symmetric:
        rowptr, col, val = saved
        gx = spmm_op(rowptr, col, val, grad, None, None, None, ctx.backend)
    else:
        rowptr, col, val, t_rowptr, t_col, t_val = saved
        gx = spmm_op(t_rowptr, t_col, t_val, grad, rowptr, col, val, ctx.backend)
    return None, None, None, gx, None, None, None, None


spmm_op.register_autograd(_backward, setup_context=_setup)


def check_graph_input(graph: Graph, x: Tensor, *, square: bool = False) -> None:
    if not isinstance(graph, Graph):
        raise TypeError(f"graph must be a motorec.Graph, got {type(graph).__name__} "
                        "(build one with Graph.from_interactions / from_edge_index / from_csr)")
    check_float_matrix(x, "x")
    if square and graph.num_rows != graph.num_cols:
        raise ValueError(f"graph must be square for propagation, got {graph.num_rows} x {graph.num_cols}")
    if x.shape[0] != graph.num_cols:
        raise ValueError(f"x must have graph.num_cols={graph.num_cols} rows, got x of shape {tuple(x.shape)}")
    if x.device != graph.device:
        raise ValueError(f"x is on {x.device} but graph is on {graph.device}; move one with .to(device)")


def graph_operands(graph: Graph, x: Tensor):
    """``(rowptr, col, val, t_rowptr, t_col, t_val)`` for the raw ops: edge values in x's dtype (float32 for
    half/bf16 x, which the kernels accumulate in float32) and the CSR of ``A^T`` (``None`` when symmetric)."""
    half = x.dtype in (torch.float16, torch.bfloat16)
    val = graph.val if half or graph.val.dtype == x.dtype else graph.val.to(x.dtype)
    if graph.symmetric:
        return graph.rowptr, graph.col, val, None, None, None
    t = graph.transpose()
    t_val = t.val if t.val.dtype == val.dtype else t.val.to(val.dtype)
    return graph.rowptr, graph.col, val, t.rowptr, t.col, t_val


def spmm(graph: Graph, x: Tensor, backend: str = "auto") -> Tensor:
    """``graph @ x``.

    Args:
        graph: a :class:`motorec.Graph` (CSR, [R, C]).
        x: [C, D] float tensor on the graph's device (any strides).
        backend: ``auto`` (default; ``MOTOREC_BACKEND`` if set) or one of ``torch | cpu | cuda``;
            an explicit backend that cannot serve raises :class:`motorec.BackendUnavailable`.

    Shapes:
        x: [C, D] -> out: [R, D], dtype of x.
    """
    check_graph_input(graph, x)
    name = _D.select(backend, device=x.device.type, dtype=x.dtype, rows=graph.num_rows, nnz=graph.nnz,
                     dim=x.shape[1])
    rowptr, col, val, t_rowptr, t_col, t_val = graph_operands(graph, x)
    return spmm_op(rowptr, col, val, x, t_rowptr, t_col, t_val, name)
