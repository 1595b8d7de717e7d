"""Reference LightGCN readout (``motorec::propagate``'s ``torch`` backend).

Shapes:
    A: square CSR [n, n] (rowptr [n + 1], col [nnz], val [nnz]), x: [n, D], num_layers: L >= 0
    -> out: [n, D] = (x + A x + A^2 x + ... + A^L x) / (L + 1)
"""
from __future__ import annotations

import torch
from torch import Tensor

from motorec.reference.spmm import spmm


def propagate(rowptr: Tensor, col: Tensor, val: Tensor, x: Tensor, num_layers: int) -> Tensor:
    # Half/bf16 inputs accumulate the layer sum in float32, as the compiled kernels do.
    acc = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x.clone()
    h = x
    for _ in range(num_layers):
        h = spmm(rowptr, col, val, h)
        acc = acc + h
    return (acc / (num_layers + 1)).to(x.dtype)
