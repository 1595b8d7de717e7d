"""Triton kernels for ``motorec::residual_quantize`` (forward and backward), installed as ``motorec.kernels``.

Forward (:func:`residual_quantize_fwd`), two launches, no host sync:

* the search (``_rq_fwd_kernel``): one program per block of ``BLOCK_N`` rows runs all ``L`` levels with the
  residual in registers. Per level it streams the *centred* codebook ``C - mu`` (``mu`` the level's mean
  codeword: distances do not change, operands shrink, so does the dot's rounding) in tiles of ``BLOCK_K``
  codewords, computes ``a_j = ||c_j - mu||^2 - 2 (r - mu).(c_j - mu)`` with one ``tl.dot`` (a single TF32
  tf32x3 pass by default), and keeps per row the smallest and the second smallest ``a_j``. Candidate selection is
  on packed keys: ``a_j`` as an order-preserving int32 whose low ``log2 BLOCK_K`` bits hold ``j``'s place in
  the tile, so one
  integer min per tile gives value and index (ties: lowest index) and a second min gives the runner-up.
  A rigorous rounding bound ``B`` of the computed ``a_j`` (dot operands, accumulation, the dropped key
  bits) certifies a row when the runner-up trails by more than ``2 B``: the winner is then the exact
  argmin of ``||r - c_j||^2``. Duplicated codewords are masked (their lowest-index copy stands for them),
  so they do not spoil the gap. A row that fails is appended (one atomic per row) to a queue as
  ``row * L + level``; its later levels in this kernel are ignored. Only the residual's split is live across the
  tile loop: after it, the residual is rebuilt from ``x`` and the codes stored so far (the same float32
  subtractions in the same order, so the same bits), which keeps the kernel within 128 registers per thread
  with no spills (two 8-warp programs per SM; see ``_fwd_maxnreg``);
* the exact per-row pass (``_rq_exact_kernel``): a fixed grid walks the queue (its length stays on the
  device) ``BLOCK_Q`` rows at a time, replays the stored codes of the levels before the failed one (the
  same float32 operations, so the same residual bits) and scans every codeword from there with the exact
  distance ``||r - c_j||^2`` summed as squared differences in float32 (ties: lowest index).

No ``[N, K]`` tensor is ever written; a failure costs one row's exact scan, not a block's.

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
of the search: ``tf32x3`` (default: three tensor-core passes, about float32 accuracy; a float64 emulation of
the certificate on the benchmark's data sends 1.8% of rows to the exact pass at D = 64, K = 256, L = 3 and
4.1% at D = 128, K = 1024), ``tf32`` (one pass: its rounding bound leaves 80-90% of rows to the exact pass
with this top-2 certificate) or ``ieee``. Codes are exact in every mode; the mode only moves rows between the
search and the exact pass. Under ``TRITON_INTERPRET=1`` the dot runs in float32 (``ieee``).
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from motorec.reference.residual_quantize import _lowest_duplicate

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_PRECISIONS = ("tf32x3", "tf32", "ieee")
# tf32x3: with a single tf32 pass the top-2 certificate sends most rows to the exact pass (float64 emulation on
# the benchmark's data: 80% of rows; tf32x3: about 2%), see benchmarks/results/GPU_NOTES.md.
_DEFAULT_PRECISION = "tf32x3"
_BLOCK_Q = 16  # rows per step of the exact per-row pass
# Search launch (benchmarks/compile_check.py, sm_90, D = 64, K = 256, tf32x3): 8 warps, 1 stage, ptxas held to
# 128 registers per thread (two blocks of 8 warps per SM), which the kernel meets with 0 spill bytes because only
# the residual's hi/lo split is live across the tile loop (unconstrained ptxas takes 172; before the residual was
# rebuilt after the loop: 176, and 24-44 spill bytes at 128). See benchmarks/results/GPU_NOTES.md.
_FWD_WARPS, _FWD_STAGES, _FWD_MAXNREG = 8, 1, 128


def _fwd_maxnreg(block_d: int, precision: str) -> Optional[int]:
    """The search's register cap: 128 where the kernel fits it without spilling (tensor-core modes, BLOCK_D <= 64;
    compiled offline for sm_90: fp32/fp16 x, tf32x3/tf32, D 32-64), else None (ptxas's choice: at BLOCK_D = 128 the
    cap would spill 224 B, with ``ieee`` over 2 KB). ``MOTOREC_RQ_MAXNREG`` overrides it: a register count, or 0 for
    no cap (for A/B timing on a GPU; codes are the same either way)."""
    env = os.environ.get("MOTOREC_RQ_MAXNREG")
    if env is not None:
        try:
            cap = int(env)
        except ValueError:
            raise ValueError(f"MOTOREC_RQ_MAXNREG must be an integer (0 = no cap), got {env!r}") from None
        if cap != 0 and not 32 <= cap <= 255:
            raise ValueError(f"MOTOREC_RQ_MAXNREG must be 0 or in [32, 255], got {cap}")
        return cap or None
    return _default_maxnreg(block_d, precision)


def _default_maxnreg(block_d: int, precision: str) -> Optional[int]:
    return _FWD_MAXNREG if block_d <= 64 and precision != "ieee" else None

# Relative error of one product r_i * c_i in the tl.dot candidate search, with a 2x margin: tf32 keeps 10
# mantissa bits (hardware may truncate: 2^-10 per operand); tf32x3 drops only lo*lo terms and the rounding of
# the lo parts (3 * 2^-22); ieee has none. The accumulation is bounded separately: up to 3 D terms (tf32x3
# chains three dots) with round-toward-zero steps (tensor cores truncate), 2 * 3 D * 2^-24 = 3 D * 2^-23.
_EPS_DOT = {"tf32": 2.0 ** -8, "tf32x3": 2.0 ** -17, "ieee": 0.0}
_ACC_TERMS = {"tf32": 3, "tf32x3": 3, "ieee": 1}


def _bound_rel(precision: str, d: int) -> float:
    """Relative rounding bound of the search's computed ``a_j``, in units of ``2 |r| |c| + |c|^2 + |r|^2``
    (centred vectors): the dot's operand rounding, its accumulation, and the float32 steps around it."""
    return _EPS_DOT[precision] + (_ACC_TERMS[precision] * d + 16) * 2.0 ** -23


