"""Triton kernels for ``motorec::residual_quantize`` (forward and backward), installed as ``motorec.kernels``.

Forward (:func:`residual_quantize_fwd`): one program per block of ``BLOCK_N`` rows runs all ``L`` levels, with the
residual kept in registers. Per level it streams the codebook in tiles of ``BLOCK_K`` codewords, computes
``a_j = ||c_j||^2 - 2 r.c_j`` with ``tl.dot`` and keeps the 4 smallest ``a_j`` per row (ties: lowest index). The
4 candidates are then re-checked with the exact distance ``||r - c_j||^2`` summed as a difference of vectors in
float32 (no cancellation), and the best is kept (ties: lowest index). A rigorous rounding bound of the
``tl.dot`` products then certifies each row: if no codeword outside the 4 can beat the winner, the code is the
argmin of the exact float32 distance; rows that fail (near-ties among more than 4 codewords, duplicated
codewords) make their block re-run the level as an exhaustive exact scan. No ``[N, K]`` tensor is ever written.

Backward (:func:`residual_quantize_bwd`), with the gradient of :mod:`motorec.reference.residual_quantize`:

* ``grad_x = sum_k 2 g_r[:, k] r^(k)``: a row kernel recomputes the residuals from ``x`` and the codes with the
  same float32 operations as the forward (bit-identical) and writes ``grad_x`` once;
* ``grad_codebooks[k][j] = sum_{i: codes[i,k]=j} (g_q[i] - 2 g_r[i, k] r^(k)_i)``: the ``L*N`` (level, row)
  pairs are sorted by codeword in torch, and a segmented-reduction kernel sums each codeword's rows in chunks
  of ``BLOCK_R`` rows with one atomic add per chunk, so a popular codeword costs ``count / BLOCK_R`` atomics
  instead of ``count`` (no contention hot spot, no ``[N, K]`` one-hot, no per-level Python loop).

Shapes:
    x: [N, D] float32 | float16 | bfloat16, codebooks: [L, K, D] same dtype
    -> codes [N, L] int64, quantized [N, D] x.dtype, residual_sq [N, L] float32.
    Backward: grad_quantized [N, D], grad_residual_sq [N, L] float32 -> grad_x [N, D], grad_codebooks [L, K, D].

Numerics: all arithmetic is float32 (half inputs are upcast on load). ``precision`` picks the ``tl.dot`` mode
of the candidate search: ``tf32x3`` (default on GPUs; about float32 accuracy on tensor cores, so the
certificate almost never fails), ``tf32`` (one tensor-core pass; its rigorous rounding bound is so loose
that on typical data most blocks fall back to the exhaustive scan: for experiments) or ``ieee``. Under ``TRITON_INTERPRET=1`` the dot runs in float32 (``ieee``).
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
from torch import Tensor

import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_PRECISIONS = ("tf32x3", "tf32", "ieee")
_TOPC = 4  # candidates kept per row by the tensor-core search (the kernel unrolls exactly 4)

# Relative error of one product r_i * c_i in the tl.dot candidate search, with a 2x margin: tf32 keeps 10
# mantissa bits (hardware may truncate: 2^-10 per operand); tf32x3 drops only lo*lo terms and the rounding of
# the lo parts (3 * 2^-22); ieee has none. The accumulation is bounded separately: up to 3 D terms (tf32x3
# chains three dots) with round-toward-zero steps (tensor cores truncate), 2 * 3 D * 2^-24 = 3 D * 2^-23.
_EPS_DOT = {"tf32": 2.0 ** -8, "tf32x3": 2.0 ** -17, "ieee": 0.0}
_ACC_TERMS = {"tf32": 3, "tf32x3": 3, "ieee": 1}


@triton.jit
def _keep_smaller(v, i, b, bi):
    # (v, i) vs the list entry (b, bi): the smaller stays in the list, the other moves on. Strict `<` keeps the
    # entry on ties; entries arrive in increasing codeword order, so ties keep the lowest index.
    c = v < b
    return tl.where(c, v, b), tl.where(c, i, bi), tl.where(c, b, v), tl.where(c, bi, i)


@triton.jit
def _insert4(v, i, b0, i0, b1, i1, b2, i2, b3, i3):
    # Insert (v, i) into the ascending list (b0..b3, i0..i3); the largest falls off.
    b0, i0, v, i = _keep_smaller(v, i, b0, i0)
    b1, i1, v, i = _keep_smaller(v, i, b1, i1)
    b2, i2, v, i = _keep_smaller(v, i, b2, i2)
    b3, i3, v, i = _keep_smaller(v, i, b3, i3)
    return b0, i0, b1, i1, b2, i2, b3, i3


@triton.jit
def _recheck(r, cbl, idx, best_e, best_i, dcols, m2, D: tl.constexpr):
    # Exact float32 distance ||r - c_idx||^2 as a sum of squared differences; (distance, index) lexicographic.
    c = tl.load(cbl + idx.to(tl.int64)[:, None] * D + dcols[None, :], mask=m2, other=0.0).to(tl.float32)
    diff = r - c
    e = tl.sum(diff * diff, axis=1)
    better = (e < best_e) | ((e == best_e) & (idx < best_i))
    return tl.where(better, e, best_e), tl.where(better, idx, best_i)


@triton.jit
def _rq_fwd_kernel(
    x_ptr, cb_ptr, cn_ptr, cnmax_ptr, codes_ptr, q_ptr, rsq_ptr, N,
    D: tl.constexpr, K: tl.constexpr, L: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, BOUND_REL: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = (pid * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    rmask = rows < N
    dcols = tl.arange(0, BLOCK_D)
    dmask = dcols < D
    m2 = rmask[:, None] & dmask[None, :]
    kk = tl.arange(0, BLOCK_K)
    r = tl.load(x_ptr + rows[:, None] * D + dcols[None, :], mask=m2, other=0.0).to(tl.float32)
    for lvl in range(L):
        cbl = cb_ptr + lvl * K * D
        cnmax = tl.load(cnmax_ptr + lvl)
        rn2 = tl.sum(r * r, axis=1)
        b0 = tl.full([BLOCK_N], float("inf"), tl.float32)
        b1 = b0
        b2 = b0
        b3 = b0
        i0 = tl.zeros([BLOCK_N], dtype=tl.int32)
        i1 = i0
        i2 = i0
        i3 = i0
        for k0 in range(0, K, BLOCK_K):
            kidx = k0 + kk
            kmask = kidx < K
            c = tl.load(cbl + kidx[:, None] * D + dcols[None, :], mask=kmask[:, None] & dmask[None, :],
                        other=0.0).to(tl.float32)
            cn = tl.load(cn_ptr + lvl * K + kidx, mask=kmask, other=float("inf"))
            a = cn[None, :] - 2.0 * tl.dot(r, tl.trans(c), input_precision=PRECISION)
            for _c in tl.static_range(4):
                v, j = tl.min(a, axis=1, return_indices=True)
                b0, i0, b1, i1, b2, i2, b3, i3 = _insert4(v, k0 + j, b0, i0, b1, i1, b2, i2, b3, i3)
                a = tl.where(kk[None, :] == j[:, None], float("inf"), a)
        best_e = tl.full([BLOCK_N], float("inf"), tl.float32)
        best_i = tl.zeros([BLOCK_N], dtype=tl.int32)
        best_e, best_i = _recheck(r, cbl, i0, best_e, best_i, dcols, m2, D)
        best_e, best_i = _recheck(r, cbl, i1, best_e, best_i, dcols, m2, D)
        best_e, best_i = _recheck(r, cbl, i2, best_e, best_i, dcols, m2, D)
        best_e, best_i = _recheck(r, cbl, i3, best_e, best_i, dcols, m2, D)
        # Any codeword outside the 4 has computed a_j >= b3, so its exact distance is at least
        # rn2 + b3 - bound. If that does not clear the winner, the row is not certified.
        bound = BOUND_REL * (2.0 * tl.sqrt(rn2 * cnmax) + cnmax + rn2 + best_e)
        uncertified = rmask & (rn2 + b3 - bound <= best_e)
        if tl.max(uncertified.to(tl.int32), axis=0) > 0:
            ex_e = tl.full([BLOCK_N], float("inf"), tl.float32)
            ex_i = tl.zeros([BLOCK_N], dtype=tl.int32)
            for j in range(K):
                c = tl.load(cbl + j * D + dcols, mask=dmask, other=0.0).to(tl.float32)
                diff = r - c[None, :]
                e = tl.sum(diff * diff, axis=1)
                better = e < ex_e
                ex_e = tl.where(better, e, ex_e)
                ex_i = tl.where(better, j, ex_i)
            best_i = tl.where(uncertified, ex_i, best_i)
        c = tl.load(cbl + best_i.to(tl.int64)[:, None] * D + dcols[None, :], mask=m2, other=0.0).to(tl.float32)
        r = r - c
        tl.store(codes_ptr + rows * L + lvl, best_i.to(tl.int64), mask=rmask)
        tl.store(rsq_ptr + rows * L + lvl, tl.sum(r * r, axis=1), mask=rmask)
    x = tl.load(x_ptr + rows[:, None] * D + dcols[None, :], mask=m2, other=0.0).to(tl.float32)
    tl.store(q_ptr + rows[:, None] * D + dcols[None, :], (x - r).to(q_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _rq_bwd_x_kernel(
    x_ptr, cb_ptr, codes_ptr, gr_ptr, gx_ptr, N,
    D: tl.constexpr, K: tl.constexpr, L: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = (pid * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    rmask = rows < N
    dcols = tl.arange(0, BLOCK_D)
    m2 = rmask[:, None] & (dcols < D)[None, :]
    r = tl.load(x_ptr + rows[:, None] * D + dcols[None, :], mask=m2, other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for lvl in range(L):
        code = tl.load(codes_ptr + rows * L + lvl, mask=rmask, other=0)
        c = tl.load(cb_ptr + (lvl * K + code)[:, None] * D + dcols[None, :], mask=m2, other=0.0).to(tl.float32)
        r = r - c
        g = tl.load(gr_ptr + rows * L + lvl, mask=rmask, other=0.0)
        acc += 2.0 * g[:, None] * r
    tl.store(gx_ptr + rows[:, None] * D + dcols[None, :], acc.to(gx_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _rq_bwd_cb_kernel(
    x_ptr, cb_ptr, codes_ptr, gq_ptr, gr_ptr, order_ptr, seg_of_item_ptr, item_start_ptr, seg_start_ptr,
    counts_ptr, gcb_ptr, N,
    D: tl.constexpr, K: tl.constexpr, L: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # One program per work item: up to BLOCK_R (level, row) pairs of one codeword, taken from the sorted order.
    pid = tl.program_id(0)
    seg = tl.load(seg_of_item_ptr + pid)
    # Masks are built from vector comparisons only (the interpreter mistypes scalar & vector masks).
    valid_d = tl.where(seg < L * K, D, 0)  # D for a real work item, 0 for a spare program
    seg = tl.where(seg < L * K, seg, 0)
    lvl = seg // K
    sub = pid - tl.load(item_start_ptr + seg)
    start = tl.load(seg_start_ptr + seg) + sub * BLOCK_R
    end = tl.where(valid_d > 0, tl.load(seg_start_ptr + seg) + tl.load(counts_ptr + seg), start)
    p = start + tl.arange(0, BLOCK_R)
    pmask = p < end
    lvl_v = tl.zeros([BLOCK_R], dtype=tl.int64) + lvl
    rows = tl.load(order_ptr + p, mask=pmask, other=0) - lvl_v * N
    dcols = tl.arange(0, BLOCK_D)
    dmask = dcols < D
    m2 = pmask[:, None] & dmask[None, :]
    r = tl.load(x_ptr + rows[:, None] * D + dcols[None, :], mask=m2, other=0.0).to(tl.float32)
    for m in range(L):
        # Levels after `lvl` subtract an exact 0.0, so r^(lvl) is bit-identical to the forward's.
        pm = pmask & (lvl_v >= m)
        code = tl.load(codes_ptr + rows * L + m, mask=pm, other=0)
        c = tl.load(cb_ptr + (m * K + code)[:, None] * D + dcols[None, :], mask=pm[:, None] & dmask[None, :],
                    other=0.0).to(tl.float32)
        r = r - c
    g = tl.load(gr_ptr + rows * L + lvl_v, mask=pmask, other=0.0)
    gq = tl.load(gq_ptr + rows[:, None] * D + dcols[None, :], mask=m2, other=0.0).to(tl.float32)
    t = gq - 2.0 * g[:, None] * r
    s = tl.sum(tl.where(m2, t, 0.0), axis=0)
    tl.atomic_add(gcb_ptr + seg.to(tl.int64) * D + dcols, s, mask=dcols < valid_d, sem="relaxed")


def _block_sizes(d: int, k: int) -> Tuple[int, int, int]:
    block_d = max(16, triton.next_power_of_2(d))
    block_k = max(16, min(64, triton.next_power_of_2(k)))
    block_n = 64 if block_d <= 128 else (32 if block_d <= 256 else 16)
    return block_n, block_k, block_d


def _check(x: Tensor, codebooks: Tensor) -> None:
    if x.dim() != 2 or codebooks.dim() != 3 or x.shape[1] != codebooks.shape[2]:
        raise ValueError(f"x must be [N, D] and codebooks [L, K, D]; got {tuple(x.shape)} and {tuple(codebooks.shape)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16) or codebooks.dtype != x.dtype:
        raise TypeError(f"x and codebooks must share a dtype among float32, float16, bfloat16; got {x.dtype} and "
                        f"{codebooks.dtype}")
    if codebooks.shape[0] < 1 or codebooks.shape[1] < 1:
        raise ValueError(f"codebooks must have L >= 1 and K >= 1, got shape {tuple(codebooks.shape)}")
    if x.device != codebooks.device or (x.device.type != "cuda" and not _INTERPRET):
        raise ValueError(f"x ({x.device}) and codebooks ({codebooks.device}) must be on the same CUDA device "
                         "(or on the CPU under TRITON_INTERPRET=1)")


def residual_quantize_fwd(x: Tensor, codebooks: Tensor, *, precision: Optional[str] = None,
                          block_n: Optional[int] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """Fused residual quantization over all levels.

    Args:
        x: [N, D] float32, float16 or bfloat16.
        codebooks: [L, K, D], dtype of x.
        precision: ``tl.dot`` mode of the candidate search: ``tf32x3`` (default, or ``MOTOREC_RQ_PRECISION``),
            ``tf32`` or ``ieee``; codes are exact in every mode (the mode only moves work between the search and
            the fallback scan). Ignored under ``TRITON_INTERPRET=1`` (float32).
        block_n: rows per program (a power of two >= 16), default from D.

    Returns:
        ``(codes [N, L] int64, quantized [N, D] x.dtype, residual_sq [N, L] float32)``.
    """
    _check(x, codebooks)
    precision = "ieee" if _INTERPRET else (precision or os.environ.get("MOTOREC_RQ_PRECISION", "tf32x3"))
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {_PRECISIONS}, got {precision!r}")
    x, codebooks = x.contiguous(), codebooks.contiguous()
    n, d = x.shape
    num_levels, k, _ = codebooks.shape
    codes = torch.empty((n, num_levels), dtype=torch.int64, device=x.device)
    quantized = torch.empty_like(x)
    residual_sq = torch.empty((n, num_levels), dtype=torch.float32, device=x.device)
    if n == 0:
        return codes, quantized, residual_sq
    cb32 = codebooks.float()
    cn = (cb32 * cb32).sum(-1).contiguous()  # [L, K]
    cnmax = cn.amax(-1).contiguous()  # [L]
    bn, bk, bd = _block_sizes(d, k)
    if block_n is not None:
        bn = block_n
    bound_rel = _EPS_DOT[precision] + (_ACC_TERMS[precision] * d + 16) * 2.0 ** -23
    grid = (triton.cdiv(n, bn),)
    _rq_fwd_kernel[grid](
        x, codebooks, cn, cnmax, codes, quantized, residual_sq, n,
        D=d, K=k, L=num_levels, BLOCK_N=bn, BLOCK_K=bk, BLOCK_D=bd,
        PRECISION=precision, BOUND_REL=bound_rel, num_warps=4,
    )
    return codes, quantized, residual_sq


def residual_quantize_bwd(grad_quantized: Tensor, grad_residual_sq: Tensor, x: Tensor, codebooks: Tensor,
                          codes: Tensor) -> Tuple[Tensor, Tensor]:
    """Gradients of :func:`residual_quantize_fwd` (definition in :mod:`motorec.reference.residual_quantize`).

    Shapes:
        grad_quantized [N, D], grad_residual_sq [N, L] (float32), x [N, D], codebooks [L, K, D],
        codes [N, L] int64 -> grad_x [N, D] x.dtype, grad_codebooks [L, K, D] codebooks.dtype.
    """
    _check(x, codebooks)
    n, d = x.shape
    num_levels, k, _ = codebooks.shape
    if tuple(grad_quantized.shape) != (n, d) or tuple(grad_residual_sq.shape) != (n, num_levels) \
            or tuple(codes.shape) != (n, num_levels):
        raise ValueError(f"grad_quantized must be [{n}, {d}], grad_residual_sq and codes [{n}, {num_levels}]; got "
                         f"{tuple(grad_quantized.shape)}, {tuple(grad_residual_sq.shape)}, {tuple(codes.shape)}")
    x, codebooks = x.contiguous(), codebooks.contiguous()
    gq = grad_quantized.contiguous()
    gr = grad_residual_sq.to(torch.float32).contiguous()
    codes = codes.to(torch.int64).contiguous()
    gcb = torch.zeros((num_levels, k, d), dtype=torch.float32, device=x.device)
    if n == 0:
        return torch.zeros_like(x), gcb.to(codebooks.dtype)
    grad_x = torch.empty_like(x)
    bn, _, bd = _block_sizes(d, k)
    _rq_bwd_x_kernel[(triton.cdiv(n, bn),)](x, codebooks, codes, gr, grad_x, n, D=d, K=k, L=num_levels,
                                             BLOCK_N=bn, BLOCK_D=bd, num_warps=4)

    # Sort the L*N (level, row) pairs by codeword (level-major flat index lvl * N + row), then cut each
    # codeword's run into work items of at most BLOCK_R pairs. All on the device, no host sync.
    block_r = bn
    lk = num_levels * k
    keys = (codes + torch.arange(num_levels, device=x.device) * k).t().reshape(-1)
    order = torch.sort(keys, stable=True).indices
    counts = torch.bincount(keys, minlength=lk)
    seg_start = torch.cumsum(counts, 0) - counts
    items = (counts + block_r - 1) // block_r
    item_end = torch.cumsum(items, 0)
    item_start = item_end - items
    num_programs = triton.cdiv(num_levels * n, block_r) + lk  # >= sum(items); extra programs do nothing
    seg_of_item = torch.searchsorted(item_end, torch.arange(num_programs, device=x.device), right=True)
    _rq_bwd_cb_kernel[(num_programs,)](
        x, codebooks, codes, gq, gr, order, seg_of_item, item_start, seg_start, counts, gcb, n,
        D=d, K=k, L=num_levels, BLOCK_R=block_r, BLOCK_D=bd, num_warps=4,
    )
    return grad_x, gcb.to(codebooks.dtype)


def compile_specs():
    """Offline sm_90 compilations gated by ``benchmarks/compile_check.py`` (the benchmark's shape:
    D = 64, K = 256, L = 3, float32), with their register and spill budgets."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.compile_check import CompileSpec

    d, k, levels = 64, 256, 3
    bn, bk, bd = _block_sizes(d, k)
    prec = "tf32x3"
    bound_rel = _EPS_DOT[prec] + (_ACC_TERMS[prec] * d + 16) * 2.0 ** -23
    f32 = "*fp32"
    return [
        CompileSpec("fwd f32 D64 K256 L3", _rq_fwd_kernel,
                    {"x_ptr": f32, "cb_ptr": f32, "cn_ptr": f32, "cnmax_ptr": f32, "codes_ptr": "*i64", "q_ptr": f32,
                     "rsq_ptr": f32, "N": "i32"},
                    {"D": d, "K": k, "L": levels, "BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_D": bd, "PRECISION": prec,
                     "BOUND_REL": bound_rel}, num_warps=4, max_regs=128),
        CompileSpec("bwd_x f32 D64 K256 L3", _rq_bwd_x_kernel,
                    {"x_ptr": f32, "cb_ptr": f32, "codes_ptr": "*i64", "gr_ptr": f32, "gx_ptr": f32, "N": "i32"},
                    {"D": d, "K": k, "L": levels, "BLOCK_N": bn, "BLOCK_D": bd}, num_warps=4),
        CompileSpec("bwd_cb f32 D64 K256 L3", _rq_bwd_cb_kernel,
                    {"x_ptr": f32, "cb_ptr": f32, "codes_ptr": "*i64", "gq_ptr": f32, "gr_ptr": f32,
                     "order_ptr": "*i64", "seg_of_item_ptr": "*i64", "item_start_ptr": "*i64",
                     "seg_start_ptr": "*i64", "counts_ptr": "*i64", "gcb_ptr": f32, "N": "i32"},
                    {"D": d, "K": k, "L": levels, "BLOCK_R": bn, "BLOCK_D": bd}, num_warps=4),
    ]
