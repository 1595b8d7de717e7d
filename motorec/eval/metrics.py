"""Full-ranking top-K evaluation: Recall@K and NDCG@K, overall and for warm and cold items.

Definitions (the MMRec / LightGCN conventions, binary relevance):

* For a user ``u`` with relevant set ``R_u`` (its held-out items, restricted to a group) and ranked list
  ``L_u`` (the top K of a full ranking over all items, with the user's training items masked, and for the
  test split also the user's validation items):
    - ``Recall@K(u) = |L_u[:K] ∩ R_u| / |R_u|``  (denominator ``|R_u|``, not ``min(K, |R_u|)``)
    - ``NDCG@K(u) = DCG / IDCG`` with ``DCG = Σ_{p=1..K} [L_u[p] ∈ R_u] / log2(p + 1)`` and
      ``IDCG = Σ_{p=1..min(K, |R_u|)} 1 / log2(p + 1)``.
* A group's score is the mean over the users with ``|R_u| >= 1`` in that group.
* Settings (ColdRec's protocol, also CLCRec's, GAR's and ALDI's; the primary report): ``"cold"`` scores the
  cold pairs (items without training interactions) on a ranking of the cold items alone (every warm item
  masked), ``"warm"`` the warm pairs on a ranking of the warm items alone (every cold item masked) and
  ``"hybrid"`` all pairs on the ranking of every item (nothing masked: what a user sees). Secondary:
  ``"hybrid_warm"`` and ``"hybrid_cold"``, the hybrid ranking scored on its warm pairs and on its cold pairs
  (a warm item ranked above a cold one costs the cold pairs a slot, as it would a user).
* A held-out pair that is also masked (the same pair in train) can never be ranked, so it is not counted.
"""
from __future__ import annotations

import math
import os
from typing import Callable, Dict, Iterable, Optional, Sequence

import torch
from torch import Tensor

__all__ = ["evaluate", "recall_ndcg_at_k", "metrics_from_hits", "eval_batch_size", "sample_users", "mean_se",
           "mean_of_means_se", "SETTINGS", "HYBRID_GROUPS", "RESULT_KEYS", "EVAL_MEMORY_MB"]

# the three settings (primary report), then the hybrid ranking's warm and cold pairs (secondary)
SETTINGS = ("cold", "warm", "hybrid")
HYBRID_GROUPS = ("hybrid_warm", "hybrid_cold")
RESULT_KEYS = SETTINGS + HYBRID_GROUPS

# Default budget of evaluate's per-batch score blocks, in MiB (env MOTOREC_EVAL_MEMORY_MB): with 1M items a
# user's float32 score row is 4 MB, so 1024 users per batch would need 4 GB; the budget caps the batch.
EVAL_MEMORY_MB = float(os.environ.get("MOTOREC_EVAL_MEMORY_MB", "1024"))


