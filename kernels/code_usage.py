"""Triton kernels for ``motorec::code_usage`` (forward and backward), installed as ``motorec.kernels``.

Definition and gradients: :mod:`motorec.reference.code_usage`. One program per block of ``BLOCK_N`` rows runs all
``L`` levels; the residual input of each level is rebuilt from ``z_e`` and the tokens in registers. Logits
``s = (2 r.c - ||c||^2) / T`` come from ``tl.dot`` tiles of ``BLOCK_K`` codewords (``||r||^2`` cancels); no
[N, K] tensor is ever written.

Forward: softmax mode makes two passes over the K tiles, an online max/sum giving the row's logsumexp, then
``p = exp(s - lse)``; sigmoid mode needs one pass, the row mean of ``s`` being ``(2 r.mean(c) - mean ||c||^2)/T``.
Each tile's column sums of ``p`` go to an [L, K] float32 buffer with one atomic add per codeword and program.
The row statistic (``aux`` [N, L]) is saved for the backward.

Backward: levels in reverse order, two passes over the K tiles per level: the row sum ``beta`` (softmax:
``sum_j p G_j``; sigmoid: ``sum_j G_j p (1 - p) / K``), then ``e = d loss / d s`` tile by tile, giving
``d r += e C`` (``tl.dot``), the codebook term ``e^T R`` and the column sums of ``e`` (atomics into [L, K, D] and
[L, K]). The running sum of ``d r`` over the later levels is the residual chain: it is subtracted (per-row
atomics) from the codeword the row chose at the level before, and at level 0 it is ``d z_e``. The ``- c_j sum_i
e_ij`` term is applied once in torch at the end.

Shapes:
    z_e [N, D] float32 | float16 | bfloat16 (D <= 256), codes [N, L] int64, codebooks [L, K, D] dtype of z_e
    -> rho [L, K] float32, aux [N, L] float32. Backward: grad_rho [L, K] -> grad_z_e [N, D], grad_codebooks.

Numerics: float32 arithmetic; ``precision`` is the ``tl.dot`` mode (``tf32x3`` by default on GPUs, or
``MOTOREC_CU_PRECISION``; ``ieee`` under ``TRITON_INTERPRET=1``). The atomics make the sums' order, and so the
last bits, vary between runs on a GPU.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_PRECISIONS = ("tf32x3", "tf32", "ieee")
MAX_D = 256


@triton.jit
def _residual(z, codes_ptr, cb_ptr, rows, rmask, dcols, m2, lvl, D: tl.constexpr, K: tl.constexpr,
              L: tl.constexpr):
    # r = z - C_0[codes[:, 0]] - ... - C_{lvl-1}[codes[:, lvl-1]], subtracted in level order (as the reference).
    r = z
    for m in range(0, lvl):
        code = tl.load(codes_ptr + rows * L + m, mask=rmask, other=0)
        c = tl.load(cb_ptr + (m * K + code)[:, None] * D + dcols[None, :], mask=m2, other=0.0).to(tl.float32)
        r = r - c
    return r


@triton.jit
def _logits(r, cbl, cn_ptr, lvl, k0, kk, dcols, dmask, inv_t, D: tl.constexpr, K: tl.constexpr,
            PRECISION: tl.constexpr):
    kidx = k0 + kk
    kmask = kidx < K
    c = tl.load(cbl + kidx[:, None] * D + dcols[None, :], mask=kmask[:, None] & dmask[None, :],
                other=0.0).to(tl.float32)
    cn = tl.load(cn_ptr + lvl * K + kidx, mask=kmask, other=0.0)
    s = (2.0 * tl.dot(r, tl.trans(c), input_precision=PRECISION) - cn[None, :]) * inv_t
    return s, c, kidx, kmask


@triton.jit
def _cu_fwd_kernel(
    z_ptr, codes_ptr, cb_ptr, cn_ptr, cbar_ptr, cnbar_ptr, rho_ptr, aux_ptr, N, inv_t,
    D: tl.constexpr, K: tl.constexpr, L: tl.constexpr, SOFTMAX: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = (pid * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    rmask = rows < N
    dcols = tl.arange(0, BLOCK_D)
    dmask = dcols < D
    m2 = rmask[:, None] & dmask[None, :]
    kk = tl.arange(0, BLOCK_K)
    r = tl.load(z_ptr + rows[:, None] * D + dcols[None, :], mask=m2, other=0.0).to(tl.float32)
    for lvl in range(L):
        cbl = cb_ptr + lvl * K * D
        if SOFTMAX:
            m_i = tl.full([BLOCK_N], float("-inf"), tl.float32)
            l_i = tl.zeros([BLOCK_N], dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                s, c, kidx, kmask = _logits(r, cbl, cn_ptr, lvl, k0, kk, dcols, dmask, inv_t, D, K, PRECISION)
                s = tl.where(kmask[None, :], s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, axis=1))
                l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(s - m_new[:, None]), axis=1)
                m_i = m_new
            a = m_i + tl.log(l_i)
        else:
            cbar = tl.load(cbar_ptr + lvl * D + dcols, mask=dmask, other=0.0)
            a = (2.0 * tl.sum(r * cbar[None, :], axis=1) - tl.load(cnbar_ptr + lvl)) * inv_t
        tl.store(aux_ptr + rows * L + lvl, a, mask=rmask)
        for k0 in range(0, K, BLOCK_K):
            s, c, kidx, kmask = _logits(r, cbl, cn_ptr, lvl, k0, kk, dcols, dmask, inv_t, D, K, PRECISION)
            q = s - a[:, None]
            if SOFTMAX:
                p = tl.exp(q)
            else:
                p = tl.sigmoid(q)
            p = tl.where(rmask[:, None] & kmask[None, :], p, 0.0)
            tl.atomic_add(rho_ptr + lvl * K + kidx, tl.sum(p, axis=0), mask=kmask, sem="relaxed")
        code = tl.load(codes_ptr + rows * L + lvl, mask=rmask, other=0)
        c = tl.load(cbl + code[:, None] * D + dcols[None, :], mask=m2, other=0.0).to(tl.float32)
        r = r - c


@triton.jit
def _cu_bwd_kernel(
    g_ptr, z_ptr, codes_ptr, cb_ptr, cn_ptr, aux_ptr, gz_ptr, gcb_ptr, col_ptr, N, inv_t, inv_n, out_scale,
    D: tl.constexpr, K: tl.constexpr, L: tl.constexpr, SOFTMAX: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = (pid * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    rmask = rows < N
    dcols = tl.arange(0, BLOCK_D)
    dmask = dcols < D
    m2 = rmask[:, None] & dmask[None, :]
    kk = tl.arange(0, BLOCK_K)
    z = tl.load(z_ptr + rows[:, None] * D + dcols[None, :], mask=m2, other=0.0).to(tl.float32)
    chain = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)  # sum of d r over the levels done so far (later ones)
    for t in range(L):
        lvl = L - 1 - t
        cbl = cb_ptr + lvl * K * D
        r = _residual(z, codes_ptr, cb_ptr, rows, rmask, dcols, m2, lvl, D, K, L)
        a = tl.load(aux_ptr + rows * L + lvl, mask=rmask, other=0.0)
        beta = tl.zeros([BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            s, c, kidx, kmask = _logits(r, cbl, cn_ptr, lvl, k0, kk, dcols, dmask, inv_t, D, K, PRECISION)
            g = tl.load(g_ptr + lvl * K + kidx, mask=kmask, other=0.0)
            q = s - a[:, None]
            if SOFTMAX:
                w = tl.exp(q) * g[None, :]
            else:
                p = tl.sigmoid(q)
                w = g[None, :] * p * (1.0 - p)
            beta += tl.sum(tl.where(kmask[None, :], w, 0.0), axis=1)
        if not SOFTMAX:
            beta = beta / K
        gr = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            s, c, kidx, kmask = _logits(r, cbl, cn_ptr, lvl, k0, kk, dcols, dmask, inv_t, D, K, PRECISION)
            g = tl.load(g_ptr + lvl * K + kidx, mask=kmask, other=0.0)
            q = s - a[:, None]
            if SOFTMAX:
                e = tl.exp(q) * (g[None, :] - beta[:, None])
            else:
                p = tl.sigmoid(q)
                e = g[None, :] * p * (1.0 - p) - beta[:, None]
            e = tl.where(rmask[:, None] & kmask[None, :], e * inv_n, 0.0)
            gr += tl.dot(e, c, input_precision=PRECISION)
            gct = tl.dot(tl.trans(e), r, input_precision=PRECISION)
            tl.atomic_add(gcb_ptr + (lvl * K + kidx)[:, None] * D + dcols[None, :], gct,
                          mask=kmask[:, None] & dmask[None, :], sem="relaxed")
            tl.atomic_add(col_ptr + lvl * K + kidx, tl.sum(e, axis=0), mask=kmask, sem="relaxed")
        chain += gr
        if lvl > 0:
            prev = tl.load(codes_ptr + rows * L + (lvl - 1), mask=rmask, other=0)
            tl.atomic_add(gcb_ptr + ((lvl - 1) * K + prev)[:, None] * D + dcols[None, :], -chain, mask=m2,
                          sem="relaxed")
    tl.store(gz_ptr + rows[:, None] * D + dcols[None, :], (chain * out_scale).to(gz_ptr.dtype.element_ty), mask=m2)


def _launch_config(d: int, k: int, backward: bool) -> Tuple[int, int, int, int, Optional[int]]:
    """``(BLOCK_N, BLOCK_K, BLOCK_D, num_warps, num_stages)``. Chosen offline for sm_90 at D = 64, K = 256 by
    ``benchmarks/compile_check.py`` (0 spills): the backward keeps four [rows, D] tiles live (z, r, d r and the
    chain) besides the logit tile, so it takes half the rows, 8 warps and no software pipelining."""
    block_d = max(16, triton.next_power_of_2(d))
    if backward:
        block_k = max(16, min(64, triton.next_power_of_2(k)))
        return (32 if block_d <= 64 else 16), block_k, block_d, 8, 1
    block_k = max(16, min(32, triton.next_power_of_2(k)))
    return (64 if block_d <= 64 else (32 if block_d <= 128 else 16)), block_k, block_d, 4, None


def _check(z_e: Tensor, codes: Tensor, codebooks: Tensor, temperature: float, mode: str) -> None:
    if z_e.dim() != 2 or codebooks.dim() != 3 or z_e.shape[1] != codebooks.shape[2]:
        raise ValueError(f"z_e must be [N, D] and codebooks [L, K, D]; got {tuple(z_e.shape)} and "
                         f"{tuple(codebooks.shape)}")
    if codes.dim() != 2 or tuple(codes.shape) != (z_e.shape[0], codebooks.shape[0]):
        raise ValueError(f"codes must be [N, L] = [{z_e.shape[0]}, {codebooks.shape[0]}], got {tuple(codes.shape)}")
    if z_e.dtype not in (torch.float32, torch.float16, torch.bfloat16) or codebooks.dtype != z_e.dtype:
        raise TypeError(f"z_e and codebooks must share a dtype among float32, float16, bfloat16; got {z_e.dtype} "
                        f"and {codebooks.dtype}")
    if z_e.shape[1] > MAX_D:
        raise ValueError(f"z_e has D={z_e.shape[1]} > {MAX_D}: the kernel keeps a block's residual in registers")
    if codebooks.shape[0] < 1 or codebooks.shape[1] < 1:
        raise ValueError(f"codebooks must have L >= 1 and K >= 1, got shape {tuple(codebooks.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if mode not in ("softmax", "sigmoid"):
        raise ValueError(f"mode must be 'softmax' or 'sigmoid', got {mode!r}")
    dev = z_e.device
    if codes.device != dev or codebooks.device != dev or (dev.type != "cuda" and not _INTERPRET):
        raise ValueError(f"z_e ({dev}), codes ({codes.device}) and codebooks ({codebooks.device}) must be on one "
                         "CUDA device (or on the CPU under TRITON_INTERPRET=1)")


def _precision(precision: Optional[str]) -> str:
    p = "ieee" if _INTERPRET else (precision or os.environ.get("MOTOREC_CU_PRECISION", "tf32x3"))
    if p not in _PRECISIONS:
        raise ValueError(f"precision must be one of {_PRECISIONS}, got {p!r}")
    return p


def code_usage_fwd(z_e: Tensor, codes: Tensor, codebooks: Tensor, temperature: float, mode: str, *,
                   precision: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """``(rho [L, K] float32, aux [N, L] float32)``; see the module docstring."""
    _check(z_e, codes, codebooks, temperature, mode)
    prec = _precision(precision)
    z_e, codebooks, codes = z_e.contiguous(), codebooks.contiguous(), codes.to(torch.int64).contiguous()
    n, d = z_e.shape
    num_levels, k, _ = codebooks.shape
    rho = torch.zeros((num_levels, k), dtype=torch.float32, device=z_e.device)
    aux = torch.empty((n, num_levels), dtype=torch.float32, device=z_e.device)
    if n == 0:
        return rho, aux
    cb32 = codebooks.float()
    cn = (cb32 * cb32).sum(-1).contiguous()  # [L, K]
    cbar = cb32.mean(1).contiguous()  # [L, D]
    cnbar = cn.mean(1).contiguous()  # [L]
    bn, bk, bd, warps, stages = _launch_config(d, k, backward=False)
    opts = {} if stages is None else {"num_stages": stages}
    _cu_fwd_kernel[(triton.cdiv(n, bn),)](
        z_e, codes, codebooks, cn, cbar, cnbar, rho, aux, n, 1.0 / temperature,
        D=d, K=k, L=num_levels, SOFTMAX=mode == "softmax", BLOCK_N=bn, BLOCK_K=bk, BLOCK_D=bd,
        PRECISION=prec, num_warps=warps, **opts,
    )
    return rho / n, aux


def code_usage_bwd(grad_rho: Tensor, z_e: Tensor, codes: Tensor, codebooks: Tensor, aux: Tensor,
                   temperature: float, mode: str, *, precision: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """``(grad_z_e [N, D] z_e.dtype, grad_codebooks [L, K, D] codebooks.dtype)`` of :func:`code_usage_fwd`."""
    _check(z_e, codes, codebooks, temperature, mode)
    prec = _precision(precision)
    n, d = z_e.shape
    num_levels, k, _ = codebooks.shape
    if tuple(grad_rho.shape) != (num_levels, k) or tuple(aux.shape) != (n, num_levels):
        raise ValueError(f"grad_rho must be [{num_levels}, {k}] and aux [{n}, {num_levels}]; got "
                         f"{tuple(grad_rho.shape)} and {tuple(aux.shape)}")
    z_e, codebooks, codes = z_e.contiguous(), codebooks.contiguous(), codes.to(torch.int64).contiguous()
    g = grad_rho.to(torch.float32).contiguous()
    aux = aux.to(torch.float32).contiguous()
    gcb = torch.zeros((num_levels, k, d), dtype=torch.float32, device=z_e.device)
    if n == 0:
        return torch.zeros_like(z_e), gcb.to(codebooks.dtype)
    col = torch.zeros((num_levels, k), dtype=torch.float32, device=z_e.device)
    gz = torch.empty_like(z_e)
    cb32 = codebooks.float()
    cn = (cb32 * cb32).sum(-1).contiguous()
    bn, bk, bd, warps, stages = _launch_config(d, k, backward=True)
    scale = 2.0 / temperature
    _cu_bwd_kernel[(triton.cdiv(n, bn),)](
        g, z_e, codes, codebooks, cn, aux, gz, gcb, col, n, 1.0 / temperature, 1.0 / n, scale,
        D=d, K=k, L=num_levels, SOFTMAX=mode == "softmax", BLOCK_N=bn, BLOCK_K=bk, BLOCK_D=bd,
        PRECISION=prec, num_warps=warps, num_stages=stages,
    )
    gcb = scale * (gcb - col.unsqueeze(-1) * cb32)
    return gz, gcb.to(codebooks.dtype)


def compile_specs():
    """Offline sm_90 compilations gated by ``benchmarks/compile_check.py`` (the benchmark's shape: D = 64,
    K = 256, L = 3, float32, both modes), with their register and spill budgets."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.compile_check import CompileSpec

    d, k, levels = 64, 256, 3
    f32 = "*fp32"
    specs = []
    for softmax in (True, False):
        mode = "softmax" if softmax else "sigmoid"
        const = {"D": d, "K": k, "L": levels, "SOFTMAX": softmax, "PRECISION": "tf32x3"}
        bn, bk, bd, warps, stages = _launch_config(d, k, backward=False)
        specs.append(CompileSpec(
            f"fwd {mode} f32 D64 K256 L3", _cu_fwd_kernel,
            {"z_ptr": f32, "codes_ptr": "*i64", "cb_ptr": f32, "cn_ptr": f32, "cbar_ptr": f32, "cnbar_ptr": f32,
             "rho_ptr": f32, "aux_ptr": f32, "N": "i32", "inv_t": "fp32"},
            dict(const, BLOCK_N=bn, BLOCK_K=bk, BLOCK_D=bd), num_warps=warps, num_stages=stages))
        bn, bk, bd, warps, stages = _launch_config(d, k, backward=True)
        specs.append(CompileSpec(
            f"bwd {mode} f32 D64 K256 L3", _cu_bwd_kernel,
            {"g_ptr": f32, "z_ptr": f32, "codes_ptr": "*i64", "cb_ptr": f32, "cn_ptr": f32, "aux_ptr": f32,
             "gz_ptr": f32, "gcb_ptr": f32, "col_ptr": f32, "N": "i32", "inv_t": "fp32", "inv_n": "fp32",
             "out_scale": "fp32"},
            dict(const, BLOCK_N=bn, BLOCK_K=bk, BLOCK_D=bd), num_warps=warps, num_stages=stages))
    return specs