def _idx_bits(block_k: int) -> int:
    """Bits of a codeword's place in its tile in the search's packed keys (at least 1)."""
    return max(1, (block_k - 1).bit_length())


def _exact_programs(device: torch.device) -> int:
    # Programs of the exact per-row pass: a few per SM (the queue is usually short); fixed, so no host sync.
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


@triton.jit
def _key_value(key, IDX_BITS: tl.constexpr):
    # The float a key stands for, rounded down to its bucket (the index bits cleared): the true value lies in
    # [value, value + bucket), bucket <= 2^(IDX_BITS - 23) |value|; infinite keys give +inf.
    k = key & ~((1 << IDX_BITS) - 1)
    bits = tl.where(k < 0, k ^ 0x7FFFFFFF, k)
    return tl.where(key >= 0x7F800000, float("inf"), bits.to(tl.float32, bitcast=True))


@triton.jit
def _rq_fwd_kernel(
    x_ptr, cb_ptr, cbc_ptr, mu_ptr, cn_ptr, cnmax_ptr, codes_ptr, q_ptr, rsq_ptr, queue_ptr, count_ptr, N,
    D: tl.constexpr, K: tl.constexpr, L: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, BOUND_REL: tl.constexpr, IDX_BITS: tl.constexpr,
):
    pid = tl.program_id(0)
    # Offsets inside the block are int32 (BLOCK_N * D is small); the block's base is one int64 scalar per pointer.
    row0 = pid.to(tl.int64) * BLOCK_N
    lr = tl.arange(0, BLOCK_N)
    rmask = lr < N - row0
    x_blk = x_ptr + row0 * D
    codes_blk = codes_ptr + row0 * L
    rsq_blk = rsq_ptr + row0 * L
    dcols = tl.arange(0, BLOCK_D)
    dmask = dcols < D
    m2 = rmask[:, None] & dmask[None, :]
    kk = tl.arange(0, BLOCK_K)
    r = tl.load(x_blk + lr[:, None] * D + dcols[None, :], mask=m2, other=0.0).to(tl.float32)
    failed = tl.zeros([BLOCK_N], dtype=tl.int32)  # 1: the row is already queued for the exact pass
    for lvl in range(L):
        mu = tl.load(mu_ptr + lvl * D + dcols, mask=dmask, other=0.0)
        rc = tl.where(m2, r - mu[None, :], 0.0)  # centred residual: smaller operands, smaller dot error
        if PRECISION == "tf32x3":
            rc_hi = (rc.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)  # 10 mantissa bits
            rc_lo = rc - rc_hi
        cnmax = tl.load(cnmax_ptr + lvl)
        # Candidate selection on packed keys: the computed a_j = ||c_j - mu||^2 - 2 (r - mu).(c_j - mu)
        # (= ||r - c_j||^2 - ||r - mu||^2) as an order-preserving int32 whose low IDX_BITS bits are replaced by
        # j's place in the tile, so one integer min gives value and index (ties: lowest j). Running smallest key
        # k1 (codeword i1) and runner-up k2.
        k1 = tl.full([BLOCK_N], 0x7FFFFFFF, tl.int32)
        k2 = k1
        i1 = tl.zeros([BLOCK_N], dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            kidx = k0 + kk
            kmask = kidx < K
            cptrs = cbc_ptr + lvl * K * D + kidx[:, None] * D + dcols[None, :]
            cm = kmask[:, None] & dmask[None, :]
            cn = tl.load(cn_ptr + lvl * K + kidx, mask=kmask, other=float("inf"))
            if PRECISION == "tf32x3":
                # Three tf32 products of the hi/lo splits (the codebook's split precomputed by the launcher,
                # behind the centred codebook at cbc_ptr + L K D); lo * lo is dropped.
                c_hi = tl.load(cptrs, mask=cm, other=0.0)
                c_lo = tl.load(cptrs + L * K * D, mask=cm, other=0.0)
                dot = tl.dot(rc_hi, tl.trans(c_hi), input_precision="tf32")
                dot = tl.dot(rc_hi, tl.trans(c_lo), dot, input_precision="tf32")
                dot = tl.dot(rc_lo, tl.trans(c_hi), dot, input_precision="tf32")
            else:
                c = tl.load(cptrs, mask=cm, other=0.0)
                dot = tl.dot(rc, tl.trans(c), input_precision=PRECISION)
            a = cn[None, :] - 2.0 * dot
            bits = a.to(tl.int32, bitcast=True)
            key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
            key = (key & ~((1 << IDX_BITS) - 1)) | kk[None, :]
            t1 = tl.min(key, axis=1)
            t2 = tl.min(tl.where(key == t1[:, None], 0x7FFFFFFF, key), axis=1)
            k2 = tl.minimum(tl.maximum(k1, t1), tl.minimum(k2, t2))
            # Strict: a later tile wins only with a smaller key. Equal buckets across tiles are within the
            # bound of each other, so such a row is not certified and the exact pass breaks the tie.
            i1 = tl.where(t1 < k1, k0 + (t1 & ((1 << IDX_BITS) - 1)), i1)
            k1 = tl.minimum(k1, t1)
        tl.store(codes_blk + lr * L + lvl, i1.to(tl.int64), mask=rmask)
        # Nothing but the split of the centred residual is kept across the tile loop (r, ||r - mu||^2 and the
        # earlier levels' codes would cost registers there: the budget is 128 per thread). The residual is rebuilt
        # from x and the codes stored so far with the same float32 subtractions in the same order as everywhere
        # else (the exact pass, the backward), so its bits are the same. The barrier makes this program's code
        # stores visible to all of its threads.
        tl.debug_barrier()
        r = tl.load(x_blk + lr[:, None] * D + dcols[None, :], mask=m2, other=0.0).to(tl.float32)
        for j in range(lvl):
            cj = tl.load(codes_blk + lr * L + j, mask=rmask, other=0).to(tl.int32)
            c = tl.load(cb_ptr + j * K * D + cj[:, None] * D + dcols[None, :], mask=m2, other=0.0).to(tl.float32)
            r = r - c
        rc = tl.where(m2, r - mu[None, :], 0.0)
        rn2 = tl.sum(rc * rc, axis=1)
        m1 = _key_value(k1, IDX_BITS)
        m2v = _key_value(k2, IDX_BITS)
        # Every computed a_j is within `bound` of its exact value, so when the runner-up trails by more than
        # 2 bound, i1 is the exact argmin of ||r - c_j||^2. Otherwise the row goes to the exact per-row pass,
        # which redoes it from this level (the later levels here are then ignored).
        bound = BOUND_REL * (2.0 * tl.sqrt(rn2 * cnmax) + cnmax + rn2)
        uncertified = rmask & (m2v - m1 <= 2.0 * bound) & (failed == 0)
        slot = tl.atomic_add(count_ptr + tl.zeros([BLOCK_N], dtype=tl.int32), 1, mask=uncertified, sem="relaxed")
        tl.store(queue_ptr + slot, (row0 + lr) * L + lvl, mask=uncertified)
        failed = failed | uncertified.to(tl.int32)
        c = tl.load(cb_ptr + lvl * K * D + i1[:, None] * D + dcols[None, :], mask=m2, other=0.0).to(tl.float32)
        r = r - c
        tl.store(rsq_blk + lr * L + lvl, tl.sum(r * r, axis=1), mask=rmask)
    x = tl.load(x_blk + lr[:, None] * D + dcols[None, :], mask=m2, other=0.0).to(tl.float32)
    tl.store(q_ptr + row0 * D + lr[:, None] * D + dcols[None, :], (x - r).to(q_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _rq_exact_kernel(
    x_ptr, cb_ptr, codes_ptr, q_ptr, rsq_ptr, queue_ptr, count_ptr,
    D: tl.constexpr, K: tl.constexpr, L: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # The rows the search could not certify, BLOCK_Q at a time from the queue (persistent grid: the queue's
    # length stays on the device). Each entry is row * L + level: the levels before `level` replay the stored
    # codes (bit-identical residuals), the rest are an exhaustive scan of ||r - c_j||^2 summed as squared
    # differences in float32 (ties: lowest j), as the search's certified codes are.
    count = tl.load(count_ptr)
    dcols = tl.arange(0, BLOCK_D)
    dmask = dcols < D
    for start in range(tl.program_id(0) * BLOCK_Q, count, tl.num_programs(0) * BLOCK_Q):
        q = start + tl.arange(0, BLOCK_Q)
        qmask = q < count
        entry = tl.load(queue_ptr + q, mask=qmask, other=0)
        rows = entry // L
        first = entry - rows * L
        m2 = qmask[:, None] & dmask[None, :]
        r = tl.load(x_ptr + rows[:, None] * D + dcols[None, :], mask=m2, other=0.0).to(tl.float32)
        for lvl in range(L):
            code = tl.load(codes_ptr + rows * L + lvl, mask=qmask, other=0).to(tl.int32)
            redo = qmask & (lvl >= first)
            if tl.max(redo.to(tl.int32), axis=0) > 0:
                best = tl.full([BLOCK_Q], float("inf"), tl.float32)
                for j in range(K):
                    c = tl.load(cb_ptr + (lvl * K + j) * D + dcols, mask=dmask, other=0.0).to(tl.float32)
                    diff = r - c[None, :]
                    e = tl.sum(diff * diff, axis=1)
                    better = redo & (e < best)
                    best = tl.where(better, e, best)
                    code = tl.where(better, j, code)
            c = tl.load(cb_ptr + lvl * K * D + code.to(tl.int64)[:, None] * D + dcols[None, :], mask=m2,
                        other=0.0).to(tl.float32)
            r = r - c
            tl.store(codes_ptr + rows * L + lvl, code.to(tl.int64), mask=redo)
            tl.store(rsq_ptr + rows * L + lvl, tl.sum(r * r, axis=1), mask=redo)
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
                          block_n: Optional[int] = None, bound_scale: float = 1.0) -> Tuple[Tensor, Tensor, Tensor]:
    """Fused residual quantization over all levels.

    Args:
        x: [N, D] float32, float16 or bfloat16.
        codebooks: [L, K, D], dtype of x.
        precision: ``tl.dot`` mode of the candidate search: ``tf32x3`` (default, or ``MOTOREC_RQ_PRECISION``),
            ``tf32`` or ``ieee``; codes are exact in every mode (the mode only moves rows between the search
            and the exact per-row pass). Ignored under ``TRITON_INTERPRET=1`` (float32).
        block_n: rows per program (a power of two >= 16), default from D.
        bound_scale: multiplies the certificate's rounding bound (tests: a huge value sends every row through
            the exact per-row pass).

    Returns:
        ``(codes [N, L] int64, quantized [N, D] x.dtype, residual_sq [N, L] float32)``.
    """
    _check(x, codebooks)
    if precision is None:
        precision = "ieee" if _INTERPRET else os.environ.get("MOTOREC_RQ_PRECISION", _DEFAULT_PRECISION)
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
    mu = cb32.mean(1)  # [L, D]
    cbc = (cb32 - mu[:, None, :]).contiguous()
    cn = (cbc * cbc).sum(-1)  # [L, K]
    if precision == "tf32x3":  # [2, L, K, D]: the tf32 part (mantissa truncated to 10 bits) and the rest
        hi = (cbc.view(torch.int32) & -8192).view(torch.float32)
        cbc = torch.stack([hi, cbc - hi]).contiguous()
    cnmax = cn.amax(-1).contiguous()  # [L]
    # A duplicated codeword never competes with its lowest-index copy (ties go to the lowest index), so it
    # cannot leave the runner-up gap at 0 and send rows to the exact pass.
    dup = torch.stack([_lowest_duplicate(cb32[lvl]) for lvl in range(num_levels)])
    cn = torch.where(dup == torch.arange(k, device=x.device), cn, float("inf")).contiguous()
    mu = mu.contiguous()
    bn, bk, bd = _block_sizes(d, k)
    if block_n is not None:
        bn = block_n
    idx_bits = _idx_bits(bk)
    # Keys drop idx_bits mantissa bits of a_j: a relative 2^(idx_bits - 23) on top of the dot's bound.
    bound_rel = bound_scale * (_bound_rel(precision, d) + 2.0 ** (idx_bits - 22))
    queue = torch.empty(n, dtype=torch.int64, device=x.device)
    count = torch.zeros(1, dtype=torch.int32, device=x.device)
    _rq_fwd_kernel[(triton.cdiv(n, bn),)](
        x, codebooks, cbc, mu, cn, cnmax, codes, quantized, residual_sq, queue, count, n,
        D=d, K=k, L=num_levels, BLOCK_N=bn, BLOCK_K=bk, BLOCK_D=bd,
        PRECISION=precision, BOUND_REL=bound_rel, IDX_BITS=idx_bits, num_warps=_FWD_WARPS, num_stages=_FWD_STAGES,
        maxnreg=_fwd_maxnreg(bd, precision),
    )
    bq = _BLOCK_Q
    _rq_exact_kernel[(min(triton.cdiv(n, bq), _exact_programs(x.device)),)](
        x, codebooks, codes, quantized, residual_sq, queue, count,
        D=d, K=k, L=num_levels, BLOCK_Q=bq, BLOCK_D=bd, num_warps=4,
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
    # Fixed-size index_add_, not bincount (whose output size is read back to the host).
    counts = torch.zeros(lk, dtype=torch.int64, device=x.device).index_add_(0, keys, torch.ones_like(keys))
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
    bn, _, bd = _block_sizes(d, k)
    prec = _DEFAULT_PRECISION
    f32 = "*fp32"

    def search(dim: int, size: int, **budget):
        block_n, block_k, block_d = _block_sizes(dim, size)
        return CompileSpec(
            f"fwd f32 D{dim} K{size} L{levels}", _rq_fwd_kernel,
            {"x_ptr": f32, "cb_ptr": f32, "cbc_ptr": f32, "mu_ptr": f32, "cn_ptr": f32, "cnmax_ptr": f32,
             "codes_ptr": "*i64", "q_ptr": f32, "rsq_ptr": f32, "queue_ptr": "*i64", "count_ptr": "*i32", "N": "i32"},
            {"D": dim, "K": size, "L": levels, "BLOCK_N": block_n, "BLOCK_K": block_k, "BLOCK_D": block_d,
             "PRECISION": prec, "BOUND_REL": _bound_rel(prec, dim) + 2.0 ** (_idx_bits(block_k) - 22),
             "IDX_BITS": _idx_bits(block_k)},
            num_warps=_FWD_WARPS, num_stages=_FWD_STAGES, maxnreg=_default_maxnreg(block_d, prec),
            min_tensor_share=0.02, **budget)

    return [
        search(d, k, max_regs=128),
        search(128, 1024),  # wider rows run uncapped (ptxas's choice of registers): gated on spills only
        CompileSpec("fwd_exact f32 D64 K256 L3", _rq_exact_kernel,
                    {"x_ptr": f32, "cb_ptr": f32, "codes_ptr": "*i64", "q_ptr": f32, "rsq_ptr": f32,
                     "queue_ptr": "*i64", "count_ptr": "*i32"},
                    {"D": d, "K": k, "L": levels, "BLOCK_Q": _BLOCK_Q, "BLOCK_D": bd}, num_warps=4),
        CompileSpec("bwd_x f32 D64 K256 L3", _rq_bwd_x_kernel,
                    {"x_ptr": f32, "cb_ptr": f32, "codes_ptr": "*i64", "gr_ptr": f32, "gx_ptr": f32, "N": "i32"},
                    {"D": d, "K": k, "L": levels, "BLOCK_N": bn, "BLOCK_D": bd}, num_warps=4),
        CompileSpec("bwd_cb f32 D64 K256 L3", _rq_bwd_cb_kernel,
                    {"x_ptr": f32, "cb_ptr": f32, "codes_ptr": "*i64", "gq_ptr": f32, "gr_ptr": f32,
                     "order_ptr": "*i64", "seg_of_item_ptr": "*i64", "item_start_ptr": "*i64",
                     "seg_start_ptr": "*i64", "counts_ptr": "*i64", "gcb_ptr": f32, "N": "i32"},
                    {"D": d, "K": k, "L": levels, "BLOCK_R": bn, "BLOCK_D": bd}, num_warps=4),
    ]