def eval_batch_size(batch_size: int, num_items: int, *, memory_mb: Optional[float] = None,
                    settings: bool = True, score_bytes: int = 4) -> int:
    """Users per :func:`evaluate` batch: ``batch_size`` capped so that the batch's ``[B, num_items]`` score
    blocks fit in ``memory_mb`` MiB (default :data:`EVAL_MEMORY_MB`), at least 1.

    Counted per user: the score row ``score_fn`` returns (``score_bytes`` per item, float32 by default) and,
    with ``settings``, the copy of its cold columns (at most another row). What ``score_fn`` allocates
    internally beyond its output is not known here. :func:`evaluate` always counts the copy (it ranks the cold
    items alone for the ``"cold"`` setting).
    """
    budget = EVAL_MEMORY_MB if memory_mb is None else memory_mb
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0 or math.isinf(budget):
        raise ValueError(f"memory_mb must be a positive finite number of MiB, got {memory_mb!r}")
    per_user = max(num_items, 1) * score_bytes * (2 if settings else 1)
    return max(1, min(batch_size, int(budget * 2**20) // per_user))


def _check_ks(ks: Iterable[int]) -> list:
    ks = list(ks) if not isinstance(ks, int) else [ks]
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty list of positive ints, got {ks!r}")
    return sorted(set(ks))


def metrics_from_hits(hits: Tensor, num_relevant: Tensor, ks: Sequence[int]) -> Dict[str, Tensor]:
    """Per-user Recall@K and NDCG@K from a hit matrix.

    Args:
        hits: ``hits[u, p]`` is true when the item at rank ``p`` (0-based) of user ``u`` is relevant.
            Must have at least ``max(ks)`` columns (pad with ``False`` when fewer items exist).
        num_relevant: ``|R_u|`` per user. Users with 0 get 0.0 for both metrics (exclude them when averaging).
        ks: cut-offs.

    Returns ``{"recall@K": [B], "ndcg@K": [B]}`` (float64) for each K in ``ks``.

    Shapes:
        hits: [B, K_max] bool, num_relevant: [B] int -> each value [B] float64
    """
    ks = _check_ks(ks)
    if hits.dim() != 2 or hits.shape[1] < ks[-1]:
        raise ValueError(f"hits must be [B, K_max] with K_max >= {ks[-1]}, got {tuple(hits.shape)}")
    if num_relevant.shape != hits.shape[:1]:
        raise ValueError(f"num_relevant must be [{hits.shape[0]}], got {tuple(num_relevant.shape)}")
    h = hits.to(torch.float64)
    nrel = num_relevant.to(device=h.device, dtype=torch.int64)
    disc = 1.0 / torch.log2(torch.arange(2, ks[-1] + 2, device=h.device, dtype=torch.float64))
    ideal = torch.cumsum(disc, 0)
    has = nrel > 0
    out: Dict[str, Tensor] = {}
    for k in ks:
        hk = h[:, :k]
        recall = hk.sum(1) / nrel.clamp(min=1)
        dcg = (hk * disc[:k]).sum(1)
        idcg = ideal[(nrel.clamp(min=1, max=k) - 1)]
        out[f"recall@{k}"] = torch.where(has, recall, 0.0)
        out[f"ndcg@{k}"] = torch.where(has, dcg / idcg, 0.0)
    return out


def recall_ndcg_at_k(topk_items: Tensor, relevant_mask: Tensor, ks: Optional[Sequence[int]] = None) -> Dict[str, Tensor]:
    """Per-user Recall@K / NDCG@K from ranked item ids and a dense relevance mask (small problems, tests).

    Args:
        topk_items: each row, item ids best first (at least ``max(ks)`` of them).
        relevant_mask: ``relevant_mask[u, i]`` is true when item ``i`` is relevant for user ``u``.
        ks: cut-offs; default ``(topk_items.shape[1],)``.

    Returns ``{"recall@K": [B], "ndcg@K": [B]}`` as :func:`metrics_from_hits`.

    Shapes:
        topk_items: [B, K_max] int64, relevant_mask: [B, num_items] bool -> each value [B] float64
    """
    if topk_items.dim() != 2 or relevant_mask.dim() != 2 or topk_items.shape[0] != relevant_mask.shape[0]:
        raise ValueError(f"topk_items [B, K] and relevant_mask [B, num_items] must share B, got "
                         f"{tuple(topk_items.shape)} and {tuple(relevant_mask.shape)}")
    if ks is None:
        ks = (topk_items.shape[1],)
    rel = relevant_mask.to(torch.bool)
    hits = rel.gather(1, topk_items.long())
    return metrics_from_hits(hits, rel.sum(1), ks)


def _segments(rowptr: Tensor, rows: Tensor):
    """For CSR ``rowptr`` and selected ``rows``: (local row of each entry, entry position)."""
    starts = rowptr[rows]
    counts = rowptr[rows + 1] - starts
    total = int(counts.sum())
    local = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), counts, output_size=total)
    offset = torch.repeat_interleave(starts - (torch.cumsum(counts, 0) - counts), counts, output_size=total)
    return local, offset + torch.arange(total, device=rows.device)


def _pair_keys(pairs: Tensor, n: int) -> Tensor:
    return pairs[:, 0] * n + pairs[:, 1]


def pairs_csr(pairs: Sequence[Tensor], num_users: int, num_items: int, device=None):
    """The distinct ``(user, item)`` pairs of ``pairs`` as sorted keys ``user * num_items + item`` and a CSR by
    user, for masking with :func:`mask_pairs_`.

    Shapes:
        pairs: each [E_j, 2] int -> (keys [E] int64 sorted, rowptr [num_users + 1], items [E])
    """
    key = torch.unique(torch.cat([_pair_keys(p.to(device), num_items) for p in pairs]))
    user, item = key // num_items, key % num_items
    rowptr = torch.zeros(num_users + 1, dtype=torch.int64, device=key.device)
    rowptr[1:] = torch.cumsum(torch.bincount(user, minlength=num_users), 0)
    return key, rowptr, item


