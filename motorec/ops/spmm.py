"""``motorec.ops.spmm``: sparse (CSR) x dense product, the building block of graph propagation.

Custom op ``motorec::spmm`` with a fake kernel and autograd (:mod:`motorec.ops._graph`). The gradient with
respect to ``x`` is ``A^T @ grad``: the same CSR when the graph is symmetric (LightGCN's normalized adjacency),
else the graph's cached transpose. No gradient flows to the edge values (the normalized adjacency is a
constant).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from motorec import _ext
from motorec._dispatch import Backend, dispatcher
from motorec.graph import Graph, cached_merge_path
from motorec.ops._eager import eager
from motorec.ops._graph import (
    c_cpu_auto_check,
    c_cpu_check,
    check_graph_input,
    cuda_check,
    cuda_kernel,
    graph_op_eager,
    graph_operands,
    merge_items,
    register_transpose_autograd,
    select_inputs,
)
from motorec.reference import spmm as reference

_D = dispatcher("spmm")


def _c_spmm(rowptr, col, val, x):
    return torch.ops.motorec_C.spmm(rowptr, col, val, x)


def _cuda_spmm(rowptr, col, val, x):
    """The CUDA kernel that ``MOTOREC_CUDA_SPMM`` names: the merge path (default; partition cached per graph)
    or the row kernel."""
    if cuda_kernel() == "row":
        return torch.ops.motorec_C.spmm(rowptr, col, val, x)
    mp = cached_merge_path(rowptr, merge_items())
    return torch.ops.motorec_C.spmm_merge(rowptr, col, val, x, mp.coords, mp.split_rows)


_D.register(Backend("cuda", forward=_cuda_spmm, static_reason=_ext.C_CUDA_REASON or None, input_check=cuda_check,
                    note="CUDA CSR SpMM on the merge path (motorec._C; MOTOREC_CUDA_SPMM=row for the row kernel)"))
_D.register(Backend("cpu", forward=_c_spmm,
                    static_reason=None if _ext.c_has_op("spmm") else (_ext.C_REASON or "motorec._C has no spmm"),
                    input_check=c_cpu_check, auto_check=c_cpu_auto_check, note="C++ OpenMP CSR SpMM (motorec._C)"))
_D.register(Backend("triton", static_reason="no Triton SpMM kernel: the C++/CUDA kernels cover every device "
                    "(a Triton SpMM is kept only where a benchmark shows it winning)"))
_D.register(Backend("torch", forward=reference.spmm, note="torch CSR sparse matmul (MKL / cuSPARSE) reference"))


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
    return _D.forward(backend)(rowptr, col, val, x.contiguous())


@spmm_op.register_fake
def _(rowptr, col, val, x, t_rowptr, t_col, t_val, backend):
    torch._check(x.dim() == 2, lambda: f"x must be 2-D, got {x.dim()}-D")
    torch._check(col.shape == val.shape, lambda: "col and val must have the same shape")
    return x.new_empty((rowptr.shape[0] - 1, x.shape[1]))


register_transpose_autograd(spmm_op)


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
    name = _D.select(backend, **select_inputs(graph, x))
    rowptr, col, val, t_rowptr, t_col, t_val = graph_operands(graph, x)
    if eager(x, rowptr, col, val, t_rowptr, t_col, t_val):
        return graph_op_eager(_D.forward(name), rowptr, col, val, x, t_rowptr, t_col, t_val)
    return spmm_op(rowptr, col, val, x, t_rowptr, t_col, t_val, name)
