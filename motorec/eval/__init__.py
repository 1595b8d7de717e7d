"""Evaluation: full ranking with known positives masked; Recall@K / NDCG@K in ColdRec's three settings, ``cold``
(warm items masked), ``warm`` (cold items masked) and ``hybrid`` (nothing masked) (definitions in
:mod:`motorec.eval.metrics`).

* :func:`evaluate` (``score_fn(user_ids) -> [B, num_items]`` scores, a :class:`motorec.data.Dataset`) -> dict
* :func:`recall_ndcg_at_k`, :func:`metrics_from_hits`: the per-user metric formulas, usable on their own.
"""
from motorec.eval.metrics import HYBRID_GROUPS, RESULT_KEYS, SETTINGS, evaluate, metrics_from_hits, recall_ndcg_at_k

__all__ = ["evaluate", "recall_ndcg_at_k", "metrics_from_hits", "SETTINGS", "HYBRID_GROUPS", "RESULT_KEYS"]
