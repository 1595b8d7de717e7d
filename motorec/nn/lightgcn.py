"""``motorec.nn.LGConv`` and ``motorec.nn.LightGCN``: LightGCN propagation on top of :func:`motorec.ops.spmm`
and :func:`motorec.ops.propagate`."""
from __future__ import annotations

import weakref
from typing import List, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from motorec._dispatch import BACKENDS
from motorec.graph import Graph
from motorec.ops import propagate, spmm

__all__ = ["LGConv", "LightGCN", "as_graph", "csr_rows", "id_rows", "sampled_rows"]

try:  # optional: torch_sparse.SparseTensor inputs
    from torch_sparse import SparseTensor as _SparseTensor
except Exception:  # pragma: no cover - depends on the environment
    _SparseTensor = None

GraphLike = Union[Graph, Tensor, "_SparseTensor"]


def _is_torch_sparse(t) -> bool:
    return isinstance(t, Tensor) and t.layout in (torch.sparse_coo, torch.sparse_csr)


def _sparse_to_graph(a: Tensor) -> Graph:
    if a.dim() != 2:
        raise ValueError(f"a sparse adjacency must be 2-D, got shape {tuple(a.shape)}")
    if a.layout == torch.sparse_coo:
        a = a.coalesce()
        row, col = a.indices()
        val = a.values().detach()
        counts = torch.bincount(row, minlength=a.shape[0])
        rowptr = torch.zeros(a.shape[0] + 1, dtype=torch.int64, device=row.device)
        torch.cumsum(counts, 0, out=rowptr[1:])
        return Graph.from_csr(rowptr, col.contiguous(), val.float().contiguous(), a.shape[1])
    return Graph.from_csr(a.crow_indices().long().contiguous(), a.col_indices().contiguous(),
                          a.values().detach().float().contiguous(), a.shape[1])


def _sparse_tensor_to_graph(adj) -> Graph:
    rowptr, col, value = adj.csr()
    num_rows, num_cols = adj.sparse_sizes()
    if value is not None:
        value = value.detach().float().contiguous()
    return Graph.from_csr(rowptr.contiguous(), col.contiguous(), value, num_cols)


def as_graph(graph: GraphLike, num_nodes: Optional[int] = None, *, edge_weight: Optional[Tensor] = None,
             normalize: bool = True) -> Graph:
    """Convert an adjacency in any accepted form to a :class:`motorec.Graph` (uncached; see :class:`LGConv`).

    * :class:`motorec.Graph`: returned as is.
    * ``edge_index`` [2, E] integer tensor (PyG convention, messages source -> target), optional
      ``edge_weight`` [E]: ``Graph.from_edge_index``; ``normalize`` applies ``gcn_norm`` without self loops.
    * torch sparse tensor (COO or CSR) [R, C], or ``torch_sparse.SparseTensor``: the matrix ``A`` of
      ``out = A @ x``, used as given (already normalized; values carry no gradient).
    """
    if isinstance(graph, Graph):
        return graph
    if _is_torch_sparse(graph):
        return _sparse_to_graph(graph)
    if _SparseTensor is not None and isinstance(graph, _SparseTensor):
        return _sparse_tensor_to_graph(graph)
    if isinstance(graph, Tensor):
        return Graph.from_edge_index(graph, num_nodes, edge_weight=edge_weight, normalize=normalize)
    raise TypeError("graph must be a motorec.Graph, an edge_index [2, E] LongTensor, a torch sparse tensor "
                    f"(COO/CSR) or a torch_sparse.SparseTensor, got {type(graph).__name__}")


class _GraphCache:
    """One-entry cache of the Graph built from a tensor input, keyed by the tensor object (weakly held), its
    in-place version counter, and the conversion arguments: reusing the same ``edge_index`` each step
    converts it once; modifying it in place or passing another tensor rebuilds."""

    def __init__(self) -> None:
        self._refs: Tuple = ()
        self._key: Tuple = ()
        self._graph: Optional[Graph] = None

    @staticmethod
    def _version(t) -> int:
        try:
            return int(t._version)
        except Exception:  # torch_sparse.SparseTensor has no version counter
            return -1

    def get(self, graph, num_nodes, edge_weight, normalize) -> Graph:
        if isinstance(graph, Graph):
            return graph
        objs = (graph, edge_weight)
        key = (tuple(self._version(o) for o in objs if o is not None), num_nodes, normalize)
        if (self._graph is not None and len(self._refs) == len(objs) and key == self._key
                and all((r is None and o is None) or (r is not None and r() is o) for r, o in zip(self._refs, objs))):
            return self._graph
        g = as_graph(graph, num_nodes, edge_weight=edge_weight, normalize=normalize)
        self._refs = tuple(None if o is None else weakref.ref(o) for o in objs)
        self._key, self._graph = key, g
        return g


