"""What tests and benchmarks share (after pytorch_scatter's ``testing.py`` and PyG's ``withCUDA``).

* the parameter matrix: every op is exercised over the same devices, dtypes and backends, with readable ids,
  and GPU-only cases skip with a reason on CPU machines;
* the one power-law interaction generator (:func:`random_interactions`, :func:`power_law_graph`) and a
  random directed graph (:func:`random_directed_graph`);
* float64 oracles of the ops (:func:`spmm_oracle`, :func:`propagate_oracle`, :func:`rq_oracle`,
  :func:`rq_decode_oracle`, :func:`code_usage_oracle`);
* error measures and tolerances: :func:`rel_error`, :func:`assert_close_rel`, the flash-attention rule
  :func:`tol_vs_torch` (a backend may err at most ~2x as much as torch at the same precision), unit roundoffs;
* the near-tie code check of ``residual_quantize`` (:func:`check_codes`), which computes each choice's float64
  margin instead of skipping rows.

Failed checks raise :class:`CheckFailed`, an ``AssertionError`` (pytest reports it as a failed assertion; the
benchmark harness records its message in the row).
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from motorec import _ext
from motorec._dispatch import dispatcher
from motorec.graph import Graph
from motorec.reference import code_usage as _ref_code_usage

DEVICES: List[torch.device] = [torch.device("cpu")] + ([torch.device("cuda")] if _ext.CUDA_AVAILABLE else [])
FLOAT_DTYPES = [torch.float32, torch.float64]
INDEX_DTYPES = [torch.int32, torch.int64]


def device_ids(devices: Sequence[torch.device] = DEVICES) -> List[str]:
    return [d.type for d in devices]


def backends_here(op: str, device: torch.device | str, dtype: Optional[torch.dtype] = None) -> List[str]:
    """Backends of ``op`` that can serve inputs on ``device`` (and ``dtype``) on this machine, explicit use."""
    dev = torch.device(device).type
    d = dispatcher(op)
    inputs = {"device": dev}
    if dtype is not None:
        inputs["dtype"] = dtype
    return [name for name in d.order if d.reason(name, **inputs) is None]


def backend_params(op: str, dtype: Optional[torch.dtype] = None):
    """``pytest.param((device, backend))`` for every device here and every backend that serves it."""
    import pytest

    params = []
    for dev in DEVICES:
        for b in backends_here(op, dev, dtype):
            params.append(pytest.param(dev, b, id=f"{dev.type}-{b}"))
    return params


# ----------------------------------------------------------------------------------------------- generators
def random_interactions(num_users: int, num_items: int, num_edges: int, *, seed: int = 0, alpha: float = 1.0,
                        alpha_items: Optional[float] = None, distinct: bool = False,
                        device="cpu") -> Tuple[torch.Tensor, torch.Tensor]:
    """Power-law random (user, item) id pairs: user and item popularity Zipf-like in rank (exponents ``alpha``
    and ``alpha_items``, default ``alpha``), some users/items isolated. The one generator of tests and
    benchmarks.

    ``distinct=False``: ``num_edges`` independent draws (duplicate pairs possible), in draw order.
    ``distinct=True``: exactly ``num_edges`` distinct pairs, sorted by ``user * num_items + item``; drawn with
    replacement, deduplicated and redrawn until enough exist, then a random subset is kept (vectorized).

    Shapes:
        -> users: [num_edges] int64, items: [num_edges] int64.
    """
    alpha_items = alpha if alpha_items is None else alpha_items
    if distinct and num_edges > num_users * num_items:
        raise ValueError(f"num_edges={num_edges} distinct pairs exceed num_users * num_items = {num_users * num_items}")
    if num_edges == 0 or num_users == 0 or num_items == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return empty, empty.clone()
    g = torch.Generator(device="cpu").manual_seed(seed)
    uw = torch.arange(1, num_users + 1, dtype=torch.float64).pow(-alpha)[torch.randperm(num_users, generator=g)]
    iw = torch.arange(1, num_items + 1, dtype=torch.float64).pow(-alpha_items)[torch.randperm(num_items, generator=g)]
    if not distinct:
        users = torch.multinomial(uw, num_edges, replacement=True, generator=g)
        items = torch.multinomial(iw, num_edges, replacement=True, generator=g)
        return users.to(device), items.to(device)
    keys = torch.empty(0, dtype=torch.int64)
    for _ in range(30):
        missing = num_edges - keys.numel()
        if missing <= 0:
            break
        m = int(missing * 1.3) + 1024
        u = torch.multinomial(uw, m, replacement=True, generator=g)
        i = torch.multinomial(iw, m, replacement=True, generator=g)
        keys = torch.unique(torch.cat([keys, u * num_items + i]))
    if keys.numel() < num_edges:
        raise RuntimeError(f"could only draw {keys.numel()} distinct pairs of {num_edges}; lower the exponents")
    keep = torch.randperm(keys.numel(), generator=g)[:num_edges]
    keys = keys[keep].sort().values.to(device)
    return keys // num_items, keys % num_items


def power_law_graph(num_users: int, num_items: int, num_edges: int, *, seed: int = 0, device="cpu",
                    index_dtype: torch.dtype = torch.int64, alpha: float = 1.0, alpha_items: Optional[float] = None,
                    distinct: bool = False) -> Graph:
    """Normalized user-item LightGCN graph on :func:`random_interactions` (same arguments)."""
    users, items = random_interactions(num_users, num_items, num_edges, seed=seed, alpha=alpha,
                                       alpha_items=alpha_items, distinct=distinct)
    return Graph.from_interactions(users, items, num_users, num_items, device=device, index_dtype=index_dtype)


def random_directed_graph(n: int = 41, e: int = 300, *, seed: int = 5) -> Graph:
    """A non-symmetric [n, n] graph on ``e`` uniform random directed edges (its backward needs ``A^T``)."""
    gen = torch.Generator().manual_seed(seed)
    g = Graph.from_edge_index(torch.randint(0, n, (2, e), generator=gen), n)
    assert not g.symmetric
    return g


# --------------------------------------------------------------------------------------- errors, tolerances
class CheckFailed(AssertionError):
    """An output disagrees with its float64 oracle; the message says how."""


# Unit roundoff of the precision a kernel works in, per input dtype (half inputs are computed in float32) ...
WORK_U = {torch.float64: 2.0 ** -53, torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -24, torch.bfloat16: 2.0 ** -24}
# ... and of the outputs stored in the input dtype.
STORE_U = {torch.float64: 2.0 ** -53, torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}
# The flash-attention rule: a backend may err at most this many times as much as torch at the same precision.
TORCH_ERROR_FACTOR = 2.0


def run_triton_cases_under_interpreter(test_file: str, *, min_cases: int = 10, timeout: float = 1800) -> None:
    """Run ``test_file``'s tests whose names contain ``triton`` in a subprocess with ``TRITON_INTERPRET=1`` (the
    Triton kernels on the CPU; ``MOTOREC_BACKEND`` cleared) and fail with the output's tail unless they pass and at
    least ``min_cases`` of them ran. Skips when triton is not installed. Called by each op's
    ``test_triton_interpreter``."""
    import os
    import re
    import subprocess
    import sys

    import pytest

    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("MOTOREC_BACKEND", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", test_file, "-k", "triton"]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(test_file))))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=root)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"triton interpreter tests failed:\n{tail}"
    m = re.search(r"(\d+) passed", proc.stdout)
    assert m and int(m.group(1)) >= min_cases, f"too few triton cases ran:\n{tail}"


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` computed in float64 on ``out``'s device (the absolute norm ``||out - ref||``
    where ``ref`` is zero; 0 for empty tensors)."""
    o = out.detach().to(torch.float64)
    r = ref.detach().to(device=o.device, dtype=torch.float64)
    if r.numel() == 0:
        return 0.0
    den = torch.linalg.vector_norm(r).item()
    num = torch.linalg.vector_norm(o - r).item()
    return num / den if den > 0 else num


