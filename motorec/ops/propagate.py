"""``motorec.ops.propagate``: the multi-layer LightGCN readout ``mean(x, Ax, ..., A^L x)``.

Custom op ``motorec::propagate``. Its backward is the same readout over ``A^T`` applied to the incoming
gradient (``d/dx mean_l A^l x = mean_l (A^T)^l``), so for LightGCN's symmetric adjacency the backward is one
more forward on the same CSR: no transpose is ever built (:mod:`motorec.ops._graph`).
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
from motorec.reference import propagate as reference

_D = dispatcher("propagate")


def _c_propagate(rowptr, col, val, x, num_layers):
    return torch.ops.motorec_C.propagate(rowptr, col, val, x, num_layers)


def _cuda_propagate(rowptr, col, val, x, num_layers):
    """The CUDA kernel that ``MOTOREC_CUDA_SPMM`` names: the merge path (default; partition cached per graph)
    or the row kernel."""
    if cuda_kernel() == "row":
        return torch.ops.motorec_C.propagate(rowptr, col, val, x, num_layers)
    mp = cached_merge_path(rowptr, merge_items())
    return torch.ops.motorec_C.propagate_merge(rowptr, col, val, x, mp.coords, mp.split_rows, num_layers)


_D.register(Backend("cuda", forward=_cuda_propagate, static_reason=_ext.C_CUDA_REASON or None, input_check=cuda_check,
                    note="fused multi-layer CUDA propagation on the merge path (motorec._C; MOTOREC_CUDA_SPMM=row for the row kernel)"))
_D.register(Backend("cpu", forward=_c_propagate,
                    static_reason=None if _ext.c_has_op("propagate")
                    else (_ext.C_REASON or "motorec._C has no propagate"),
                    input_check=c_cpu_check, auto_check=c_cpu_auto_check,
                    note="fused multi-layer OpenMP propagation (motorec._C)"))
_D.register(Backend("triton", static_reason="no Triton propagation kernel: the C++/CUDA kernels cover every device"))
_D.register(Backend("torch", forward=reference.propagate, note="L torch CSR matmuls, summed (reference)"))


@torch.library.custom_op("motorec::propagate", mutates_args=())
def propagate_op(
    rowptr: Tensor,
    col: Tensor,
    val: Tensor,
    x: Tensor,
    t_rowptr: Optional[Tensor],
    t_col: Optional[Tensor],
    t_val: Optional[Tensor],
    num_layers: int,
    backend: str,
) -> Tensor:
    """Raw op: ``mean_{l=0..L} A^l x``; ``t_*`` is the CSR of ``A^T`` (``None``: symmetric)."""
    return _D.forward(backend)(rowptr, col, val, x.contiguous(), num_layers)


@propagate_op.register_fake
def _(rowptr, col, val, x, t_rowptr, t_col, t_val, num_layers, backend):
    torch._check(x.dim() == 2, lambda: f"x must be 2-D, got {x.dim()}-D")
    torch._check(num_layers >= 0, lambda: f"num_layers must be >= 0, got {num_layers}")
    torch._check(rowptr.shape[0] - 1 == x.shape[0], lambda: "propagate needs a square graph with x rows = nodes")
    return torch.empty_like(x, memory_format=torch.contiguous_format)


register_transpose_autograd(propagate_op)


def propagate(graph: Graph, x: Tensor, num_layers: int, backend: str = "auto") -> Tensor:
    """LightGCN readout over ``num_layers`` propagation layers: ``(x + Ax + ... + A^L x) / (L + 1)``.

    Args:
        graph: a square :class:`motorec.Graph` [n, n] (e.g. ``Graph.from_interactions``).
        x: [n, D] float tensor on the graph's device (any strides).
        num_layers: L >= 0 (L = 0 returns a copy of x).
        backend: ``auto`` (default; ``MOTOREC_BACKEND`` if set) or one of ``torch | cpu | cuda``.

    Shapes:
        x: [n, D] -> out: [n, D], dtype of x (float32 accumulation for half/bf16).
    """
    check_graph_input(graph, x, square=True)
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 0:
        raise ValueError(f"num_layers must be an int >= 0, got {num_layers!r}")
    name = _D.select(backend, **select_inputs(graph, x))
    rowptr, col, val, t_rowptr, t_col, t_val = graph_operands(graph, x)
    if eager(x, rowptr, col, val, t_rowptr, t_col, t_val):
        return graph_op_eager(_D.forward(name), rowptr, col, val, x, t_rowptr, t_col, t_val, num_layers)
    return propagate_op(rowptr, col, val, x, t_rowptr, t_col, t_val, num_layers, name)
