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


def _lowest_duplicate(c: Tensor, *, chunk_elems: int = 1 << 24) -> Tensor:
    """[K] int64: for each codeword, the lowest index of a codeword equal to it. BLAS may round the products
    with identical columns differently, so argmin alone does not give duplicated codewords' lowest index.

    Built from a K x K equality map (row chunks of at most ``chunk_elems`` compared elements) instead of
    ``torch.unique``: no data-dependent shape, so no host sync on CUDA and nothing for ``torch.compile`` to
    break its graph on. A NaN codeword equals no codeword, itself included, and maps to itself.
    """
    k, d = c.shape
    ar = torch.arange(k, device=c.device)
    rows = max(1, chunk_elems // max(k * d, 1))
    parts = []
    for s in range(0, k, rows):
        eq = (c[s:s + rows, None, :] == c[None, :, :]).all(-1)  # [rows, K]
        parts.append(torch.where(eq, ar, k).amin(1))
    first = torch.cat(parts) if parts else ar
    return torch.minimum(first, ar)


def _nearest(r: Tensor, c: Tensor) -> Tensor:
    """[N] int64 argmin_j ||r - c_j||^2, ties (duplicated codewords) to the lowest index."""
    if r.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=r.device)
    # ||r||^2 is constant per row and does not change the argmin; leaving it out keeps the distance
    # matrix from cancelling catastrophically when r is far from the origin.
    d = (c * c).sum(1).unsqueeze(0) - 2.0 * (r @ c.t())
    return _lowest_duplicate(c).index_select(0, torch.argmin(d, dim=1))


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
        idx = _nearest(r, c)
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


def residual_quantize_autograd(x: Tensor, codebooks: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`residual_quantize_forward` written so that plain autograd gives the op's gradients (those of
    :func:`residual_quantize_backward`): what a user of torch alone would train with, and what the
    ``torch_compile`` training-step benchmark compiles (forward and backward through AOTAutograd).

    Outputs are bit-identical to :func:`residual_quantize_forward`: the gradient paths are added as exact
    zeros (``x - x.detach()``, ``q - q.detach()``), and each level's search input is detached, which is
    ResidualVQ's level-local loss.

    Shapes:
        x: [N, D] float, codebooks: [L, K, D] -> codes [N, L] int64, quantized [N, D], residual_sq [N, L].
    """
    acc = _acc_dtype(x.dtype)
    n, _ = x.shape
    num_levels = codebooks.shape[0]
    xa = x.to(acc)
    cb = codebooks.to(acc)
    through_x = xa - xa.detach()  # exactly 0; d/dx = identity
    r = xa.detach()
    q = torch.zeros_like(xa)
    codes, res_sq = [], []
    for k in range(num_levels):
        c = cb[k]
        idx = _nearest(r, c.detach())
        chosen = c.index_select(0, idx)
        rk = (r - chosen) + through_x
        res_sq.append((rk * rk).sum(1))
        codes.append(idx)
        q = q + chosen
        r = rk.detach()
    quantized = ((xa.detach() - r) + (q - q.detach())).to(x.dtype)
    if num_levels == 0:
        return (torch.empty((n, 0), dtype=torch.int64, device=x.device), quantized,
                torch.empty((n, 0), dtype=acc, device=x.device))
    return torch.stack(codes, 1), quantized, torch.stack(res_sq, 1)