class LGConv(nn.Module):
    r"""LightGCN layer with PyG ``LGConv`` semantics: ``out = A_hat @ x``, no weights, no self loops.

    ``graph`` may be:

    * a :class:`motorec.Graph` (already normalized, e.g. ``Graph.from_interactions``): used as is;
    * an ``edge_index`` [2, E] integer tensor (optional ``edge_weight`` [E]): messages flow source ->
      target; with ``normalize=True`` the weights are ``w / sqrt(deg(src) deg(dst))`` with in-degrees (PyG's
      ``gcn_norm(add_self_loops=False)``; duplicate edges add up); with ``normalize=False`` the raw weights;
    * a torch sparse tensor (COO or CSR) or ``torch_sparse.SparseTensor`` holding the matrix ``A`` of
      ``out = A @ x``, used **as given**: it is assumed to be normalized already (PyG would normalize a
      sparse ``adj_t`` itself when ``normalize=True``; here ``normalize`` applies to ``edge_index`` only).

    Tensor inputs are converted once and cached for as long as the same tensor object (same in-place
    version) is passed again.

    Shapes:
        x: [C, D], graph: [R, C] (R = C = x.shape[0] for an edge_index) -> out [R, D]
    """

    def __init__(self, normalize: bool = True, *, backend: str = "auto") -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        self.normalize = bool(normalize)
        self.backend = backend
        self._cache = _GraphCache()

    def extra_repr(self) -> str:
        return f"normalize={self.normalize}, backend={self.backend!r}"

    def graph(self, graph: GraphLike, num_nodes: Optional[int] = None,
              edge_weight: Optional[Tensor] = None) -> Graph:
        """The (cached) :class:`motorec.Graph` this layer multiplies by for ``graph``."""
        return self._cache.get(graph, num_nodes, edge_weight, self.normalize)

    def forward(self, x: Tensor, graph: GraphLike, edge_weight: Optional[Tensor] = None) -> Tensor:
        if edge_weight is not None and not (isinstance(graph, Tensor) and not _is_torch_sparse(graph)):
            raise ValueError("edge_weight is only accepted with an edge_index graph")
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        g = self.graph(graph, x.shape[0] if x.dim() == 2 else None, edge_weight)
        return spmm(g, x, backend=self.backend)


class _History(NamedTuple):
    """What :meth:`LightGCN.forward_nodes` reads: ``layers`` ([U + I, d] per layer ``1..L-1``, no gradient), the
    items' non-ID layer-0 part ``item_extra`` ([I, d] or None) and the mask of the ID rows in layer 0."""

    layers: List[Tensor]
    item_extra: Optional[Tensor]
    item_mask: Optional[Tensor]


def id_rows(table: Tensor, idx: Tensor, sparse_grad: bool = False) -> Tensor:
    """``table[idx]`` (``index_select``), with a sparse COO gradient (``F.embedding(..., sparse=True)``, the rows
    ``idx`` only) when ``sparse_grad``, for a row-sparse optimizer such as ``torch.optim.SparseAdam``.

    Shapes:
        table: [R, d], idx: [B] int64 -> [B, d].
    """
    if sparse_grad:
        return torch.nn.functional.embedding(idx, table, sparse=True)
    return table.index_select(0, idx)


