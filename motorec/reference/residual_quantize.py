"""Reference residual quantization (``motorec::residual_quantize``'s ``torch`` backend).

Forward, per level k = 0..L-1 (r^(-1) = x):
    codes[:, k]       = argmin_j ||r^(k-1) - C_k[j]||^2   (ties: lowest j)
    r^(k)             = r^(k-1) - C_k[codes[:, k]]
    residual_sq[:, k] = ||r^(k)||^2                       (the winning squared distance)
    quantized         = sum_k C_k[codes[:, k]] = x - r^(L-1)

Gradients (what ``motorec::residual_quantize`` defines; the codes are piecewise constant in x):
    quantized    -> codebooks: dC_k[j] += sum_{i: codes[i,k]=j} g_q[i];  no gradient to x.
    residual_sq  -> level-local loss gradient, as in ResidualVQ, which detaches the quantized residual
                    between levels: d/dx = sum_k 2 g_r[:, k] r^(k);  dC_k[codes[:, k]] -= 2 g_r[:, k] r^(k).
    So ``residual_sq.mean(0).sum()`` is, in value, both the codebook loss and the commitment loss of an
    RQ-VAE; its gradient reaches the codebooks as the codebook loss's and x as the commitment loss's.

Shapes:
    x: [N, D] float, codebooks: [L, K, D] same dtype
    -> codes [N, L] int64, quantized [N, D] x.dtype, residual_sq [N, L] float32 (float64 for float64 x)

This path materializes an [N, K] distance matrix per level; the Triton and C++ kernels never do.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _lowest_duplicate(c: Tensor) -> Tensor:
    """[K] int64: for each codeword, the lowest index of a codeword equal to it. BLAS may round the products
    with identical columns differently, so argmin alone does not give duplicated codewords' lowest index."""
    k = c.shape[0]
    _, inv = torch.unique(c, dim=0, return_inverse=True)
    ar = torch.arange(k, device=c.device)
    first = torch.full((k,), k, dtype=torch.int64, device=c.device).scatter_reduce_(0, inv, ar, "amin")
    return first[inv]


def residual_quantize_forward(x: Tensor, codebooks: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    acc = _acc_dtype(x.dtype)
    n, _ = x.shape
    num_levels = codebooks.shape[0]
    r = x.to(acc)
    cb = codebooks.to(acc)
    codes = torch.empty((n, num_levels), dtype=torch.int64, device=x.device)
    res_sq = torch.empty((n, num_levels), dtype=acc, device=x.device)
    for k in range(num_levels):
        c = cb[k]
        # ||r||^2 is constant per row and does not change the argmin; leaving it out keeps the distance
        # matrix from cancelling catastrophically when r is far from the origin.
        d = (c * c).sum(1).unsqueeze(0) - 2.0 * (r @ c.t())
        idx = torch.argmin(d, dim=1) if n > 0 else torch.empty(0, dtype=torch.int64, device=x.device)
        idx = _lowest_duplicate(c)[idx]
        codes[:, k] = idx
        r = r - c.index_select(0, idx)
        res_sq[:, k] = (r * r).sum(1)
    quantized = (x.to(acc) - r).to(x.dtype)
    return codes, quantized, res_sq


def residual_quantize_backward(
    grad_quantized: Tensor, grad_residual_sq: Tensor, x: Tensor, codebooks: Tensor, codes: Tensor
) -> Tuple[Tensor, Tensor]:
    acc = _acc_dtype(x.dtype)
    num_levels, k_size, dim = codebooks.shape
    cb = codebooks.to(acc)
    gq = grad_quantized.to(acc)
    gr = grad_residual_sq.to(acc)
    r = x.to(acc)
    grad_x = torch.zeros_like(r)
    grad_cb = torch.zeros((num_levels, k_size, dim), dtype=acc, device=x.device)
    for k in range(num_levels):
        idx = codes[:, k]
        r = r - cb[k].index_select(0, idx)
        t = 2.0 * gr[:, k : k + 1] * r
        grad_x += t
        grad_cb[k].index_add_(0, idx, gq - t)
    return grad_x.to(x.dtype), grad_cb.to(codebooks.dtype)
