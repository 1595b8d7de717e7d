"""What the graph ops (:mod:`motorec.ops.spmm`, :mod:`motorec.ops.propagate`) share: input checks, the
operands of their raw custom ops, the per-input backend checks of their C++/CUDA kernels, and their autograd.

Both raw ops take ``(rowptr, col, val, x, t_rowptr, t_col, t_val, *args)``: the CSR of ``A``, the features,
and the CSR of ``A^T`` (``None`` for a symmetric graph such as LightGCN's normalized adjacency), then op
arguments. Both are linear in ``x`` with an adjoint that is the same op over ``A^T``, so the backward is one
more call of the op with the two CSRs swapped: on the same CSR for a symmetric graph (no transpose is built).
No gradient flows to the edge values (the normalized adjacency is a constant).
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
from torch import Tensor

from motorec.graph import MERGE_PATH_ITEMS, Graph
from motorec.ops._common import check_float_matrix, cpu_only, cuda_only

# Feature dtypes each compiled kernel serves (the CPU kernels have no half path; CUDA accumulates in float32).
C_CPU_DTYPES = (torch.float32, torch.float64)
CUDA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

GraphOperands = Tuple[Tensor, Tensor, Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]


def check_graph_input(graph: Graph, x: Tensor, *, square: bool = False) -> None:
    """Raise ``TypeError`` / ``ValueError`` naming the argument unless ``graph @ x`` is well formed."""
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


def graph_operands(graph: Graph, x: Tensor) -> GraphOperands:
    """``(rowptr, col, val, t_rowptr, t_col, t_val)`` for the raw ops: edge values in x's dtype (float32 for
    half/bf16 x, which the kernels accumulate in float32) and the CSR of ``A^T``, which only the backward reads
    (``None`` when symmetric, or when no gradient can reach ``x``: no transpose is built for a product without
    one)."""
    half = x.dtype in (torch.float16, torch.bfloat16)
    val = graph.val if half or graph.val.dtype == x.dtype else graph.val.to(x.dtype)
    if graph.symmetric or not (x.requires_grad and torch.is_grad_enabled()):
        return graph.rowptr, graph.col, val, None, None, None
    t = graph.transpose()
    t_val = t.val if t.val.dtype == val.dtype else t.val.to(val.dtype)
    return graph.rowptr, graph.col, val, t.rowptr, t.col, t_val


def select_inputs(graph: Graph, x: Tensor) -> dict:
    """The call metadata the dispatcher's checks read (device, dtype, sizes)."""
    return dict(device=x.device.type, dtype=x.dtype, rows=graph.num_rows, nnz=graph.nnz, dim=x.shape[1])


def c_cpu_check(**inputs):
    """Input check of the C++ CPU graph kernels."""
    r = cpu_only(**inputs)
    if r is None and inputs.get("dtype") not in (None,) + C_CPU_DTYPES:
        r = f"dtype {inputs['dtype']} not supported by the C++ CPU kernel (float32, float64)"
    return r


def c_cpu_auto_check(**inputs):
    """``auto`` passes over the C++ CPU kernels where they measured slower than torch CSR (MKL): narrow
    feature widths that are not a multiple of 4 (2, 3, 5, 6, 7, 9, ..., 15), which take the kernels' generic
    path. An explicit ``backend="cpu"`` still runs them."""
    d = inputs.get("dim")
    if d is not None and 1 < d < 16 and d % 4 != 0:
        return f"dim {d}: below 16 and not a multiple of 4, the C++ CPU kernel is slower than torch CSR (MKL)"
    return None


def cuda_check(**inputs):
    """Input check of the CUDA graph kernels."""
    r = cuda_only(**inputs)
    if r is None and inputs.get("dtype") not in (None,) + CUDA_DTYPES:
        r = f"dtype {inputs['dtype']} not supported by the CUDA kernel"
    return r


# The CUDA kernel family: "merge" (equal work per thread group on the CSR's merge path, the default) or "row"
# (rows by lane groups, heavy rows in segments of MOTOREC_CUDA_SEGMENT edges). H200, 2026-11-30
# (benchmarks/results/cuda-segment-sweep-h200.csv), forward ms against cuSPARSE: SpMM at 54k nodes / 553k edges
# merge 0.071, row 0.127, cuSPARSE 0.068; at 1.5M nodes / 36.5M edges merge 2.91 (256 items: 2.68), row 2.94,
# cuSPARSE 3.40; 3-layer propagation at 54k merge 0.221, row 0.368.
_CUDA_KERNELS = ("merge", "row")
_MERGE_ITEMS_RANGE = (16, 1 << 16)