def csr_rows(graph: Graph, nodes: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """The nonzeros of rows ``nodes`` of ``graph``: ``(seg, col, val)``, nonzero ``e`` lying in row
    ``nodes[seg[e]]`` and column ``col[e]``; row by row, in CSR order.

    Shapes:
        nodes: [S] int64 -> (seg [E'] int64, col [E'] int64, val [E']), E' the rows' nonzeros.
    """
    rowptr = graph.rowptr.long()
    start = rowptr.index_select(0, nodes)
    seg, eid = _ranges(start, rowptr.index_select(0, nodes + 1) - start)
    return seg, graph.col.index_select(0, eid).long(), graph.val.index_select(0, eid)


def sampled_rows(graph: Graph, nodes: Tensor, fanout: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`csr_rows` with at most ``fanout`` nonzeros a row: a row with more keeps ``fanout`` of them by
    systematic sampling (one uniform offset ``u`` a row, positions ``floor((u + j) * c / fanout)``, ``j < fanout``,
    ``c`` the row's count: each nonzero is kept with probability ``fanout / c``, none twice) and scales their
    values by ``c / fanout``, so that a sampled row's product is unbiased. Draws from torch's global generator.
    ``fanout <= 0``: every nonzero (:func:`csr_rows`).

    Shapes:
        nodes: [S] int64 -> (seg [E'], col [E'] int64, val [E'], exact [S] bool), ``exact``: the rows kept whole.
    """
    if fanout <= 0:
        seg, col, val = csr_rows(graph, nodes)
        return seg, col, val, torch.ones(nodes.shape, dtype=torch.bool, device=nodes.device)
    rowptr = graph.rowptr.long()
    start = rowptr.index_select(0, nodes)
    count = rowptr.index_select(0, nodes + 1) - start
    seg, pos = _ranges(start, count.clamp(max=fanout))
    exact = count <= fanout
    val = graph.val
    if not bool(exact.all()):
        cnt = count.index_select(0, seg)
        cut = ~exact.index_select(0, seg)
        j = (pos - start.index_select(0, seg)).double()
        u = torch.rand(nodes.numel(), dtype=torch.float64, device=nodes.device).index_select(0, seg)
        off = ((u + j) * cnt.double() / fanout).floor().long().minimum(cnt - 1)
        pos = torch.where(cut, start.index_select(0, seg) + off, pos)
        scale = torch.where(cut, cnt.to(val.dtype) / fanout, torch.ones((), dtype=val.dtype, device=val.device))
        return seg, graph.col.index_select(0, pos).long(), val.index_select(0, pos) * scale, exact
    return seg, graph.col.index_select(0, pos).long(), val.index_select(0, pos), exact


def _ranges(start: Tensor, count: Tensor) -> Tuple[Tensor, Tensor]:
    """Range ``s`` is ``start[s] .. start[s] + count[s] - 1``; all of them concatenated: ``(seg, pos)``, position
    ``pos[e]`` belonging to range ``seg[e]``.

    Shapes:
        start, count: [S] int64 -> (seg [sum(count)], pos [sum(count)]) int64.
    """
    seg = torch.repeat_interleave(torch.arange(start.numel(), device=start.device), count)
    # element e of range s: start[s] + (e - first[s]), first[s] the position of range s's first element here
    shift = (start - (count.cumsum(0) - count)).index_select(0, seg)
    return seg, torch.arange(seg.numel(), device=start.device) + shift


class LightGCN(nn.Module):
    r"""LightGCN (He et al., 2020): user and item ID embeddings smoothed over the normalized user-item graph,
    read out as the mean over layers 0..L (:func:`motorec.ops.propagate`, fused where a kernel exists).

    Node order is users first, then items (as ``motorec.Graph.from_interactions``).

    Args:
        num_users, num_items: table sizes.
        embedding_dim: d.
        num_layers: L >= 0 (2 by default, per PAPER.md; 3 in the LightGCN paper).
        init_std: standard deviation of the normal initialization of the tables (``init_std * randn``).
        init: the initial ``(user table [num_users, d], item table [num_items, d])`` instead of those draws
            (copied; nothing is drawn).
        backend: backend of the propagation op.
        device: where the tables are created (their initial draws come from that device's generator).

    ``item_input`` replaces the item table as the items' layer-0 embeddings (e.g. ID plus content, as in
    MoToRec and the content baselines); users always start from their table.

    Shapes:
        forward: graph [U + I, U + I], item_input [I, d] (optional) -> (user_emb [U, d], item_emb [I, d])
        get_embedding: graph, item_input (optional) -> [U + I, d]
        recommend: users [B] -> (scores [B, k], items [B, k])
    """

    def __init__(self, num_users: int, num_items: int, *, embedding_dim: int = 64, num_layers: int = 2,
                 init_std: float = 0.1, backend: str = "auto", device=None,
                 init: Optional[Tuple[Tensor, Tensor]] = None) -> None:
        super().__init__()
        for name, v, low in (("num_users", num_users, 0), ("num_items", num_items, 1),
                             ("embedding_dim", embedding_dim, 1), ("num_layers", num_layers, 0)):
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        self.num_users, self.num_items = num_users, num_items
        self.embedding_dim, self.num_layers, self.backend = embedding_dim, num_layers, backend
        if init is None:  # one draw per table (nn.Embedding's own init would draw a second, discarded one first)
            init = (torch.randn(num_users, embedding_dim, device=device) * init_std,
                    torch.randn(num_items, embedding_dim, device=device) * init_std)
        else:
            for name, t, rows in (("user", init[0], num_users), ("item", init[1], num_items)):
                if not isinstance(t, Tensor) or tuple(t.shape) != (rows, embedding_dim) or not t.is_floating_point():
                    got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                    raise ValueError(f"init's {name} table must be a float tensor of shape [{rows}, {embedding_dim}], "
                                     f"got {got}")
            init = tuple(t.detach().to(device=device, copy=True) for t in init)
        self.user_embedding = nn.Embedding.from_pretrained(init[0], freeze=False)
        self.item_embedding = nn.Embedding.from_pretrained(init[1], freeze=False)
        self._cache = _GraphCache()
        self._history: Optional[_History] = None

    def _apply(self, fn, *args, **kwargs):
        self._history = None  # it would stay on the old device
        return super()._apply(fn, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"num_users={self.num_users}, num_items={self.num_items}, embedding_dim={self.embedding_dim}, "
                f"num_layers={self.num_layers}, backend={self.backend!r}")

    def _graph(self, graph: GraphLike) -> Graph:
        n = self.num_users + self.num_items
        g = self._cache.get(graph, n, None, True)
        if g.num_rows != n or g.num_cols != n:
            raise ValueError(f"graph must be [{n}, {n}] (num_users + num_items nodes, users first), "
                             f"got {g.num_rows} x {g.num_cols}")
        return g

    def get_embedding(self, graph: GraphLike, item_input: Optional[Tensor] = None) -> Tensor:
        """Final embeddings of all nodes, users first. Shapes: item_input [I, d] (optional) -> [U + I, d]."""
        g = self._graph(graph)
        items = self.item_embedding.weight if item_input is None else item_input
        if items.shape != self.item_embedding.weight.shape:
            raise ValueError(f"item_input must be [num_items={self.num_items}, embedding_dim={self.embedding_dim}],"
                             f" got {tuple(items.shape)}")
        x = torch.cat([self.user_embedding.weight, items])
        if x.device != g.device:
            raise ValueError(f"graph is on {g.device} but the embeddings are on {x.device}")
        return propagate(g, x, self.num_layers, backend=self.backend)

    def forward(self, graph: GraphLike, item_input: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``(user_emb [U, d], item_emb [I, d])`` after propagation and layer-mean readout."""
        out = self.get_embedding(graph, item_input)
        # split, not two slices: the backward of two slices fills a [U + I, d] zero buffer per slice and adds
        # them; split's backward is one cat of the two gradients (the same values, half the memory traffic)
        users, items = out.split([self.num_users, self.num_items])
        return users, items

    # ------------------------------------------------------------------ mini-batch steps with history
    @torch.no_grad()
    def refresh_history(self, graph: GraphLike, item_extra: Optional[Tensor] = None,
                        item_mask: Optional[Tensor] = None, *, copy_extra: bool = True) -> None:
        """Compute the history :meth:`forward_nodes` reads: layers ``1 .. L-1`` of every node from one full
        propagation without gradient, and the items' non-ID layer-0 part ``item_extra``.

        The items' layer 0 is ``item table * item_mask + item_extra`` (``item_mask``: e.g. the warm items, so
        that a cold item's untrained ID row is left out; ``None``: every row), the users' their table. Call it
        once per epoch (a catalog pass: one sparse product per layer over the whole graph). The history keeps a
        copy of ``item_extra`` (forward_nodes writes the batch's rows into it), or with ``copy_extra=False`` the
        float32 tensor itself, which the caller gives up. Layer 0 is built in one [U + I, d] buffer: at catalog
        scale each whole-table temporary is a fresh mapping the OS faults in.

        Shapes:
            item_extra: [I, d] or None; item_mask: [I] bool or None.
        """
        g = self._graph(graph)
        weight = self.item_embedding.weight
        if item_mask is not None and (item_mask.shape != (self.num_items,) or item_mask.dtype != torch.bool):
            raise ValueError(f"item_mask must be a [num_items={self.num_items}] bool tensor, "
                             f"got {item_mask.dtype} of shape {tuple(item_mask.shape)}")
        if item_extra is not None:
            if item_extra.shape != weight.shape:
                raise ValueError(f"item_extra must be [num_items={self.num_items}, embedding_dim="
                                 f"{self.embedding_dim}], got {tuple(item_extra.shape)}")
            item_extra = item_extra.detach().float()
            if copy_extra:
                item_extra = item_extra.clone()
        h = torch.empty(self.num_users + self.num_items, self.embedding_dim, dtype=weight.dtype, device=weight.device)
        h[:self.num_users] = self.user_embedding.weight
        items = h[self.num_users:]
        if item_mask is None:
            items.copy_(weight)
        else:
            torch.mul(weight, item_mask.unsqueeze(1), out=items)
        if item_extra is not None:
            items += item_extra
        layers = []
        for _ in range(1, self.num_layers):
            h = spmm(g, h, backend=self.backend)
            layers.append(h)
        self._history = _History(layers, item_extra, item_mask)

    @property
    def has_history(self) -> bool:
        """Whether :meth:`refresh_history` has run since the last device move or :meth:`drop_history`."""
        return self._history is not None

    def drop_history(self) -> None:
        """Forget the history (a later :meth:`forward_nodes` raises until :meth:`refresh_history`)."""
        self._history = None

    def forward_nodes(self, graph: GraphLike, users: Tensor, items: Tensor,
                      item_extra: Optional[Tensor] = None, *, sparse_grad: bool = False,
                      fanout: int = 0) -> Tuple[Tensor, Tensor]:
        r"""Final embeddings of a mini-batch's nodes, computed from their neighbourhoods only (historical
        embeddings, as GNNAutoScale, Fey et al. 2021): a step's cost grows with the batch and its nodes'
        degrees, not with the graph.

        For a node ``v`` of the batch, with ``L`` layers: layer 0 is exact (its table row, plus ``item_extra``
        for an item); layer 1 is ``sum_w A_vw x0_w`` over its neighbours, whose layer 0 is their table row (with
        gradient) plus, for items, the history's non-ID part (no gradient); layers ``l >= 2`` are
        ``sum_w A_vw H^{l-1}_w`` over the history (no gradient). The readout is the mean over layers ``0..L``.
        The batch's own layers ``1..L-1`` and ``item_extra`` are written to the history afterwards. With a
        history fresh from :meth:`refresh_history` and unchanged weights this equals :meth:`forward` on those
        rows; as the weights move within an epoch, the history lags by at most an epoch.

        Args:
            users: [Bu] distinct user ids; items: [Bi] distinct item ids.
            item_extra: [Bi, d] the items' non-ID layer-0 part (e.g. content), with gradient; ``None`` when the
                history was refreshed without one.
            sparse_grad: gather the ID tables' rows with sparse gradients (:func:`id_rows`), for a row-sparse
                optimizer: no [U + I, d] gradient per step.
            fanout: at most this many neighbours per batch node (``0``: all), sampled and reweighted by
                :func:`sampled_rows` (unbiased), as PinSage and GraphSAGE cap theirs: a step then costs at most
                ``fanout`` neighbours a node, however long the degree tail. A sampled node's layers are not
                written back to the history (they are estimates).

        Shapes:
            -> (users [Bu, d], items [Bi, d]).
        """
        hist = self._history
        if hist is None:
            raise RuntimeError("forward_nodes() reads the history: call refresh_history() first (each epoch)")
        if (item_extra is None) != (hist.item_extra is None):
            raise ValueError("item_extra must be given exactly when refresh_history() was given one")
        g = self._graph(graph)
        uw, iw = self.user_embedding.weight, self.item_embedding.weight
        x_items = id_rows(iw, items, sparse_grad)
        if hist.item_mask is not None:
            x_items = x_items * hist.item_mask.index_select(0, items).unsqueeze(1)
        if item_extra is not None:
            x_items = x_items + item_extra
        x0 = torch.cat([id_rows(uw, users, sparse_grad), x_items])
        if self.num_layers == 0:
            return x0.split([users.numel(), items.numel()])
        nodes = torch.cat([users, items + self.num_users])
        seg, col, val, exact = sampled_rows(g, nodes, fanout)
        # the neighbours' layer 0, one row per distinct neighbour (sorted: users, then items)
        nb, inv = torch.unique(col, return_inverse=True)
        nu = int(torch.searchsorted(nb, self.num_users))
        nbi = nb[nu:] - self.num_users
        xi = id_rows(iw, nbi, sparse_grad)
        if hist.item_mask is not None:
            xi = xi * hist.item_mask.index_select(0, nbi).unsqueeze(1)
        if hist.item_extra is not None:
            xi = xi + hist.item_extra.index_select(0, nbi)
        xn = torch.cat([id_rows(uw, nb[:nu], sparse_grad), xi])
        w = val.to(x0.dtype).unsqueeze(1)
        layer = x0.new_zeros(x0.shape).index_add(0, seg, xn.index_select(0, inv) * w)
        total, pushed = x0 + layer, [layer]
        for h in hist.layers:
            layer = x0.new_zeros(x0.shape).index_add_(0, seg, h.index_select(0, col) * w)
            total = total + layer
            pushed.append(layer)
        if not bool(exact.all()):
            nodes, pushed = nodes[exact], [p[exact] for p in pushed]
        for h, new in zip(hist.layers, pushed):  # the batch's layers 1..L-1 (the last one is never read)
            h.index_copy_(0, nodes, new.detach().to(h.dtype))
        if item_extra is not None:
            hist.item_extra.index_copy_(0, items, item_extra.detach().to(hist.item_extra.dtype))
        out = total / (self.num_layers + 1)
        return out.split([users.numel(), items.numel()])

    @torch.no_grad()
    def recommend(self, graph: GraphLike, users: Tensor, k: int,
                  exclude: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Top-``k`` items by inner product for each user in ``users``.

        Args:
            users: [B] user ids (duplicates allowed).
            k: 1 <= k <= num_items.
            exclude: items never to recommend (e.g. training interactions), either a [2, E] integer tensor of
                (user id, item id) pairs — pairs whose user is not in ``users`` are ignored — or a bool mask
                [B, num_items] aligned with ``users``. Excluded items score ``-inf``; they appear only when
                fewer than ``k`` items remain.

        Shapes:
            users: [B] -> (scores [B, k] float, items [B, k] int64), scores descending.
        """
        if not isinstance(users, Tensor) or users.dim() != 1 or users.is_floating_point():
            raise ValueError("users must be a 1-D integer tensor of user ids")
        if not isinstance(k, int) or not 1 <= k <= self.num_items:
            raise ValueError(f"k must be an int in [1, num_items={self.num_items}], got {k!r}")
        if users.numel() and (int(users.min()) < 0 or int(users.max()) >= self.num_users):
            raise ValueError(f"users must lie in [0, num_users={self.num_users})")
        user_emb, item_emb = self.forward(graph)
        users = users.to(user_emb.device).long()
        scores = user_emb[users] @ item_emb.t()
        if exclude is not None:
            scores.masked_fill_(self._exclude_mask(exclude, users), float("-inf"))
        return torch.topk(scores, k, dim=1)

    def _exclude_mask(self, exclude: Tensor, users: Tensor) -> Tensor:
        b = users.numel()
        if not isinstance(exclude, Tensor):
            raise TypeError(f"exclude must be a tensor, got {type(exclude).__name__}")
        if exclude.dtype == torch.bool:
            if exclude.shape != (b, self.num_items):
                raise ValueError(f"a bool exclude mask must be [B={b}, num_items={self.num_items}], "
                                 f"got {tuple(exclude.shape)}")
            return exclude.to(users.device)
        if exclude.dim() != 2 or exclude.shape[0] != 2 or exclude.is_floating_point():
            raise ValueError(f"exclude must be a [2, E] integer tensor of (user, item) pairs or a bool mask, "
                             f"got {exclude.dtype} of shape {tuple(exclude.shape)}")
        eu, ei = exclude.to(users.device).long()
        if ei.numel() and (int(ei.min()) < 0 or int(ei.max()) >= self.num_items):
            raise ValueError(f"exclude item ids must lie in [0, num_items={self.num_items})")
        # Every position p with users[p] == eu[e] gets item ei[e] masked (users may repeat).
        sorted_users, order = torch.sort(users)
        lo = torch.searchsorted(sorted_users, eu, right=False)
        hi = torch.searchsorted(sorted_users, eu, right=True)
        pair, pos = _ranges(lo, hi - lo)
        rows = order[pos]
        mask = torch.zeros(b, self.num_items, dtype=torch.bool, device=users.device)
        mask[rows, ei[pair]] = True
        return mask
