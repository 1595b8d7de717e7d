"""Reference per-codeword mean soft assignment (``motorec::code_usage``'s ``torch`` backend).

Per level k = 0..L-1, with the residual input rebuilt from the tokens (``r^(-1)`` is ``z_e`` itself):
    r_k      = z_e - sum_{k' < k} C_{k'}[codes[:, k']]
    s_ij     = (2 r_i . c_j - ||c_j||^2) / T               (= (||r_i||^2 - ||r_i - c_j||^2) / T)
    softmax: p_ij = softmax_j(s_ij) = softmax_j(-||r_i - c_j||^2 / T)         (||r_i||^2 cancels)
    sigmoid: p_ij = sigmoid(s_ij - mean_j' s_ij') = sigmoid((mean_j' d_ij' - d_ij) / T), d = ||r - c||^2
    rho[k, j] = (1 / N) sum_i p_ij                         (0 for every code when N == 0)

This is ``RQVAE.soft_assignments(z_e, codes).mean(1)`` (motorec/nn/rqvae.py) in value; the fused backends
never build ``d`` (they form ``s`` from ``r . c`` tiles), so the ``clamp_min(0)`` that guards rounding in
``soft_assignments`` has no counterpart (it only acts where rounding makes ``d`` negative).

Gradients flow to ``z_e`` and to the codebooks, through the distances and through the residual construction;
``codes`` are integers (no gradient). With ``G = d loss / d rho`` and ``e_ij = d loss / d s_ij``:
    softmax: e_ij = p_ij (G_j - sum_j' p_ij' G_j') / N
    sigmoid: h_ij = G_j p_ij (1 - p_ij) / N,  e_ij = h_ij - (1 / K) sum_j' h_ij'
    d r_i = (2 / T) sum_j e_ij c_j,   d c_j += (2 / T) sum_i e_ij (r_i - c_j)
    and the residual chain: d z_e = sum_k d r_k,  d C_{k'}[codes[i, k']] -= sum_{k > k'} d r_k[i].

Auxiliary output ``aux`` [N, L] (saved for the backward, not differentiable): the row's ``logsumexp_j s_ij``
(softmax) or ``mean_j s_ij`` (sigmoid), so that ``p_ij`` is recomputable from one ``s`` tile.

Shapes:
    z_e: [N, D] float, codes: [N, L] int64, codebooks: [L, K, D] dtype of z_e
    -> rho [L, K] float32 (float64 for float64 inputs), aux [N, L] same dtype as rho.

This path materializes [N, K] tensors per level; the C++ and Triton kernels never do.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

MODES = ("softmax", "sigmoid")


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _level_probs(z_e: Tensor, codes: Tensor, codebooks: Tensor, temperature: float,
                 mode: str) -> Tuple[List[Tensor], List[Tensor]]:
    """Per level: p [N, K] and aux [N], in the accumulation dtype, differentiable in z_e and codebooks."""
    acc = _acc_dtype(z_e.dtype)
    r = z_e.to(acc)
    cb = codebooks.to(acc)
    probs, aux = [], []
    for k in range(cb.shape[0]):
        c = cb[k]
        s = (2.0 * (r @ c.t()) - (c * c).sum(1)) / temperature
        if mode == "softmax":
            a = torch.logsumexp(s, dim=1)
            p = torch.exp(s - a.unsqueeze(1))
        else:
            a = s.mean(1)
            p = torch.sigmoid(s - a.unsqueeze(1))
        probs.append(p)
        aux.append(a)
        r = r - c.index_select(0, codes[:, k])
    return probs, aux


def code_usage_forward(z_e: Tensor, codes: Tensor, codebooks: Tensor, temperature: float,
                       mode: str) -> Tuple[Tensor, Tensor]:
    """``(rho [L, K], aux [N, L])``; see the module docstring."""
    n = z_e.shape[0]
    probs, aux = _level_probs(z_e, codes.long(), codebooks, temperature, mode)
    rho = torch.stack([p.sum(0) for p in probs]) / max(n, 1)
    return rho, torch.stack(aux, 1)


def code_usage_backward(grad_rho: Tensor, z_e: Tensor, codes: Tensor, codebooks: Tensor, aux: Tensor,
                        temperature: float, mode: str) -> Tuple[Tensor, Tensor]:
    """``(grad_z_e [N, D] z_e.dtype, grad_codebooks [L, K, D] codebooks.dtype)`` by the formulas of the module
    docstring (explicit: a custom op's implementation runs below autograd). ``aux`` is not needed here (the
    probabilities are recomputed); the fused backends use it."""
    acc = _acc_dtype(z_e.dtype)
    n = z_e.shape[0]
    codes = codes.long()
    cb = codebooks.to(acc)
    g = grad_rho.to(acc)
    probs, _ = _level_probs(z_e, codes, codebooks, temperature, mode)
    grad_cb = torch.zeros_like(cb)
    grad_r = []
    r = z_e.to(acc)
    scale = 2.0 / temperature
    for k, p in enumerate(probs):
        c = cb[k]
        if mode == "softmax":
            e = p * (g[k] - (p * g[k]).sum(1, keepdim=True)) / max(n, 1)
        else:
            h = g[k] * p * (1.0 - p) / max(n, 1)
            e = h - h.mean(1, keepdim=True)
        grad_r.append(scale * (e @ c))
        grad_cb[k] = scale * (e.t() @ r - e.sum(0).unsqueeze(1) * c)
        r = r - c.index_select(0, codes[:, k])
    # Residual chain: r_k = z_e - sum_{k' < k} C_{k'}[codes[:, k']].
    chain = torch.zeros_like(r)
    for k in range(len(probs) - 1, -1, -1):
        chain = chain + grad_r[k]
        if k > 0:
            grad_cb[k - 1].index_add_(0, codes[:, k - 1], -chain)
    return chain.to(z_e.dtype), grad_cb.to(codebooks.dtype)
