"""Item-item k-nearest-neighbour graphs (cosine), built blockwise: the N x N similarity matrix is never
formed, only [block_size, N] tiles, each reduced to its top-k at once. Output: a normalized
:class:`motorec.Graph` on the device of the input, ready for :func:`motorec.ops.spmm`."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from motorec.graph import Graph
from motorec.ops._common import check_float_matrix

__all__ = ["knn_graph", "attach_items", "knn_topk"]

# Similarity tile budget: block_size x N stays around 16M floats (64 MiB) when block_size is automatic.
_TILE_BUDGET = 1 << 24


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
        block_size: query rows per similarity tile (default: about 16M similarities per tile).

    Shapes:
        x: [N, d] -> Graph [N, N], nnz <= 2 N k (symmetric) or N k
    """
    check_float_matrix(x, "x")
    _check_k(k)
    if query is not None:
        return attach_items(x, query, k, block_size=block_size, normalize=normalize, weighted=weighted)
    n = x.shape[0]
    sim, idx = knn_topk(x, x, k, block_size=block_size, exclude_self=exclude_self)
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

    Shapes:
        base: [N, d], new: [M, d] -> Graph [N + M, N + M]
    """
    check_float_matrix(base, "base")
    check_float_matrix(new, "new")
    _check_k(k)
    if base_k is not None:
        _check_k(base_k)
    n, m = base.shape[0], new.shape[0]
    sim, idx = knn_topk(new, base, k, block_size=block_size)
    rows = [torch.arange(n, n + m, device=base.device).repeat_interleave(idx.shape[1])]
    cols = [idx.flatten()]
    ws = [_edge_weights(sim, weighted)]
    if reverse:
        rows, cols, ws = rows + [cols[0]], cols + [rows[0]], ws + [ws[0]]
    if include_base:
        bsim, bidx = knn_topk(base, base, base_k or k, block_size=block_size, exclude_self=True)
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
