"""Evaluation: full ranking over all items with known positives masked; Recall@K / NDCG@K overall and for
warm and cold items (definitions in :mod:`motorec.eval.metrics`).

* :func:`evaluate` (``score_fn(user_ids) -> [B, num_items]`` scores, a :class:`motorec.data.Dataset`) -> dict
* :func:`recall_ndcg_at_k`, :func:`metrics_from_hits`: the per-user metric formulas, usable on their own.
"""
from motorec.eval.metrics import GROUPS, SETTINGS, evaluate, metrics_from_hits, recall_ndcg_at_k

__all__ = ["evaluate", "recall_ndcg_at_k", "metrics_from_hits", "GROUPS", "SETTINGS"]
