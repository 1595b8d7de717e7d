"""``motorec.Graph``: a normalized sparse adjacency in CSR, the input of ``spmm`` and ``propagate``.

Built with torch ops on the target device (``unique``/``sort``/``bincount``/``cumsum``): no Python loop over
edges and no scipy. Stored as plain contiguous tensors (``rowptr`` int64, ``col`` int64 or int32, ``val``
float32), never as views of a torch sparse tensor, so they pass ``torch.library.opcheck`` and
``torch.compile``.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["Graph", "MergePath", "merge_path_partition", "cached_merge_path"]

_INT32_MAX = 2**31 - 1


def _check_index(t: Tensor, name: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer ids, got {type(t).__name__}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must have an integer dtype (int32 or int64), got {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")


def _check_csr(rowptr: Tensor, col: Tensor, val: Tensor, num_cols: int) -> None:
    """Structure of a CSR: dtypes, lengths, monotone rowptr, every column in [0, num_cols)."""
    _check_index(rowptr, "rowptr")
    _check_index(col, "col")
    if not isinstance(val, Tensor):
        raise TypeError(f"val must be a torch.Tensor, got {type(val).__name__}")
    if isinstance(num_cols, bool) or not isinstance(num_cols, int) or num_cols < 0:
        raise ValueError(f"num_cols must be a non-negative int, got {num_cols!r}")
    if not (rowptr.device == col.device == val.device):
        raise ValueError(f"rowptr, col and val must be on one device, got {rowptr.device}, {col.device}, {val.device}")
    if rowptr.numel() < 1:
        raise ValueError("rowptr must have at least one entry (num_rows + 1)")
    if int(rowptr[0]) != 0 or int(rowptr[-1]) != col.numel():
        raise ValueError(f"rowptr must start at 0 and end at nnz={col.numel()}, got {int(rowptr[0])}..{int(rowptr[-1])}")
    if rowptr.numel() > 1 and bool((rowptr.diff() < 0).any()):
        raise ValueError("rowptr must be non-decreasing")
    _check_range(col, "col", num_cols, "num_cols")
    if val.shape != col.shape:
        raise ValueError(f"val must have the shape of col {tuple(col.shape)}, got {tuple(val.shape)}")
    if not val.is_floating_point():
        raise TypeError(f"val must be floating point, got {val.dtype}")


def _check_range(t: Tensor, name: str, upper: int, upper_name: str) -> None:
    if t.numel() == 0:
        return
    lo, hi = int(t.min()), int(t.max())
    if lo < 0:
        raise ValueError(f"{name} contains a negative id ({lo}); ids must lie in [0, {upper_name}={upper})")
    if hi >= upper:
        raise ValueError(f"{name} contains id {hi}, out of range for {upper_name}={upper}")


class Graph:
    """Sparse matrix ``A`` [num_rows, num_cols] in CSR, usually the normalized LightGCN adjacency.

    For a user-item graph (:meth:`from_interactions`) the nodes are users first, then items:
    node ``u`` is user ``u`` and node ``num_users + i`` is item ``i``; ``A = D^-1/2 [[0, R], [R^T, 0]] D^-1/2``.

    Attributes:
        rowptr: [num_rows + 1] int64, col: [nnz] int64 or int32, val: [nnz] float32.
        symmetric: ``A == A^T``; the backward of ``spmm``/``propagate`` then reuses the same CSR.
        num_users, num_items: set for user-item graphs (else ``None``).
    """

    def __init__(
        self,
        rowptr: Tensor,
        col: Tensor,
        val: Tensor,
        num_cols: int,
        *,
        symmetric: bool = False,
        num_users: Optional[int] = None,
        num_items: Optional[int] = None,
        check: bool = True,
    ) -> None:
        if check:  # a hand-made CSR with an out-of-range column would make every kernel read out of bounds
            _check_csr(rowptr, col, val, num_cols)
        self.rowptr = rowptr.contiguous()
        self.col = col.contiguous()
        self.val = val.contiguous()
        self.num_rows = int(rowptr.numel() - 1)
        self.num_cols = int(num_cols)
        self.symmetric = bool(symmetric)
        self.num_users = num_users
        self.num_items = num_items
        self._transpose: Optional[Graph] = None

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_interactions(
        cls,
        users: Tensor,
        items: Tensor,
        num_users: int,
        num_items: int,
        *,
        device: Optional[torch.device | str] = None,
        index_dtype: torch.dtype = torch.int64,
        dtype: torch.dtype = torch.float32,
    ) -> "Graph":
        """Normalized symmetric bipartite adjacency from interaction ids.

        Repeated (user, item) pairs count once: the graph is binary, as LightGCN's. Users or items without
        interactions are isolated nodes (zero rows).

        Shapes:
            users: [E] int, items: [E] int -> Graph with (num_users + num_items) nodes and 2 * unique(E) nnz.
        """
        _check_index(users, "users")
        _check_index(items, "items")
        if users.numel() != items.numel():
            raise ValueError(f"users and items must have the same length, got {users.numel()} and {items.numel()}")
        for v, name in ((num_users, "num_users"), (num_items, "num_items")):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be a non-negative int, got {v!r}")
        _check_range(users, "users", num_users, "num_users")
        _check_range(items, "items", num_items, "num_items")
        _check_nnz(0, index_dtype)
        if index_dtype == torch.int32 and num_users + num_items > _INT32_MAX:
            # Checked before any allocation: node ids >= 2^31 would wrap silently in int32 columns.
            raise ValueError(f"num_users + num_items = {num_users + num_items} overflows int32 column indices; "
                             "use index_dtype=torch.int64")
        device = torch.device(device) if device is not None else users.device
        u = users.to(device=device, dtype=torch.int64)
        i = items.to(device=device, dtype=torch.int64)
        key = torch.unique(u * max(num_items, 1) + i)  # sorted, so edges come out grouped by user
        u = key // max(num_items, 1)
        i = key % max(num_items, 1) + num_users
        n = num_users + num_items
        _check_nnz(2 * key.numel(), index_dtype)
        row = torch.cat([u, i])
        col = torch.cat([i, u])
        return cls._from_coo(row, col, None, n, n, symmetric=True, normalize=True, index_dtype=index_dtype,
                             dtype=dtype, num_users=num_users, num_items=num_items)

    @classmethod
    def from_edge_index(
        cls,
        edge_index: Tensor,
        num_nodes: Optional[int] = None,
        *,
        edge_weight: Optional[Tensor] = None,
        normalize: bool = True,
        index_dtype: torch.dtype = torch.int64,
        dtype: torch.dtype = torch.float32,
    ) -> "Graph":
        """Graph from a PyG-style ``edge_index`` [2, E] (source, target), messages flowing source -> target.

        Row ``t`` of the CSR gathers from the sources of edges into ``t`` (PyG ``flow="source_to_target"``).
        Duplicate edges are summed. With ``normalize`` the weights become ``w / sqrt(deg(s) deg(t))`` with
        in-degrees, as PyG's ``gcn_norm(add_self_loops=False)`` used by ``LGConv``.
        """
        if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"edge_index must be a [2, E] integer tensor, got "
                             f"{tuple(edge_index.shape) if isinstance(edge_index, Tensor) else type(edge_index).__name__}")
        _check_index(edge_index[0], "edge_index")
        if num_nodes is None:
            num_nodes = int(edge_index.max()) + 1 if edge_index.numel() else 0
        _check_range(edge_index.reshape(-1), "edge_index", num_nodes, "num_nodes")
        if edge_weight is not None:
            if edge_weight.shape != (edge_index.shape[1],):
                raise ValueError(f"edge_weight must have shape [{edge_index.shape[1]}], got {tuple(edge_weight.shape)}")
            if not edge_weight.is_floating_point():
                raise TypeError(f"edge_weight must be floating point, got {edge_weight.dtype}")
        src, dst = edge_index[0].long(), edge_index[1].long()
        _check_nnz(src.numel(), index_dtype)
        g = cls._from_coo(dst, src, edge_weight, num_nodes, num_nodes, symmetric=None, normalize=normalize,
                          index_dtype=index_dtype, dtype=dtype)
        return g

    @classmethod
    def from_csr(
        cls,
        rowptr: Tensor,
        col: Tensor,
        val: Optional[Tensor] = None,
        num_cols: Optional[int] = None,
        *,
        symmetric: Optional[bool] = None,
    ) -> "Graph":
        """Wrap an existing CSR (no normalization). ``symmetric=None`` checks it; pass ``True`` only if known."""
        _check_index(rowptr, "rowptr")
        _check_index(col, "col")
        if num_cols is None:
            num_cols = rowptr.numel() - 1
        if val is None:
            val = torch.ones(col.numel(), dtype=torch.float32, device=col.device)
        _check_csr(rowptr, col, val, num_cols)
        g = cls(rowptr.long(), col, val, num_cols, symmetric=False, check=False)
        if symmetric is None:
            symmetric = g._is_symmetric()
        g.symmetric = bool(symmetric)
        return g

    @classmethod
    def _from_coo(cls, row, col, weight, num_rows, num_cols, *, symmetric, normalize, index_dtype, dtype,
                  num_users=None, num_items=None) -> "Graph":
        device = row.device
        w = (torch.ones(row.numel(), dtype=torch.float64, device=device) if weight is None
             else weight.to(device=device, dtype=torch.float64))
        # Coalesce: sort by (row, col), sum duplicates.
        key = row * max(num_cols, 1) + col
        key, inv = torch.unique(key, return_inverse=True)
        w = torch.zeros(key.numel(), dtype=w.dtype, device=device).index_add_(0, inv, w)
        row = key // max(num_cols, 1)
        col = key % max(num_cols, 1)
        if normalize:
            deg = torch.zeros(num_rows, dtype=torch.float64, device=device).index_add_(0, row, w)
            dinv = deg.pow(-0.5)
            dinv[deg == 0] = 0.0
            w = dinv[row] * w * dinv[col]
        counts = torch.bincount(row, minlength=num_rows)
        rowptr = torch.zeros(num_rows + 1, dtype=torch.int64, device=device)
        torch.cumsum(counts, 0, out=rowptr[1:])
        g = cls(rowptr, col.to(index_dtype), w.to(dtype), num_cols, symmetric=bool(symmetric),
                num_users=num_users, num_items=num_items, check=False)
        if symmetric is None:
            g.symmetric = g._is_symmetric()
        return g

    # ------------------------------------------------------------------ structure
    @property
    def nnz(self) -> int:
        return int(self.col.numel())

    @property
    def num_nodes(self) -> int:
        return self.num_rows

    @property
    def device(self) -> torch.device:
        return self.rowptr.device

    def row_indices(self) -> Tensor:
        """[nnz] int64 row id of every stored entry."""
        return torch.repeat_interleave(torch.arange(self.num_rows, device=self.device), self.rowptr.diff())

    def degree(self) -> Tensor:
        """[num_rows] int64 number of stored entries per row."""
        return self.rowptr.diff()

    def rows(self, start: int, stop: int) -> "Graph":
        """Rows ``start .. stop - 1`` as a [stop - start, num_cols] graph (its ``col`` and ``val`` views of this
        one's): a row block's product ``rows(s, e) @ x`` equals rows ``s .. e - 1`` of ``self @ x``.

        Shapes:
            -> Graph [stop - start, num_cols].
        """
        if not (0 <= start <= stop <= self.num_rows):
            raise ValueError(f"rows must satisfy 0 <= start <= stop <= num_rows={self.num_rows}, got {start}, {stop}")
        lo, hi = int(self.rowptr[start]), int(self.rowptr[stop])
        return Graph(self.rowptr[start:stop + 1] - lo, self.col[lo:hi], self.val[lo:hi], self.num_cols,
                     symmetric=False, check=False)

    def transpose(self) -> "Graph":
        """``A^T`` as a Graph, cached (``self`` when symmetric)."""
        if self.symmetric:
            return self
        if self._transpose is None:
            row = self.row_indices()
            t = Graph._from_coo(self.col.long(), row, self.val, self.num_cols, self.num_rows, symmetric=False,
                                normalize=False, index_dtype=self.col.dtype, dtype=self.val.dtype)
            t._transpose = self
            self._transpose = t
        return self._transpose

    def merge_path(self, items_per_part: int = 0) -> "MergePath":
        """The equal-work partition of this CSR for the CUDA merge-path kernels, computed once per
        ``items_per_part`` and cached with the CSR (:func:`cached_merge_path`, the cache the CUDA graph ops use).
        ``0`` picks :data:`MERGE_PATH_ITEMS`. See :func:`merge_path_partition`."""
        return cached_merge_path(self.rowptr, int(items_per_part) or MERGE_PATH_ITEMS)

    def _is_symmetric(self) -> bool:
        if self.num_rows != self.num_cols:
            return False
        row = self.row_indices()
        n = max(self.num_cols, 1)
        key = row * n + self.col.long()
        tkey = self.col.long() * n + row
        tkey, order = torch.sort(tkey)
        return bool(torch.equal(key, tkey)) and bool(torch.equal(self.val, self.val[order]))

    def to(self, device=None, *, index_dtype: Optional[torch.dtype] = None, dtype: Optional[torch.dtype] = None) -> "Graph":
        """A copy on ``device`` (and/or with other index or value dtypes); ``self`` if nothing changes."""
        device = torch.device(device) if device is not None else self.device
        index_dtype = index_dtype or self.col.dtype
        dtype = dtype or self.val.dtype
        if device == self.device and index_dtype == self.col.dtype and dtype == self.val.dtype:
            return self
        if index_dtype == torch.int32:
            _check_nnz(self.nnz, torch.int32)
            if self.num_cols > _INT32_MAX:
                raise ValueError(f"num_cols={self.num_cols} overflows int32 column indices; keep torch.int64")
        g = Graph(self.rowptr.to(device), self.col.to(device=device, dtype=index_dtype),
                  self.val.to(device=device, dtype=dtype), self.num_cols, symmetric=self.symmetric,
                  num_users=self.num_users, num_items=self.num_items,
                  check=False)
        return g

    def to_torch_sparse(self, layout=torch.sparse_csr) -> Tensor:
        """The same matrix as a torch sparse tensor (CSR by default, or ``torch.sparse_coo``)."""
        if layout == torch.sparse_csr:
            return torch.sparse_csr_tensor(self.rowptr, self.col.long(), self.val, (self.num_rows, self.num_cols),
                                           check_invariants=False)
        idx = torch.stack([self.row_indices(), self.col.long()])
        return torch.sparse_coo_tensor(idx, self.val, (self.num_rows, self.num_cols), check_invariants=False).coalesce()

    def to_dense(self) -> Tensor:
        return self.to_torch_sparse(torch.sparse_coo).to_dense()

    def __repr__(self) -> str:
        extra = f", num_users={self.num_users}, num_items={self.num_items}" if self.num_users is not None else ""
        return (f"Graph(num_rows={self.num_rows}, num_cols={self.num_cols}, nnz={self.nnz}, "
                f"symmetric={self.symmetric}, device={self.device}, index_dtype={self.col.dtype}{extra})")


def _check_nnz(nnz: int, index_dtype: torch.dtype) -> None:
    if index_dtype not in (torch.int32, torch.int64):
        raise TypeError(f"index_dtype must be torch.int32 or torch.int64, got {index_dtype}")
    if index_dtype == torch.int32 and nnz > _INT32_MAX:
        raise ValueError(f"nnz={nnz} overflows int32 column indices; use index_dtype=torch.int64")


# Merge-path items (rows + edges) per group of the CUDA merge-path kernels. A guess pending the GPU sweep
# (benchmarks/cuda_segment_sweep.py): 54k nodes / 553k edges give about 4.7k groups.
MERGE_PATH_ITEMS = 128


class MergePath(NamedTuple):
    """Equal-work partition of a CSR's merge path (Merrill & Garland, SC'16) into parts of ``items`` items.

    The merge path interleaves the ``R`` row ends with the ``nnz`` edges; part ``p`` covers path items
    ``[p * items, (p + 1) * items)``, so every part does the same work however the degrees are spread, and a
    row of any length is cut among as many parts as it needs (no separate heavy-row pass).

    Attributes:
        coords: [2, P + 1] (int32 when ``R + nnz`` fits, else int64): ``coords[0, p]`` rows finished and
            ``coords[1, p]`` edges consumed before part ``p``; ``coords[:, P] = (R, nnz)``.
        items: path items per part.
        split_rows: whether some row is cut between parts (the kernel's fix-up pass runs only then).
    """

    coords: Tensor
    items: int
    split_rows: bool

    @property
    def num_parts(self) -> int:
        return int(self.coords.shape[1]) - 1


def merge_path_partition(rowptr: Tensor, items_per_part: int) -> MergePath:
    """Split the merge path of a CSR with ``rowptr`` into parts of ``items_per_part`` items (torch ops only).

    On diagonal ``d`` the path has finished ``i`` rows and consumed ``d - i`` edges, with ``i`` the number of
    rows ``r`` whose end item comes before: ``rowptr[r + 1] + r + 1 <= d`` (strictly increasing in ``r``, so a
    ``searchsorted``), clipped to ``[max(d - nnz, 0), min(d, R)]``.

    Shapes:
        rowptr: [R + 1] int64 -> :class:`MergePath` with ``coords`` [2, P + 1], ``P = ceil((R + nnz) / items)``.
    """
    if isinstance(items_per_part, bool) or not isinstance(items_per_part, int) or items_per_part < 1:
        raise ValueError(f"items_per_part must be a positive int, got {items_per_part!r}")
    rowptr = rowptr.long()
    num_rows = rowptr.numel() - 1
    nnz = int(rowptr[-1])
    total = num_rows + nnz
    num_parts = -(-total // items_per_part)
    diag = torch.clamp(torch.arange(num_parts + 1, device=rowptr.device, dtype=torch.int64) * items_per_part,
                       max=total)
    ends = rowptr[1:] + torch.arange(1, num_rows + 1, device=rowptr.device, dtype=torch.int64)
    rows = torch.searchsorted(ends, diag, right=True)
    rows = torch.minimum(torch.maximum(rows, (diag - nnz).clamp(min=0)), diag.clamp(max=num_rows))
    edges = diag - rows
    coords = torch.stack([rows, edges])
    # A part whose first row started in an earlier part continues a split row.
    first = rows[:-1].clamp(max=max(num_rows - 1, 0))
    split = bool(((rows[:-1] < num_rows) & (edges[:-1] > rowptr[first])).any()) if num_parts > 0 else False
    if total <= _INT32_MAX:
        coords = coords.to(torch.int32)
    return MergePath(coords.contiguous(), items_per_part, split)


_MERGE_CACHE: Optional["WeakIdKeyDictionary"] = None


def cached_merge_path(rowptr: Tensor, items_per_part: int) -> MergePath:
    """:func:`merge_path_partition` of the CSR with ``rowptr``, computed once per ``rowptr`` tensor and
    ``items_per_part`` and kept while that tensor lives (weakly keyed by identity; recomputed if it was modified
    in place). Computing it reads two numbers back from the device, so the first call on a graph synchronizes
    once; later calls (every training step on the same graph) do not. :meth:`Graph.merge_path` and the CUDA
    graph ops (:mod:`motorec.ops.spmm`, :mod:`motorec.ops.propagate`) share this cache.

    Shapes:
        rowptr: [R + 1] int64 -> :class:`MergePath` (``coords`` [2, P + 1]).
    """
    global _MERGE_CACHE
    if _MERGE_CACHE is None:
        _MERGE_CACHE = WeakIdKeyDictionary()
    per = _MERGE_CACHE.get(rowptr)
    if per is None or per[0] != rowptr._version:
        per = (rowptr._version, {})
        _MERGE_CACHE[rowptr] = per
    mp = per[1].get(items_per_part)
    if mp is None:
        mp = per[1][items_per_part] = merge_path_partition(rowptr, items_per_part)
    return mp
