"""Reference CSR sparse x dense product (``motorec::spmm``'s ``torch`` backend).

Shapes:
    rowptr: [R + 1] int32 or int64, col: [nnz] int32 or int64, val: [nnz] float,
    x: [C, D] -> out: [R, D] with ``out[r] = sum_e val[e] * x[col[e]]`` over ``rowptr[r] <= e < rowptr[r+1]``.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

_CSR_DTYPES = (torch.float32, torch.float64)


def spmm(rowptr: Tensor, col: Tensor, val: Tensor, x: Tensor) -> Tensor:
    """``A @ x`` through torch's CSR sparse matmul (MKL on CPU, cuSPARSE on CUDA).

    Half and bfloat16 inputs, which torch CSR does not support on every device, are computed in float32
    and cast back, which is also what the compiled kernels do (float32 accumulation).
    """
    num_rows = rowptr.numel() - 1
    out_dtype = x.dtype
    work = x if x.dtype in _CSR_DTYPES else x.float()
    v = val.to(work.dtype)
    if col.numel() == 0 or x.shape[1] == 0:
        return x.new_zeros((num_rows, x.shape[1]))
    a = torch.sparse_csr_tensor(rowptr.long(), col.long(), v, (num_rows, x.shape[0]), check_invariants=False)
    return (a @ work).to(out_dtype)


def spmm_coo(rowptr: Tensor, col: Tensor, val: Tensor, x: Tensor) -> Tensor:
    """``A @ x`` through a COO ``torch.sparse.mm``, as MMRec and RecBole run LightGCN (benchmark provider)."""
    num_rows = rowptr.numel() - 1
    row = torch.repeat_interleave(torch.arange(num_rows, device=rowptr.device), rowptr.diff())
    work = x if x.dtype in _CSR_DTYPES else x.float()
    a = torch.sparse_coo_tensor(torch.stack([row, col.long()]), val.to(work.dtype), (num_rows, x.shape[0]),
                                check_invariants=False)
    return torch.sparse.mm(a, work).to(x.dtype)


def spmm_gather(rowptr: Tensor, col: Tensor, val: Tensor, x: Tensor) -> Tensor:
    """``A @ x`` as gather + ``index_add_`` (PyG-style message passing); works for any dtype and device."""
    num_rows = rowptr.numel() - 1
    row = torch.repeat_interleave(torch.arange(num_rows, device=rowptr.device), rowptr.diff())
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    msg = x.index_select(0, col.long()).to(acc) * val.to(acc).unsqueeze(1)
    out = torch.zeros((num_rows, x.shape[1]), dtype=acc, device=x.device)
    out.index_add_(0, row, msg)
    return out.to(x.dtype)