def cuda_kernel() -> str:
    """``MOTOREC_CUDA_SPMM`` (``merge`` | ``row``; default ``merge``), checked."""
    k = os.environ.get("MOTOREC_CUDA_SPMM", "merge").strip().lower() or "merge"
    if k not in _CUDA_KERNELS:
        raise ValueError(f"MOTOREC_CUDA_SPMM must be one of {', '.join(_CUDA_KERNELS)}, got {k!r}")
    return k


def merge_items() -> int:
    """``MOTOREC_CUDA_MERGE_ITEMS`` (path items per thread group, 16 to 65536) or
    :data:`motorec.graph.MERGE_PATH_ITEMS`, checked."""
    raw = os.environ.get("MOTOREC_CUDA_MERGE_ITEMS")
    if raw is None or not raw.strip():
        return MERGE_PATH_ITEMS
    lo, hi = _MERGE_ITEMS_RANGE
    try:
        items = int(raw)
    except ValueError:
        items = -1
    if not lo <= items <= hi:
        raise ValueError(f"MOTOREC_CUDA_MERGE_ITEMS must be an integer in [{lo}, {hi}], got {raw!r}")
    return items


def register_transpose_autograd(op) -> None:
    """Autograd for a raw graph op ``op(rowptr, col, val, x, t_rowptr, t_col, t_val, *args)`` linear in ``x``:
    ``grad_x = op(A^T CSR, grad, A CSR, *args)``, i.e. the same CSR again when ``t_rowptr`` is ``None``."""

    def setup(ctx, inputs, output):
        rowptr, col, val, _x, t_rowptr, t_col, t_val, *args = inputs
        ctx.args = tuple(args)
        ctx.symmetric = t_rowptr is None
        if ctx.symmetric:
            ctx.save_for_backward(rowptr, col, val)
        else:
            ctx.save_for_backward(rowptr, col, val, t_rowptr, t_col, t_val)

    def backward(ctx, grad):
        if ctx.symmetric:
            rowptr, col, val = ctx.saved_tensors
            gx = op(rowptr, col, val, grad, None, None, None, *ctx.args)
        else:
            rowptr, col, val, t_rowptr, t_col, t_val = ctx.saved_tensors
            gx = op(t_rowptr, t_col, t_val, grad, rowptr, col, val, *ctx.args)
        return (None, None, None, gx, None, None, None) + (None,) * len(ctx.args)

    op.register_autograd(backward, setup_context=setup)


class _GraphOpEager(torch.autograd.Function):
    """A raw graph op's kernel without the custom-op dispatch (:mod:`motorec.ops._eager`), with the same
    autograd as :func:`register_transpose_autograd`: ``grad_x`` is this Function again over ``A^T`` (the same
    CSR when symmetric), so double backward works as through the op."""

    @staticmethod
    def forward(ctx, kernel, x, rowptr, col, val, t_rowptr, t_col, t_val, args):
        ctx.kernel, ctx.args, ctx.symmetric = kernel, args, t_rowptr is None
        if ctx.symmetric:
            ctx.save_for_backward(rowptr, col, val)
        else:
            ctx.save_for_backward(rowptr, col, val, t_rowptr, t_col, t_val)
        return kernel(rowptr, col, val, x.contiguous(), *args)

    @staticmethod
    def backward(ctx, grad):
        if ctx.symmetric:
            rowptr, col, val = ctx.saved_tensors
            gx = _GraphOpEager.apply(ctx.kernel, grad, rowptr, col, val, None, None, None, ctx.args)
        else:
            rowptr, col, val, t_rowptr, t_col, t_val = ctx.saved_tensors
            gx = _GraphOpEager.apply(ctx.kernel, grad, t_rowptr, t_col, t_val, rowptr, col, val, ctx.args)
        return None, gx, None, None, None, None, None, None, None


def graph_op_eager(kernel, rowptr: Tensor, col: Tensor, val: Tensor, x: Tensor, t_rowptr: Optional[Tensor],
                   t_col: Optional[Tensor], t_val: Optional[Tensor], *args) -> Tensor:
    """``kernel(rowptr, col, val, x, *args)`` with the raw graph op's autograd, outside the dispatcher."""
    return _GraphOpEager.apply(kernel, x, rowptr, col, val, t_rowptr, t_col, t_val, tuple(args))