def assert_close_rel(out: torch.Tensor, ref: torch.Tensor, tol: float, what: str = "output") -> float:
    """Raise :class:`CheckFailed` unless ``out`` has ``ref``'s shape, is finite and has relative error at most
    ``tol`` (:func:`rel_error`); returns that error."""
    if tuple(out.shape) != tuple(ref.shape):
        raise CheckFailed(f"{what}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}")
    if out.is_floating_point() and not bool(torch.isfinite(out).all()):
        raise CheckFailed(f"{what}: non-finite values")
    err = rel_error(out, ref)
    if not err <= tol:
        raise CheckFailed(f"{what}: relative error {err:.3e} > {tol:.1e}")
    return err


def tol_vs_torch(torch_err: float, floor: float, *, add_floor: bool = False) -> float:
    """Tolerance after flash-attention: at most ~2x (:data:`TORCH_ERROR_FACTOR`) the error ``torch_err`` of
    the torch path at the same precision, and never below ``floor`` (``add_floor=True``: plus ``floor``,
    for errors that also carry a rounding term torch's path lacks)."""
    if add_floor:
        return TORCH_ERROR_FACTOR * torch_err + floor
    return max(TORCH_ERROR_FACTOR * torch_err, floor)


# ---------------------------------------------------------------------------------------- float64 oracles
def spmm_oracle(g: Graph, x: torch.Tensor, *, chunk_elems: int = 1 << 24) -> torch.Tensor:
    """``A @ x`` in float64 by gather + ``index_add_`` over edge chunks of at most ``chunk_elems`` gathered
    elements (shares no code with the CSR kernels; memory stays bounded on benchmark-sized graphs).

    Shapes:
        g: [R, C] graph, x: [C, D] -> [R, D] float64 on x's device.
    """
    x64 = x.detach().double()
    out = torch.zeros(g.num_rows, x64.shape[1], dtype=torch.float64, device=x64.device)
    if g.nnz == 0 or x64.shape[1] == 0:
        return out
    rowptr = g.rowptr.to(x64.device).long()
    row = torch.repeat_interleave(torch.arange(g.num_rows, device=x64.device), rowptr.diff())
    col = g.col.to(x64.device).long()
    val = g.val.to(device=x64.device, dtype=torch.float64)
    step = max(1, chunk_elems // x64.shape[1])
    for e0 in range(0, g.nnz, step):
        e1 = min(e0 + step, g.nnz)
        out.index_add_(0, row[e0:e1], x64.index_select(0, col[e0:e1]) * val[e0:e1, None])
    return out


def propagate_oracle(g: Graph, x: torch.Tensor, num_layers: int) -> torch.Tensor:
    """LightGCN readout ``mean(x, Ax, ..., A^L x)`` in float64 by :func:`spmm_oracle`'s product.

    Shapes:
        g: [N, N] graph, x: [N, D] -> [N, D] float64 on x's device.
    """
    h = acc = x.detach().double()
    for _ in range(num_layers):
        h = spmm_oracle(g, h)
        acc = acc + h
    return acc / (num_layers + 1)


class RQOracle(NamedTuple):
    """:func:`rq_oracle`'s result, every field [N, L] on the inputs' device."""

    codes: torch.Tensor  # int64: the float64 argmin (lowest index among equal distances)
    margin: torch.Tensor  # float64: best distance of a codeword differing (as a vector) from the winner - best
    scale: torch.Tensor  # float64: (||r|| + max_j ||c_j||)^2, the size of any distance's rounding error
    gap: torch.Tensor  # float64: distance of the given code - best (on the oracle's path); zeros without codes


def _exact_min(rr: torch.Tensor, c: torch.Tensor, cand: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per row, the exact ``min ||r - c_j||^2`` over the candidate ``j`` (``inf`` where none) and the lowest
    ``j`` attaining it."""
    i, j = cand.nonzero(as_tuple=True)
    dist = ((rr[i] - c[j]) ** 2).sum(1)
    best = torch.full((rr.shape[0],), float("inf"), dtype=torch.float64, device=rr.device)
    best = best.scatter_reduce(0, i, dist, "amin")
    at = dist == best[i]
    arg = torch.full((rr.shape[0],), c.shape[0], dtype=torch.int64, device=rr.device)
    return best, arg.scatter_reduce(0, i[at], j[at], "amin")


def rq_oracle(x: torch.Tensor, codebooks: torch.Tensor, codes: Optional[torch.Tensor] = None, *,
              chunk_elems: int = 1 << 22) -> RQOracle:
    """Residual quantization in float64 with exact distances ``||r - c||^2`` (a difference of vectors, so
    identical codewords get identical distances and the lowest index wins), plus each choice's margin.

    The float64 matmul form ``||r||^2 - 2 r.c + ||c||^2`` only narrows the search: every codeword it puts within
    twice its rounding bound of the smallest value is measured exactly, which includes every codeword whose
    exact distance could be the best (then likewise for the best codeword differing from the winner, for
    the margin). Computed on ``x``'s device over row chunks of at most ``chunk_elems`` [rows, K] elements.

    Shapes:
        x: [N, D], codebooks: [L, K, D], codes: [N, L] or None -> :class:`RQOracle` of [N, L] tensors.
    """
    x64 = x.detach().double()
    cb64 = codebooks.detach().to(device=x64.device, dtype=torch.float64)
    n = x64.shape[0]
    num_levels, k, d = cb64.shape
    rows = max(1, chunk_elems // max(1, k))
    dev = x64.device
    out = torch.empty(n, num_levels, dtype=torch.int64, device=dev)
    margin = torch.empty(n, num_levels, dtype=torch.float64, device=dev)
    scale = torch.empty(n, num_levels, dtype=torch.float64, device=dev)
    gap = torch.zeros(n, num_levels, dtype=torch.float64, device=dev)
    codes = None if codes is None else codes.to(dev)
    eps = torch.finfo(torch.float64).eps
    r = x64.clone()
    for lvl in range(num_levels):
        c = cb64[lvl]
        csq = (c * c).sum(1)
        cmax = csq.max().sqrt()
        group = torch.unique(c, dim=0, return_inverse=True)[1]  # equal ids <=> identical codewords
        for i0 in range(0, n, rows):
            rr = r[i0:i0 + rows]
            sc = (rr.norm(dim=1) + cmax) ** 2
            bound = (8 * (d + 4) * eps * sc)[:, None]  # >= twice the rounding of the matmul form
            approx = (rr * rr).sum(1, keepdim=True) - 2 * (rr @ c.t()) + csq[None, :]
            dbest, best = _exact_min(rr, c, approx <= approx.min(1, keepdim=True).values + bound)
            other = group[None, :] != group[best][:, None]
            approx = approx.masked_fill(~other, float("inf"))
            second, _ = _exact_min(rr, c, other & (approx <= approx.min(1, keepdim=True).values + bound))
            margin[i0:i0 + rows, lvl] = second - dbest
            scale[i0:i0 + rows, lvl] = sc
            out[i0:i0 + rows, lvl] = best
            if codes is not None:
                chosen = ((rr - c[codes[i0:i0 + rows, lvl]]) ** 2).sum(1)
                gap[i0:i0 + rows, lvl] = chosen - dbest
        r = r - c[out[:, lvl]]
    return RQOracle(out, margin, scale, gap)


def rq_decode_oracle(x: torch.Tensor, codebooks: torch.Tensor,
                     codes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """float64 ``(quantized, residual_sq)`` implied by ``codes``: the sum of the chosen codewords, and
    ``||x - sum_{j<=k} C_j[codes[:, j]]||^2`` per level k; on ``x``'s device.

    Shapes:
        x: [N, D], codebooks: [L, K, D], codes: [N, L] -> quantized [N, D] f64, residual_sq [N, L] f64.
    """
    x64 = x.detach().double()
    cb64 = codebooks.detach().to(device=x64.device, dtype=torch.float64)
    codes = codes.to(x64.device)
    r = x64.clone()
    rsq = torch.empty(codes.shape, dtype=torch.float64, device=x64.device)
    for lvl in range(cb64.shape[0]):
        r = r - cb64[lvl].index_select(0, codes[:, lvl])
        rsq[:, lvl] = (r * r).sum(1)
    return x64 - r, rsq


def code_usage_oracle(z: torch.Tensor, codes: torch.Tensor, codebooks: torch.Tensor, temperature: float, mode: str,
                      grad_rho: torch.Tensor, *, chunk_elems: int = 1 << 22) -> Tuple[torch.Tensor, ...]:
    """float64 ``(rho, grad_z, grad_codebooks)`` of ``code_usage`` for the loss ``<rho, grad_rho>``: the
    reference (:mod:`motorec.reference.code_usage`) on upcast inputs, on ``z``'s device, over row chunks of at
    most ``chunk_elems`` [rows, K] entries. Rows enter ``rho`` and the gradients as a sum (the mean's 1/N is
    linear), so a chunk of n rows is the reference on those rows with its mean rescaled by n / N; with one
    chunk the result is the reference's own.

    Shapes:
        z: [N, D], codes: [N, L], codebooks: [L, K, D], grad_rho: [L, K]
        -> rho [L, K] f64, grad_z [N, D] f64, grad_codebooks [L, K, D] f64
    """
    z64 = z.detach().double()
    cb64 = codebooks.detach().to(device=z64.device, dtype=torch.float64)
    g64 = grad_rho.detach().to(device=z64.device, dtype=torch.float64)
    codes = codes.to(z64.device)
    n, k = z64.shape[0], cb64.shape[1]
    if n == 0:
        rho, aux = _ref_code_usage.code_usage_forward(z64, codes, cb64, temperature, mode)
        return (rho, *_ref_code_usage.code_usage_backward(g64, z64, codes, cb64, aux, temperature, mode))
    rows = max(1, chunk_elems // max(1, k))
    rho = torch.zeros(cb64.shape[0], k, dtype=torch.float64, device=z64.device)
    gz = torch.empty_like(z64)
    gc = torch.zeros_like(cb64)
    for s in range(0, n, rows):
        zc, cc = z64[s:s + rows], codes[s:s + rows]
        w = zc.shape[0] / n
        r, aux = _ref_code_usage.code_usage_forward(zc, cc, cb64, temperature, mode)
        rho += r * w
        a, b = _ref_code_usage.code_usage_backward(g64 * w, zc, cc, cb64, aux, temperature, mode)
        gz[s:s + rows] = a
        gc += b
    return rho, gz, gc


# ------------------------------------------------------------------------------------------ near-tie check
class CodeCheck(NamedTuple):
    """:func:`check_codes`'s result."""

    excused: torch.Tensor  # [N, L] bool on CPU: the oracle's margin there is within rounding (a near-tie)
    differing_rows: int  # rows whose codes differ from the oracle's (each within rounding at its first difference)


def check_codes(codes: torch.Tensor, x: torch.Tensor, codebooks: torch.Tensor, *, rounding: float,
                max_excused: Optional[float] = None, oracle: Optional[RQOracle] = None) -> CodeCheck:
    """Raise :class:`CheckFailed` unless ``codes`` are the float64 nearest codewords up to rounding.

    Computes every choice's float64 margin (:func:`rq_oracle`) instead of skipping rows. Positions whose margin
    is at most ``rounding * (||r|| + max_j ||c_j||)^2`` are near-ties (``excused``; ``rounding`` is relative,
    e.g. ``2 * D * eps`` of the working precision). For each row whose codes differ from the oracle's, take the
    first level ``k`` where they do (the residual entering level k is then the oracle's): that position must be
    a near-tie, and the chosen codeword's squared distance may exceed the best one's by at most
    ``rounding * (||r|| + max(||c_best||, ||c_chosen||))^2``, the rounding of comparing those two distances.
    So away from near-ties the codes are exact, the lowest index of identical codewords included. Later levels
    of such a row follow a different residual and are not compared. With ``max_excused``, more than
    ``max(3, max_excused * N)`` rows holding a near-tie fail the check (a tolerance so loose that the check is
    vacuous).

    ``oracle``: :func:`rq_oracle` of ``(x, codebooks)`` when the caller already has it (benchmarks check many
    providers on one input).

    Shapes:
        codes: [N, L] int64, x: [N, D], codebooks: [L, K, D] -> :class:`CodeCheck` (excused [N, L]).
    """
    n = x.shape[0]
    num_levels, k_size, _ = codebooks.shape
    if tuple(codes.shape) != (n, num_levels):
        raise CheckFailed(f"codes: shape {tuple(codes.shape)} != reference {(n, num_levels)}")
    if codes.dtype != torch.int64:
        raise CheckFailed(f"codes: dtype {codes.dtype}, expected torch.int64")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= k_size):
        raise CheckFailed(f"codes: out of range [0, {k_size}): min {int(codes.min())}, max {int(codes.max())}")
    orc = rq_oracle(x, codebooks) if oracle is None else oracle
    codes = codes.to(orc.codes.device)
    excused = orc.margin <= rounding * orc.scale
    diff = codes != orc.codes
    rows = diff.any(1).nonzero().squeeze(1)
    if rows.numel():
        first = diff[rows].int().argmax(1)  # first differing level per row
        cb64 = codebooks.detach().to(device=orc.codes.device, dtype=torch.float64)
        x64 = x.detach().to(device=orc.codes.device, dtype=torch.float64)
        r = x64.index_select(0, rows).clone()
        oc, pc = orc.codes.index_select(0, rows), codes.index_select(0, rows)
        for lvl in range(num_levels):
            before = (first > lvl).unsqueeze(1)
            r -= torch.where(before, cb64[lvl].index_select(0, oc[:, lvl]), torch.zeros_like(r))
        c_best = cb64[first, oc.gather(1, first[:, None]).squeeze(1)]
        c_chosen = cb64[first, pc.gather(1, first[:, None]).squeeze(1)]
        gap = ((r - c_chosen) ** 2).sum(1) - ((r - c_best) ** 2).sum(1)
        pair = r.norm(dim=1) + torch.maximum(c_best.norm(dim=1), c_chosen.norm(dim=1))
        bound = rounding * pair * pair

        def fail_where(bad: torch.Tensor, what: str, detail) -> None:
            if bool(bad.any()):
                j = int(bad.nonzero()[0, 0])
                lvl = int(first[j])
                raise CheckFailed(
                    f"codes: {int(bad.sum())} of {n} rows {what} (e.g. row {int(rows[j])} level {lvl}: code "
                    f"{int(pc[j, lvl])} vs {int(oc[j, lvl])}, {detail(j)}oracle margin "
                    f"{float(orc.margin[rows[j], lvl]):.3g})")

        fail_where(gap > bound, "pick a codeword farther than the float64 best beyond rounding",
                   lambda j: f"distance gap {float(gap[j]):.3g} > bound {float(bound[j]):.3g}, ")
        # Within the bound but decided beyond rounding: only an identical codeword at another index gets here.
        fail_where(~excused[rows, first], "differ from the float64 codes where the choice is not a near-tie "
                   "(identical codewords resolve to the lowest index)", lambda j: "above rounding: ")
    num_excused = int(excused.any(1).sum())
    if max_excused is not None and num_excused > max(3, max_excused * n):
        raise CheckFailed(f"codes: {num_excused} of {n} rows excused as near-ties (more than "
                          f"{max_excused:.0%}): the rounding bound is too loose to check anything")
    return CodeCheck(excused.cpu(), int(rows.numel()))


# ---------------------------------------------------------------------------------------------- host syncs
class HostSyncError(AssertionError):
    """An op that would block the host on the device (or has a data-dependent output shape) ran inside
    :func:`no_host_sync`."""


def _sync_ops():
    aten = torch.ops.aten
    names = ("_local_scalar_dense", "item", "is_nonzero", "equal", "nonzero", "argwhere", "masked_select",
             "bincount", "_unique", "_unique2", "unique_dim", "unique_consecutive", "unique_dim_consecutive")
    return {getattr(aten, n) for n in names if hasattr(aten, n)}


_SYNC_PACKETS = None
_BOOL_INDEX_OPS = ("index", "index_put", "index_put_", "_index_put_impl_", "_unsafe_index_put")


def _sync_reason(func, args, kwargs) -> Optional[str]:
    global _SYNC_PACKETS
    if _SYNC_PACKETS is None:
        _SYNC_PACKETS = _sync_ops()
    packet = func.overloadpacket
    if packet in _SYNC_PACKETS:
        return "reads a value back to the host" if packet in (torch.ops.aten._local_scalar_dense,
                                                              torch.ops.aten.item) else \
            "has a data-dependent output shape (the host must read a count first)"
    if packet is torch.ops.aten.repeat_interleave and func.name().endswith("Tensor") \
            and kwargs.get("output_size") is None:
        return "repeat_interleave with tensor repeats and no output_size has a data-dependent output shape"
    if packet.__name__ in _BOOL_INDEX_OPS and func.namespace == "aten":
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in (indices or ())):
            return "boolean-mask indexing (an implicit nonzero: data-dependent shape)"
    return None


