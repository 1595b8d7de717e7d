"""``knn``: the KNN cold-start baseline (as in ColdRec): a LightGCN on IDs whose cold items take the mean final
embedding of their most content-similar warm items.

Training is exactly :class:`~motorec.models.baselines.LightGCNRec`'s (same graph, loss, initialization; with
the same seed the two train to the same weights): the baseline adds no parameter and no loss term. The
neighbour table is fixed by the features and by which items have training interactions, so it is built once
at construction and kept as a non-persistent buffer (it derives from data, not from training).

Reference: the ColdRec toolkit's ``KNN`` (github.com/YuanchenBei/ColdRec; a faiss inner-product search over
raw content); here cosine similarity of normalized features, summed over modalities (docs/BASELINES.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch
from torch import Tensor

from motorec.config import ConfigError, ModelConfig
from motorec.models.baselines import LightGCNRec
from motorec.models.features import ItemFeatures
from motorec.nn.knn import knn_topk

__all__ = ["KNNRec", "KNNConfig", "content_neighbours"]


@dataclass
class KNNConfig(ModelConfig):
    """``knn``'s own hyper-parameters (section ``knn:``)."""

    # a cold item's embedding is the mean of its cold_k nearest warm items' (capped at the number of warm items)
    cold_k: int = 10

    def check(self) -> None:
        if isinstance(self.cold_k, bool) or not isinstance(self.cold_k, int) or self.cold_k <= 0:
            raise ConfigError(f"knn.cold_k must be an integer > 0, got {self.cold_k!r}")


def _unit_rows_with_padding(feats: ItemFeatures, items: Tensor, pad: bool) -> Tensor:
    """The items' per-modality L2-normalized features side by side, plus one column.

    ``knn_topk`` ranks by cosine of whole rows. The inner product of two such concatenations is the sum of the
    per-modality cosines, but a key whose row has a zero modality has a smaller norm, and cosine would then
    favour it. The extra column (``pad``: keys) lifts every key row to norm ``sqrt(M)``; queries get 0 there,
    so a query row's cosine with every key is its sum of cosines over one constant per query: same order.
    """
    parts = [feats.normalized(m, items) for m in feats.modalities]
    x = torch.cat(parts, dim=1) if parts else torch.zeros(items.numel(), 0, device=items.device)
    sq = x.pow(2).sum(1, keepdim=True)
    col = (len(parts) - sq).clamp_min(0.0).sqrt() if pad else torch.zeros_like(sq)
    return torch.cat([x, col], dim=1)


@torch.no_grad()
def content_neighbours(features: Dict[str, Tensor], query: Tensor, keys: Tensor, k: int) -> Tensor:
    """Each query item's ``k`` nearest key items by content: similarity = the sum over modalities of the cosine
    of the items' features (an all-zero feature row has cosine 0 with everything). Blockwise
    (:func:`motorec.nn.knn_topk`): no ``[queries x keys]`` matrix is formed. ``k`` is capped at ``len(keys)``.

    Args:
        features: ``{modality: [num_items, d_m]}``.
        query, keys: item ids (int64), e.g. the cold items and the warm items.

    Shapes:
        query: [Q], keys: [K] -> [Q, min(k, K)] int64 item ids (from ``keys``), most similar first.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    num_items = next(iter(features.values())).shape[0] if features else 0
    feats = ItemFeatures(features, num_items)
    if not feats.modalities:
        raise ValueError("content neighbours need at least one feature modality; the dataset has none")
    if keys.numel() == 0:
        return torch.empty(query.numel(), 0, dtype=torch.int64, device=query.device)
    q = _unit_rows_with_padding(feats, query, pad=False)
    c = _unit_rows_with_padding(feats, keys, pad=True)
    _, idx = knn_topk(q, c, k)
    return keys[idx]


class KNNRec(LightGCNRec):
    """LightGCN (IDs) whose cold items' final embedding is the mean of the final LightGCN embeddings of their
    ``cold_k`` (section ``knn:``) nearest warm items by content (:func:`content_neighbours`). Warm items keep their LightGCN
    embedding; users are LightGCN's.

    Config: :class:`KNNConfig` ``cold_k`` (default 10; capped at the number of warm items). Every other setting is
    ``lightgcn``'s.

    Shapes:
        embeddings() -> (users [U, dim], items [I, dim]); cold_neighbors: [num_cold, k'] warm item ids.
    """

    uses_features = True

    def __init__(self, *, features: Dict[str, Tensor], **kw) -> None:
        super().__init__(features=features, **kw)
        k = self.config.cold_k
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"knn.cold_k must be an int >= 1, got {k!r}")
        self.item_features = ItemFeatures(features, self.num_items)
        cold = torch.nonzero(~self.warm_mask).flatten()
        warm = torch.nonzero(self.warm_mask).flatten()
        if cold.numel() and not warm.numel():
            raise ValueError("knn needs at least one item with training interactions to take neighbours from")
        self.register_buffer("cold_items", cold, persistent=False)
        self.register_buffer("cold_neighbors", content_neighbours(self.item_features.as_dict(), cold, warm, k),
                             persistent=False)

    def embeddings(self) -> Tuple[Tensor, Tensor]:
        users, items = super().embeddings()
        if self.cold_items.numel():
            # batches hold warm items only (positives are training pairs, negatives are drawn from warm
            # items), so this changes no training gradient: training stays LightGCN's
            items = items.index_copy(0, self.cold_items, items[self.cold_neighbors].mean(1))
        return users, items
