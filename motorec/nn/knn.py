"""Item-item k-nearest-neighbour graphs (cosine). Two builders, one output (a normalized
:class:`motorec.Graph` on the device of the input, ready for :func:`motorec.ops.spmm`):

* ``exact``: blockwise brute force; the N x N similarity matrix is never formed, only [block_size, N] tiles,
  each reduced to its top-k at once. O(N^2 d) work: about 24 s at 100k items (64-d) on a 2-core CPU and
  roughly 30-40 minutes at 1M.
* ``ivf``: an inverted file (the FAISS ``IndexIVFFlat`` idea, in torch): spherical k-means splits the items
  into ``nlist`` lists (the coarse quantizer: each item's list is its nearest centroid, a one-level residual
  code); the items of list ``l`` are compared, as one [|l|, candidates] tile, with the items of the ``nprobe``
  lists whose centroids are nearest to ``l``'s. Work ``~ N^2 d nprobe / nlist``; neighbours outside the probed
  lists are missed (recall < 1, measured in ``benchmarks/bench_memory.py``).

``method="auto"`` (the default) takes ``exact`` below :data:`APPROX_MIN_ITEMS` items and ``ivf`` from there;
:func:`explain` says which one a catalog gets and why. Probing is per list, not per query (as FAISS does):
every query of a list shares one candidate set, so the search is a sequence of dense matmul + top-k tiles
with no per-query gather or merge; measured at 100k items that was 1.5-2x faster than per-query probing at
equal recall on this CPU.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from motorec.graph import Graph
from motorec.ops._common import check_float_matrix

__all__ = ["knn_graph", "attach_items", "knn_topk", "knn_topk_ivf", "plan", "explain", "KnnPlan", "METHODS",
           "APPROX_MIN_ITEMS"]

log = logging.getLogger(__name__)

# Similarity tile budget: block_size x N stays around 16M floats (64 MiB) when block_size is automatic.
_TILE_BUDGET = 1 << 24

METHODS = ("auto", "exact", "ivf")
# auto: exact below this many items, ivf from it. 200k items is ~100 s exact on a 2-core CPU; the ivf build
# there is several times faster at a recall near 0.98 (benchmarks/README.md).
APPROX_MIN_ITEMS = int(os.environ.get("MOTOREC_KNN_APPROX_MIN", "200000"))
# Lists probed as a fraction of nlist: the ivf default scans ~ this share of all pairs.
_PROBE_FRACTION = 0.05
_MIN_PROBE = 8
_LISTS_PER_SQRT_N = 2
_KMEANS_ITERS = 10
_KMEANS_SAMPLE_PER_LIST = 32


def _check_k(k) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")


def _block(block_size: Optional[int], num_keys: int) -> int:
    if block_size is None:
        return max(1, _TILE_BUDGET // max(num_keys, 1))
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1 or None, got {block_size!r}")
    return block_size


def _unit_rows(x: Tensor) -> Tensor:
    w = x.detach()
    w = w.double() if w.dtype == torch.float64 else w.float()
    return F.normalize(w, dim=1)  # zero rows stay zero (similarity 0 to everything)


def knn_topk(query: Tensor, keys: Tensor, k: int, *, block_size: Optional[int] = None,
             exclude_self: bool = False) -> Tuple[Tensor, Tensor]:
    """Cosine top-``k`` of every ``query`` row among ``keys`` rows, blockwise over query rows.

    ``exclude_self`` (query and keys the same set, same order) drops each row's own index. ``k`` is capped at
    the number of candidates. Ties in similarity go to whichever index ``torch.topk`` returns.

    Shapes:
        query: [M, d], keys: [N, d] -> (sim [M, k'] float descending, idx [M, k'] int64), k' = min(k, candidates)
    """
    check_float_matrix(query, "query")
    check_float_matrix(keys, "keys")
    _check_k(k)
    if query.shape[1] != keys.shape[1]:
        raise ValueError(f"query has d={query.shape[1]} but keys have d={keys.shape[1]}")
    if query.device != keys.device:
        raise ValueError(f"query is on {query.device} but keys are on {keys.device}")
    if exclude_self and query.shape[0] != keys.shape[0]:
        raise ValueError("exclude_self needs query and keys to be the same rows")
    m, n = query.shape[0], keys.shape[0]
    kk = min(k, n - 1 if exclude_self else n)
    q, c = _unit_rows(query), _unit_rows(keys)
    if m == 0 or kk <= 0:
        return (torch.empty(m, max(kk, 0), dtype=q.dtype, device=q.device),
                torch.empty(m, max(kk, 0), dtype=torch.int64, device=q.device))
    bs = _block(block_size, n)
    sims, idxs = [], []
    for s in range(0, m, bs):
        e = min(s + bs, m)
        tile = q[s:e] @ c.t()
        if exclude_self:
            r = torch.arange(e - s, device=q.device)
            tile[r, r + s] = float("-inf")
        v, i = torch.topk(tile, kk, dim=1)
        sims.append(v)
        idxs.append(i)
    return torch.cat(sims), torch.cat(idxs)


@dataclass(frozen=True)
class KnnPlan:
    """Which builder a self-kNN graph over ``num_items`` items uses, with its parameters and the reason."""

    method: str  # "exact" or "ivf"
    num_items: int
    k: int
    nlist: int = 0
    nprobe: int = 0
    reason: str = ""

    @property
    def scanned_fraction(self) -> float:
        """Approximate share of all item pairs compared (1.0 for exact)."""
        return 1.0 if self.method == "exact" else min(1.0, self.nprobe / max(self.nlist, 1))

    def __str__(self) -> str:
        head = f"knn_graph(N={self.num_items:,}, k={self.k}): {self.method}"
        if self.method == "ivf":
            head += (f" (nlist={self.nlist}, nprobe={self.nprobe}: about {100 * self.scanned_fraction:.1f}% of "
                     f"the pairs compared)")
        return f"{head}: {self.reason}"


def _check_method(method) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")


def _check_opt_int(v, name: str) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise ValueError(f"{name} must be an int >= 1 or None, got {v!r}")


def plan(num_items: int, k: int = 10, *, method: str = "auto", nlist: Optional[int] = None,
         nprobe: Optional[int] = None) -> KnnPlan:
    """The builder :func:`knn_graph` uses for ``num_items`` items, its ``nlist``/``nprobe``, and why.

    ``auto``: ``exact`` below :data:`APPROX_MIN_ITEMS` (env ``MOTOREC_KNN_APPROX_MIN``), ``ivf`` from there.
    ``ivf`` defaults: ``nlist = round(2 sqrt(N))`` (lists of about sqrt(N) / 2 items: 2000 lists at 1M
    items, where the assignment to centroids costs ~1/30 of the search), ``nprobe = max(8, ceil(0.05 nlist))``
    (about 5% of all pairs compared). Measured on the synthetic 1M-item, 64-d catalog: recall@10 0.986
    against the exact graph, where 1000 lists at the same 5% gave 0.962 (benchmarks/README.md).
    """
    _check_method(method)
    _check_k(k)
    _check_opt_int(nlist, "nlist")
    _check_opt_int(nprobe, "nprobe")
    if isinstance(num_items, bool) or not isinstance(num_items, int) or num_items < 0:
        raise ValueError(f"num_items must be an int >= 0, got {num_items!r}")
    if method == "exact":
        return KnnPlan("exact", num_items, k, reason="asked for (method='exact')")
    if method == "auto" and num_items < APPROX_MIN_ITEMS:
        return KnnPlan("exact", num_items, k, reason=(
            f"N < {APPROX_MIN_ITEMS:,} (APPROX_MIN_ITEMS): the exact O(N^2 d) build is affordable and has "
            f"recall 1; method='ivf' forces the approximate one"))
    nl = nlist or max(1, int(round(_LISTS_PER_SQRT_N * math.sqrt(max(num_items, 1)))))
    nl = min(nl, max(num_items, 1))
    npb = min(nprobe or max(_MIN_PROBE, math.ceil(_PROBE_FRACTION * nl)), nl)
    why = ("asked for (method='ivf')" if method == "ivf" else
           f"N >= {APPROX_MIN_ITEMS:,} (APPROX_MIN_ITEMS): the exact build grows as N^2 (about 30-40 min at "
           f"1M items on a 2-core CPU); method='exact' forces it")
    return KnnPlan("ivf", num_items, k, nlist=nl, nprobe=npb, reason=why)


def explain(num_items: Optional[int] = None, k: int = 10, **kwargs) -> str:
    """Readable account of the kNN builder choice, like :func:`motorec.ops.explain`: for ``num_items`` items,
    or (``None``) for a few catalog sizes around the threshold."""
    if num_items is not None:
        return str(plan(num_items, k, **kwargs))
    sizes = sorted({10_000, max(APPROX_MIN_ITEMS - 1, 0), APPROX_MIN_ITEMS, 1_000_000})
    return "\n".join([f"motorec.nn.knn: auto takes exact below {APPROX_MIN_ITEMS:,} items, ivf from there"]
                     + [f"  {plan(n, k, **kwargs)}" for n in sizes])


def _spherical_kmeans(x: Tensor, nlist: int, *, iters: int, sample: int, generator: torch.Generator) -> Tensor:
    """``nlist`` unit centroids from ``x``'s unit rows (a random sample of ``sample`` rows, ``iters`` Lloyd
    steps on cosine; an emptied centroid keeps its place). Shapes: x [N, d] -> [nlist, d]."""
    n = x.shape[0]
    pick = torch.randperm(n, generator=generator)[:max(nlist, min(n, sample))].to(x.device)
    s = x.index_select(0, pick)
    c = s[:nlist].clone()
    for _ in range(iters):
        a = _nearest(s, c)
        new = torch.zeros_like(c).index_add_(0, a, s)
        empty = torch.bincount(a, minlength=nlist) == 0
        c = torch.where(empty[:, None], c, F.normalize(new, dim=1))
    return c


def _nearest(x: Tensor, c: Tensor) -> Tensor:
    rows = max(1, _TILE_BUDGET // max(c.shape[0], 1))
    return torch.cat([(x[s:s + rows] @ c.t()).argmax(1) for s in range(0, x.shape[0], rows)]) if x.shape[0] else \
        torch.empty(0, dtype=torch.int64, device=x.device)


def knn_topk_ivf(x: Tensor, k: int, *, nlist: Optional[int] = None, nprobe: Optional[int] = None,
                 seed: int = 0, kmeans_iters: int = _KMEANS_ITERS) -> Tuple[Tensor, Tensor]:
    """Approximate cosine top-``k`` of every row of ``x`` among the other rows (itself excluded), through an
    inverted file: see the module docstring and :func:`plan` for ``nlist``/``nprobe``. Deterministic for a
    ``seed``. A row whose probed lists hold fewer than ``k`` other rows is searched against all rows.

    Shapes:
        x: [N, d] -> (sim [N, k'] float descending, idx [N, k'] int64), k' = min(k, N - 1)
    """
    check_float_matrix(x, "x")
    _check_k(k)
    n = x.shape[0]
    p = plan(n, k, method="ivf", nlist=nlist, nprobe=nprobe)
    kk = min(k, max(n - 1, 0))
    xu = _unit_rows(x)
    dev = xu.device
    sims = torch.full((n, kk), float("-inf"), dtype=xu.dtype, device=dev)
    idxs = torch.zeros((n, kk), dtype=torch.int64, device=dev)
    if n == 0 or kk == 0:
        return sims, idxs
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    cent = _spherical_kmeans(xu, p.nlist, iters=kmeans_iters, sample=_KMEANS_SAMPLE_PER_LIST * p.nlist, generator=g)
    assign = _nearest(xu, cent)
    order = torch.argsort(assign, stable=True)
    counts = torch.bincount(assign, minlength=p.nlist)
    ptr = [0] + torch.cumsum(counts, 0).tolist()
    xs = xu.index_select(0, order)  # items sorted by list: every list is a contiguous block
    cc = cent @ cent.t()
    cc.fill_diagonal_(float("inf"))  # a list probes itself first: its own queries sit at columns 0..|l|-1
    probe = torch.topk(cc, p.nprobe, dim=1).indices.tolist()
    pos = torch.arange(n, device=dev)
    for lst in range(p.nlist):
        s, e = ptr[lst], ptr[lst + 1]
        if s == e:
            continue
        blocks = [(ptr[j], ptr[j + 1]) for j in probe[lst] if ptr[j + 1] > ptr[j]]
        total = sum(b - a for a, b in blocks)
        if total - 1 < kk:  # too few candidates: this list's rows search everything
            cand, self_col = pos, s
        else:
            cand, self_col = torch.cat([pos[a:b] for a, b in blocks]), 0
        keys = xs.index_select(0, cand)
        rows = max(1, _TILE_BUDGET // cand.numel())
        for q0 in range(s, e, rows):
            q1 = min(q0 + rows, e)
            tile = xs[q0:q1] @ keys.t()
            r = torch.arange(q1 - q0, device=dev)
            tile[r, r + (q0 - s) + self_col] = float("-inf")
            v, i = torch.topk(tile, kk, dim=1)
            sims[q0:q1] = v
            idxs[q0:q1] = order.index_select(0, cand.index_select(0, i.flatten())).view_as(i)
    # back from list order to item order
    out_s, out_i = torch.empty_like(sims), torch.empty_like(idxs)
    out_s[order] = sims
    out_i[order] = idxs
    return out_s, out_i


def _self_topk(x: Tensor, k: int, *, method: str, block_size: Optional[int], nlist: Optional[int],
               nprobe: Optional[int], seed: int) -> Tuple[Tensor, Tensor]:
    """Top-k of each row of ``x`` among the others, by the builder :func:`plan` picks (logged when ivf)."""
    p = plan(x.shape[0], k, method=method, nlist=nlist, nprobe=nprobe)
    if p.method == "exact":
        return knn_topk(x, x, k, block_size=block_size, exclude_self=True)
    log.info("%s", p)
    return knn_topk_ivf(x, k, nlist=p.nlist, nprobe=p.nprobe, seed=seed)


def _edge_weights(sim: Tensor, weighted: bool) -> Tensor:
    # Cosine can be negative; a negative weight would make degrees (and D^-1/2) meaningless.
    return sim.clamp_min(0.0).flatten() if weighted else torch.ones(sim.numel(), dtype=sim.dtype, device=sim.device)


def knn_graph(
    x: Tensor,
    k: int = 10,
    *,
    block_size: Optional[int] = None,
    query: Optional[Tensor] = None,
    exclude_self: bool = True,
    symmetric: bool = True,
    normalize: bool = True,
    weighted: bool = False,
    method: str = "auto",
    nlist: Optional[int] = None,
    nprobe: Optional[int] = None,
    seed: int = 0,
) -> Graph:
    r"""Cosine k-nearest-neighbour graph over the rows of ``x`` (items), as a :class:`motorec.Graph`.

    Row i of the directed graph ``A`` has an entry at each of i's top-``k`` most cosine-similar rows (itself
    excluded with ``exclude_self``), weight 1 (or the similarity clamped at 0 with ``weighted``).
    ``symmetric``: ``A + A^T`` (mutual neighbours get weight 2), coalesced. ``normalize``:
    ``D^-1/2 A D^-1/2`` with ``D`` the row sums (for ``symmetric=False`` every row sum is k, so that is
    ``A / k`` on rows whose neighbours also have row sum k). ``k`` is capped at N - 1 (N with self).

    ``query`` [M, d] given: :func:`attach_items` ``(x, query, k)`` instead (the N + M node graph that links
    the query rows, e.g. cold items, to their top-k rows of ``x``).

    Args:
        x: [N, d] float features, any device; the graph is built on that device.
        k: neighbours per row (>= 1).
        block_size: query rows per similarity tile of the exact builder (default: about 16M similarities).
        method: ``"auto"`` (exact below :data:`APPROX_MIN_ITEMS` items, ivf from there), ``"exact"`` or
            ``"ivf"`` (approximate; with ``exclude_self`` only). :func:`explain` ``(N)`` says what N items get.
        nlist, nprobe, seed: the ivf builder's lists, probed lists and k-means seed (defaults: :func:`plan`).

    Shapes:
        x: [N, d] -> Graph [N, N], nnz <= 2 N k (symmetric) or N k
    """
    check_float_matrix(x, "x")
    _check_k(k)
    _check_method(method)
    if query is not None:
        return attach_items(x, query, k, block_size=block_size, normalize=normalize, weighted=weighted,
                            method=method, nlist=nlist, nprobe=nprobe, seed=seed)
    n = x.shape[0]
    if exclude_self:
        sim, idx = _self_topk(x, k, method=method, block_size=block_size, nlist=nlist, nprobe=nprobe, seed=seed)
    elif method == "ivf":
        raise ValueError("method='ivf' builds graphs without self loops only (exclude_self=True)")
    else:
        sim, idx = knn_topk(x, x, k, block_size=block_size, exclude_self=False)
    row = torch.arange(n, device=x.device).repeat_interleave(idx.shape[1])
    col = idx.flatten()
    w = _edge_weights(sim, weighted)
    if symmetric:
        row, col, w = torch.cat([row, col]), torch.cat([col, row]), torch.cat([w, w])
    return Graph._from_coo(row, col, w, n, n, symmetric=True if symmetric else None, normalize=normalize,
                           index_dtype=torch.int64, dtype=torch.float32)


def attach_items(
    base: Tensor,
    new: Tensor,
    k: int = 10,
    *,
    block_size: Optional[int] = None,
    include_base: bool = True,
    base_k: Optional[int] = None,
    reverse: bool = True,
    normalize: bool = True,
    weighted: bool = False,
    method: str = "auto",
    nlist: Optional[int] = None,
    nprobe: Optional[int] = None,
    seed: int = 0,
) -> Graph:
    r"""Attach new (cold) items to existing ones: the graph over N + M nodes (existing items ``0..N-1``,
    new items ``N..N+M-1``) where each new item has edges to its top-``k`` existing items by cosine.

    New items are never linked to each other. Edge sets, added and coalesced, then normalized together
    (``D^-1/2 A D^-1/2``, row sums):

    * ``include_base``: the symmetric kNN graph among existing items (:func:`knn_graph` with ``base_k``,
      default ``k``), so the result is a drop-in replacement of the warm item-item graph;
    * new -> existing: row ``N + j`` gets its top-``k`` existing items;
    * ``reverse``: the transposed edges existing -> new, making the graph symmetric (cold items then also
      feed their neighbours, and the warm rows' degrees change). With ``reverse=False`` the existing rows are
      exactly :func:`knn_graph` ``(base)``'s and new items only receive messages.

    ``method``/``nlist``/``nprobe``/``seed`` choose the builder of the existing items' graph as in
    :func:`knn_graph`; the new items' top-k among existing ones is always exact (M x N work, M small).

    Shapes:
        base: [N, d], new: [M, d] -> Graph [N + M, N + M]
    """
    check_float_matrix(base, "base")
    check_float_matrix(new, "new")
    _check_k(k)
    if base_k is not None:
        _check_k(base_k)
    _check_method(method)
    n, m = base.shape[0], new.shape[0]
    sim, idx = knn_topk(new, base, k, block_size=block_size)
    rows = [torch.arange(n, n + m, device=base.device).repeat_interleave(idx.shape[1])]
    cols = [idx.flatten()]
    ws = [_edge_weights(sim, weighted)]
    if reverse:
        rows, cols, ws = rows + [cols[0]], cols + [rows[0]], ws + [ws[0]]
    if include_base:
        bsim, bidx = _self_topk(base, base_k or k, method=method, block_size=block_size, nlist=nlist,
                                nprobe=nprobe, seed=seed)
        br = torch.arange(n, device=base.device).repeat_interleave(bidx.shape[1])
        bc = bidx.flatten()
        bw = _edge_weights(bsim, weighted)
        rows += [br, bc]
        cols += [bc, br]
        ws += [bw, bw]
    total = n + m
    return Graph._from_coo(torch.cat(rows), torch.cat(cols), torch.cat(ws), total, total,
                           symmetric=True if reverse else None, normalize=normalize,
                           index_dtype=torch.int64, dtype=torch.float32)