class no_host_sync(TorchDispatchMode):  # noqa: N801 (used as a context manager, like torch.no_grad)
    """Context manager that raises :class:`HostSyncError` on any op that makes the host wait for the device,
    so a training step that passes under it on the CPU issues no blocking device-to-host reads on a GPU.

    Caught: ``aten._local_scalar_dense`` and ``aten.item`` (``.item()``, ``int(t)``, ``float(t)``, ``bool(t)``,
    ``if t:``), ``is_nonzero``, ``equal``; data-dependent output shapes: ``nonzero``/``argwhere`` (``torch.where(mask)``),
    ``masked_select``, ``bincount``, ``unique*``, ``repeat_interleave`` with tensor repeats and no
    ``output_size``, and indexing or index assignment with a boolean/uint8 mask (``t[mask]``, ``t[mask] = v``).
    Not caught: device copies (``.cpu()``, ``.tolist()`` on CPU tensors are not ops that differ on a CPU run).

    Custom ops defined in Python (``torch.library.custom_op``, e.g. every ``motorec::*`` op) are entered: their
    implementation, which picks a backend, runs under the mode, so a sync in a Triton launcher or in the torch
    reference is seen. Compiled ``motorec_C`` kernels are CPU-only and run opaquely. ``allow`` names aten op
    packets to let through (e.g. ``("bincount",)``).
    """

    def __init__(self, allow: Sequence[str] = ()) -> None:
        super().__init__()
        self.allow = frozenset(allow)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        reason = _sync_reason(func, args, kwargs)
        if reason is not None and func.overloadpacket.__name__ not in self.allow:
            raise HostSyncError(f"{func} {reason}")
        opdef = _custom_opdef(func)
        if opdef is not None:
            with self:
                return opdef._init_fn(*args, **kwargs)
        return func(*args, **kwargs)


def _custom_opdef(func):
    try:
        from torch._library.custom_ops import _maybe_get_opdef
    except ImportError:  # pragma: no cover - older torch: motorec ops then run opaquely
        return None
    return _maybe_get_opdef(func)