def mask_pairs_(scores: Tensor, users: Tensor, rowptr: Tensor, items: Tensor) -> Tensor:
    """Write ``-inf`` in place at each ``(row r, item)`` whose pair ``(users[r], item)`` is in the CSR of
    :func:`pairs_csr`; vectorized, no loop over users or pairs.

    Shapes:
        scores: [B, num_items], users: [B] -> scores
    """
    local, pos = _segments(rowptr, users)
    scores[local, items[pos]] = float("-inf")
    return scores


def _defined_in(cls: type, name: str) -> Optional[type]:
    """The class of ``cls.__mro__`` whose own namespace defines ``name``, else ``None``."""
    return next((k for k in cls.__mro__ if name in vars(k)), None)


def _fused_ranking(score_fn, backend: Optional[str], device: torch.device):
    """``(users [U, d], items [I, d], item_scale, item_shift, backend name)`` on ``device`` when :func:`evaluate`
    ranks through :func:`motorec.ops.rank_topk` (see its ``backend`` argument), else ``None``."""
    owner = getattr(score_fn, "__self__", None)
    if owner is None or getattr(score_fn, "__name__", "") != "score" or not hasattr(owner, "ranking_parts"):
        return None
    # ranking_parts describes the score of the class that defines it: trust it only when score is not overridden
    # below that class (a subclass that changes score alone would otherwise be ranked by the parent's parts).
    score_cls, parts_cls = _defined_in(type(owner), "score"), _defined_in(type(owner), "ranking_parts")
    if (score_cls is None or parts_cls is None or not issubclass(parts_cls, score_cls)
            or getattr(score_fn, "__func__", None) is not score_cls.__dict__["score"]):
        return None
    if backend is None:
        backend = getattr(owner, "backend", "auto")
    from motorec import ops

    parts = owner.ranking_parts()
    if parts is None:
        return None
    users, items, scale, shift = (None if t is None else t.detach().to(device) for t in parts)
    try:
        name = ops.select_backend("rank_topk", backend, device=device.type, dtype=items.dtype, dim=items.shape[1])
    except ops.BackendUnavailable:  # e.g. backend="cuda": no rank_topk kernel there; the dense path serves
        return None
    return None if name == "torch" else (users, items, scale, shift, name)


def _rank_fused(fused, users: Tensor, m_rowptr: Tensor, m_item: Tensor, cold: Tensor, kmax: int,
                k_cold: int) -> Dict[str, Tensor]:
    """The three rankings of a user batch from :func:`motorec.ops.rank_topk` (the user's masked items as its
    exclude lists), and its NaN flags."""
    from motorec import ops

    u, items, scale, shift, name = fused
    starts = m_rowptr[users]
    rowptr = torch.zeros(users.numel() + 1, dtype=torch.int64, device=users.device)
    rowptr[1:] = torch.cumsum(m_rowptr[users + 1] - starts, 0)
    _, pos = _segments(m_rowptr, users)
    r = ops.rank_topk(u[users], items, kmax, item_scale=scale, item_shift=shift, exclude_rowptr=rowptr,
                      exclude_col=m_item[pos], cold=cold, backend=name)
    return {"hybrid": r.hybrid, "warm": r.warm, "cold": r.cold[:, :k_cold], "nan": r.nan}


def _rank_dense(score_fn, users: Tensor, n_items: int, device, m_rowptr: Tensor, m_item: Tensor,
                cold_idx: Tensor, kmax: int) -> Dict[str, Tensor]:
    """The three rankings of a user batch from ``score_fn``'s dense scores (masked in place, three
    ``torch.topk``), and whether a NaN reached the hybrid top K (0-dim bool)."""
    b = users.numel()
    scores = score_fn(users)
    if not isinstance(scores, Tensor) or scores.shape != (b, n_items):
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"score_fn must return scores of shape [{b}, num_items={n_items}], got {shape}")
    if not scores.is_floating_point():
        raise ValueError(f"score_fn must return floating-point scores, got {scores.dtype}")
    scores = scores.to(device)
    if scores._base is not None or scores.requires_grad:
        scores = scores.detach().clone()
    mask_pairs_(scores, users, m_rowptr, m_item)
    k_eff = min(kmax, n_items)
    top_scores, top = torch.topk(scores, k_eff, dim=1, sorted=True)

    rankings = {"hybrid": top}
    if cold_idx.numel():
        cold_scores = scores[:, cold_idx]  # [b, num_cold]
        _, ct = torch.topk(cold_scores, min(kmax, cold_idx.numel()), dim=1, sorted=True)
        rankings["cold"] = cold_idx[ct]
        del cold_scores
        scores[:, cold_idx] = float("-inf")
        _, rankings["warm"] = torch.topk(scores, k_eff, dim=1, sorted=True)
    else:
        rankings["warm"] = top
        rankings["cold"] = top[:, :0]
    del scores
    # torch.topk ranks NaN above every number, so checking the top-K finds any NaN that could matter.
    rankings["nan"] = torch.isnan(top_scores).any()
    return rankings


