"""``motorec.ops.propagate``: the multi-layer LightGCN readout ``mean(x, Ax, ..., A^L x)``.

Custom op ``motorec::propagate``. Its backward is the same readout over ``A^T`` applied to the incoming
gradient (``d/dx mean_l A^l x = mean_l (A^T)^l``), so for LightGCN's symmetric adjacency the backward is one
more forward on the same CSR: no transpose is ever built.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from motorec import _ext
from motorec._dispatch import Backend, dispatcher
from motorec.graph import Graph
from motorec.ops.spmm import _cpu_auto_check, _cpu_check, _cuda_check, check_graph_input, graph_operands
from motorec.reference import propagate as _ref

_D = dispatcher("propagate")


def _c_propagate(rowptr, col, val, x, num_layers):
    return torch.ops.motorec_C.propagate(rowptr, col, val, x, num_layers)


_D.register(Backend("cuda", _c_propagate, _ext.C_CUDA_REASON or None, _cuda_check,
                    note="fused multi-layer CUDA propagation (motorec._C)"))
_D.register(Backend("cpu", _c_propagate,
                    None if _ext.c_has_op("propagate") else (_ext.C_REASON or "motorec._C has no propagate"),
                    _cpu_check, auto_check=_cpu_auto_check,
                    note="fused multi-layer OpenMP propagation (motorec._C)"))
_D.register(Backend("triton", None, "no Triton propagation kernel: the C++/CUDA kernels cover every device"))
_D.register(Backend("torch", _ref.propagate, None, None, note="L torch CSR matmuls, summed (reference)"))


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
    return _D.impl(backend)(rowptr, col, val, x.contiguous(), num_layers)


@propagate_op.register_fake
def _(rowptr, col, val, x, t_rowptr, t_col, t_val, num_layers, backend):
    torch._check(x.dim() == 2, lambda: f"x must be 2-D, got {x.dim()}-D")
    torch._check(num_layers >= 0, lambda: f"num_layers must be >= 0, got {num_layers}")
    torch._check(rowptr.shape[0] - 1 == x.shape[0], lambda: "propagate needs a square graph with x rows = nodes")
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    rowptr, col, val, x, t_rowptr, t_col, t_val, num_layers, backend = inputs
    ctx.backend, ctx.num_layers, ctx.symmetric = backend, num_layers, t_rowptr is None
    if ctx.symmetric:
        ctx.save_for_backward(rowptr, col, val)
    else:
        ctx.save_for_backward(rowptr, col, val, t_rowptr, t_col, t_val)


def _backward(ctx, grad):
    saved = ctx.saved_tensors
    if ctx.symmetric:
        rowptr, col, val = saved
        gx = propagate_op(rowptr, col, val, grad, None, None, None, ctx.num_layers, ctx.backend)
    else:
        rowptr, col, val, t_rowptr, t_col, t_val = saved
        gx = propagate_op(t_rowptr, t_col, t_val, grad, rowptr, col, val, ctx.num_layers, ctx.backend)
    return None, None, None, gx, None, None, None, None, None


propagate_op.register_autograd(_backward, setup_context=_setup)


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
    name = _D.select(backend, device=x.device.type, dtype=x.dtype, rows=graph.num_rows, nnz=graph.nnz,
                     dim=x.shape[1])
    rowptr, col, val, t_rowptr, t_col, t_val = graph_operands(graph, x)
    return propagate_op(rowptr, col, val, x, t_rowptr, t_col, t_val, num_layers, name)