@torch.no_grad()
def evaluate(score_fn: Callable[[Tensor], Tensor], dataset, *, split: str = "test", ks: Sequence[int] = (10, 20),
             batch_size: int = 1024, device=None, progress: bool = False, memory_mb: Optional[float] = None,
             backend: Optional[str] = None, users: Optional[Tensor] = None, per_user: bool = False) -> dict:
    """Full-ranking evaluation of ``score_fn`` on ``dataset``'s ``"valid"`` or ``"test"`` pairs in the three
    settings ``cold``, ``warm``, ``hybrid`` (and the hybrid ranking's ``hybrid_warm`` / ``hybrid_cold`` pairs;
    see the module docstring), all from one ``score_fn`` call per user batch.

    Args:
        score_fn: ``score_fn(user_ids) -> scores``, higher is better, one score per item. It must return a
            new tensor (not a cached one): ``evaluate`` writes ``-inf`` into it in place to avoid a second
            ``[B, num_items]`` buffer (a view is copied first).
        dataset: a :class:`motorec.data.Dataset`.
        split: ``"test"`` masks each user's train and valid items; ``"valid"`` masks train items only.
        ks: cut-offs K. batch_size: users per call of ``score_fn`` at most; fewer when the batch's score
            blocks (``[B, num_items]`` and the ``[B, num_cold]`` copy) would exceed ``memory_mb``
            (:func:`eval_batch_size`).
        device: where masking and top-k run and where ``user_ids`` are created (default: the dataset's).
        progress: show a tqdm bar over user batches.
        memory_mb: budget in MiB of a batch's score blocks (default :data:`EVAL_MEMORY_MB` = 1024, env
            ``MOTOREC_EVAL_MEMORY_MB``): 1M items (all cold in the worst case) give batches of 134 users.
        backend: how the rankings are formed (default ``None``: the model's ``backend`` when ``score_fn`` is a
            model's ``score``, else ``"auto"``). When ``score_fn`` is the bound ``score`` method of an object with
            ``ranking_parts()`` (every :class:`~motorec.models.base.Recommender`; a subclass that overrides
            ``score`` must override ``ranking_parts`` too, or the dense path ranks) and that returns parts (not
            ``None``: calibration in the ``"user"`` scope), and ``backend`` resolves to a compiled kernel of
            :func:`motorec.ops.rank_topk` (``cpu``), the three rankings come from that fused op: no
            ``[B, num_items]`` scores, ``score_fn`` is not called. Otherwise (``torch``; a backend without a
            ``rank_topk`` kernel, e.g. on CUDA; any other callable) the dense path: ``score_fn``, masking and
            three ``torch.topk``. Both give the same rankings up to the matmul's rounding (exactly equal
            scores: the fused op lists the lower item index first, ``torch.topk`` in no promised order).
        users: rank only these user ids (e.g. a fixed sample of the validation users, see
            :func:`sample_users`); ``None`` (default): every user with a held-out pair. Ids without one are
            ignored; the result is that of the dataset restricted to these users' held-out pairs.
        per_user: also return each user's values under the key ``"per_user"``:
            ``{key: {"users": [n] int64, "recall@K": [n] float64, "ndcg@K": [n] float64, ...}}`` on the CPU for
            each key of :data:`RESULT_KEYS`, over the users counted in that key's mean (ascending ids), so that
            ``per_user[key][metric].mean()`` is the key's metric (see :func:`mean_se` for its standard error).
            Without it (the default) the result holds exactly the keys below.

    Returns ``{key: {"recall@K": float, "ndcg@K": float, ..., "num_users": int, "num_interactions": int}}`` for
    key in :data:`RESULT_KEYS` = ``("cold", "warm", "hybrid", "hybrid_warm", "hybrid_cold")``. A key with no
    held-out pair (``cold`` on a warm split) reports 0.0 for every metric with ``num_users == 0``. Raises
    ``ValueError`` when ``score_fn`` returns a wrong shape, a non-float tensor or NaN scores (NaN at a masked
    position is ignored; torch ranks NaN above every number, so any other NaN reaches a top K).

    Shapes:
        score_fn: user_ids [B] int64 -> scores [B, num_items] float; users: [n] int64
    """
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    ks = _check_ks(ks)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    device = torch.device(device) if device is not None else dataset.device
    n_items, n_users = dataset.num_items, dataset.num_users
    batch_size = eval_batch_size(batch_size, n_items, memory_mb=memory_mb, settings=True)
    kmax = ks[-1]

    masked = [dataset.train] + ([dataset.valid] if split == "test" else [])
    mkey, m_rowptr, m_item = pairs_csr(masked, n_users, n_items, device)
    tkey = torch.unique(_pair_keys(dataset.interactions(split).to(device), n_items))
    if tkey.numel() and mkey.numel():
        # mkey is sorted and unique: a binary search beats torch.isin on millions of pairs.
        pos = torch.searchsorted(mkey, tkey).clamp_(max=mkey.numel() - 1)
        tkey = tkey[mkey[pos] != tkey]
    if users is not None:
        if not isinstance(users, Tensor) or users.dim() != 1 or users.dtype != torch.int64:
            raise ValueError(f"users must be a 1-d int64 tensor of user ids, got "
                             f"{tuple(users.shape) if isinstance(users, Tensor) else type(users).__name__}"
                             f"{' ' + str(users.dtype) if isinstance(users, Tensor) else ''}")
        tkey = tkey[torch.isin(tkey // n_items, users.to(device))]
    t_user, t_item = tkey // n_items, tkey % n_items
    eval_users, t_counts = torch.unique_consecutive(t_user, return_counts=True)
    t_rowptr = torch.zeros(eval_users.numel() + 1, dtype=torch.int64, device=device)
    t_rowptr[1:] = torch.cumsum(t_counts, 0)
    warm_item = dataset.warm_items().to(device)
    t_warm = warm_item[t_item]
    # per result key: which held-out pairs it scores, and on which ranking
    t_in = {"cold": ~t_warm, "warm": t_warm, "hybrid": torch.ones_like(t_warm), "hybrid_warm": t_warm,
            "hybrid_cold": ~t_warm}
    ranking_of = {"cold": "cold", "warm": "warm", "hybrid": "hybrid", "hybrid_warm": "hybrid",
                  "hybrid_cold": "hybrid"}
    cold_idx = torch.nonzero(~warm_item).flatten()
    fused = _fused_ranking(score_fn, backend, device)

    sums = {g: {name: torch.zeros((), dtype=torch.float64, device=device) for k in ks
                for name in (f"recall@{k}", f"ndcg@{k}")} for g in RESULT_KEYS}
    n_users_in = {g: torch.zeros((), dtype=torch.int64, device=device) for g in RESULT_KEYS}
    saw_nan = torch.zeros((), dtype=torch.bool, device=device)
    kept: Dict[str, Dict[str, list]] = {g: {} for g in RESULT_KEYS} if per_user else {}

    n_eval = eval_users.numel()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_eval, desc=f"evaluate {split}", unit="user", leave=False)
    for s in range(0, n_eval, batch_size):
        e = min(s + batch_size, n_eval)
        batch = eval_users[s:e]
        b = batch.numel()
        if fused is not None:
            rankings = _rank_fused(fused, batch, m_rowptr, m_item, ~warm_item, kmax, min(kmax, cold_idx.numel()))
            saw_nan |= rankings.pop("nan").any()
        else:
            rankings = _rank_dense(score_fn, batch, n_items, device, m_rowptr, m_item, cold_idx, kmax)
            saw_nan |= rankings.pop("nan")

        t_local = torch.repeat_interleave(torch.arange(b, device=device), t_counts[s:e])
        lo, hi = int(t_rowptr[s]), int(t_rowptr[e])
        items = t_item[lo:hi]
        found_rank = {}
        for name, ranked in rankings.items():
            match = ranked[t_local] == items[:, None]
            found_rank[name] = (match.any(1), match.to(torch.uint8).argmax(1) if match.shape[1] else
                                torch.zeros_like(items))
        for g in RESULT_KEYS:
            found, rank = found_rank[ranking_of[g]]
            in_g = t_in[g][lo:hi]
            hits = torch.zeros(b, kmax, dtype=torch.bool, device=device)
            sel = in_g & found
            hits[t_local[sel], rank[sel]] = True
            nrel = torch.bincount(t_local[in_g], minlength=b)
            values = metrics_from_hits(hits, nrel, ks)
            for name, v in values.items():
                sums[g][name] += v.sum()  # users without relevant items contribute 0
            n_users_in[g] += (nrel > 0).sum()
            if kept:
                has = nrel > 0
                for name, v in (("users", batch), *values.items()):
                    kept[g].setdefault(name, []).append(v[has].cpu())
        if bar is not None:
            bar.update(b)
    if bar is not None:
        bar.close()
    if bool(saw_nan):
        raise ValueError("score_fn returned NaN scores")

    out = {}
    for g in RESULT_KEYS:
        nu = int(n_users_in[g])
        res = {name: (float(v) / nu if nu else 0.0) for name, v in sums[g].items()}
        res = {name: (0.0 if math.isnan(v) else v) for name, v in res.items()}
        res["num_users"] = nu
        res["num_interactions"] = int(t_in[g].sum())
        out[g] = res
    if per_user:
        empty = {"users": torch.zeros(0, dtype=torch.int64), **{name: torch.zeros(0, dtype=torch.float64)
                                                                 for name in sums["hybrid"]}}
        out["per_user"] = {g: {name: torch.cat(parts) for name, parts in kept[g].items()} or dict(empty)
                           for g in RESULT_KEYS}
    return out


def sample_users(dataset, split: str, n: int, *, seed: int) -> Optional[Tensor]:
    """A fixed sample of ``n`` of the users with a held-out pair in ``split`` (``"valid"`` or ``"test"``), drawn
    from ``seed`` alone (its own generator: the caller's random streams do not move), sorted; ``None`` when
    ``n`` is 0 or covers every such user (rank them all).

    Shapes:
        -> [n] int64 on the dataset's device, or None
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    held = torch.unique(dataset.interactions(split)[:, 0]).cpu()
    if n == 0 or n >= held.numel():
        return None
    gen = torch.Generator().manual_seed(int(seed))
    pick = held[torch.randperm(held.numel(), generator=gen)[:n]]
    return torch.sort(pick).values.to(dataset.device)


def mean_se(values: Tensor) -> float:
    """The standard error of the mean of ``values`` (per-user metric values): ``std(ddof=1) / sqrt(n)``; NaN with
    fewer than two values.

    Shapes:
        values: [n] -> float
    """
    n = values.numel()
    if n < 2:
        return float("nan")
    return float(values.double().std(unbiased=True)) / math.sqrt(n)


def mean_of_means_se(a_users: Tensor, a: Tensor, b_users: Tensor, b: Tensor) -> float:
    """The standard error of ``(mean(a) + mean(b)) / 2`` where ``a`` and ``b`` are per-user values over two user
    sets that may overlap (``a_users``, ``b_users``: distinct ids): with users drawn independently,
    ``Var = (s_a^2 / n_a + s_b^2 / n_b + 2 n_ab s_ab / (n_a n_b)) / 4``, ``s_ab`` the sample covariance of the
    two values over the ``n_ab`` users in both sets (0 with fewer than two). NaN when either set has fewer
    than two users.

    Shapes:
        a_users, a: [n_a]; b_users, b: [n_b] -> float
    """
    na, nb = a.numel(), b.numel()
    if na < 2 or nb < 2:
        return float("nan")
    a, b = a.double(), b.double()
    var = float(a.var(unbiased=True)) / na + float(b.var(unbiased=True)) / nb
    common, ia, ib = _common(a_users, b_users)
    if common >= 2:
        x, y = a[ia], b[ib]
        cov = float(((x - x.mean()) * (y - y.mean())).sum()) / (common - 1)
        var += 2.0 * common * cov / (na * nb)
    return math.sqrt(max(var, 0.0)) / 2.0


def _common(a_users: Tensor, b_users: Tensor):
    """(count, positions in a, positions in b) of the ids in both distinct-id vectors, in ``a``'s order."""
    in_b = torch.isin(a_users, b_users)
    ia = torch.nonzero(in_b).flatten()
    order = torch.argsort(b_users)
    ib = order[torch.searchsorted(b_users[order], a_users[ia])]
    return ia.numel(), ia, ib
