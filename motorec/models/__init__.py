"""Recommenders: :class:`MoToRec` and the baselines ``lightgcn``, ``content``, ``lightgcn_content``, the cold-start
baselines ``knn`` and ``aldi`` (docs/BASELINES.md), and the parts MoToRec is composed of (tokenizer, content
encoder levels, cold scorer).

:func:`build_model` makes any of them from a dataset and a :class:`motorec.config.ModelConfig`.
"""
from __future__ import annotations

from typing import Optional

from motorec.config import MODEL_NAMES, ModelConfig
from motorec.models.aldi import ALDIRec
from motorec.models.base import Recommender, bpr_loss, info_nce, item_degrees
from motorec.models.baselines import ContentRec, LightGCNContentRec, LightGCNRec
from motorec.models.cold import ColdScorer
from motorec.models.content import ItemItemEncoder, SourceAttention, TokenEncoder
from motorec.models.features import FeatureEncoder, ItemFeatures
from motorec.models.knn import KNNRec
from motorec.models.motorec import MoToRec, rarity_weights
from motorec.models.tokenizer import MultimodalTokenizer

__all__ = ["MoToRec", "LightGCNRec", "ContentRec", "LightGCNContentRec", "KNNRec", "ALDIRec", "Recommender",
           "build_model", "MODELS", "bpr_loss", "info_nce", "item_degrees", "rarity_weights", "ItemFeatures",
           "FeatureEncoder", "MultimodalTokenizer", "TokenEncoder", "ItemItemEncoder", "SourceAttention", "ColdScorer"]

MODELS = {"motorec": MoToRec, "lightgcn": LightGCNRec, "content": ContentRec, "lightgcn_content": LightGCNContentRec,
          "knn": KNNRec, "aldi": ALDIRec}
assert set(MODELS) == set(MODEL_NAMES)


def build_model(dataset, config: ModelConfig, *, backend: str = "auto", device: Optional[str] = None) -> Recommender:
    """The recommender ``config.name`` for ``dataset`` (a :class:`motorec.data.Dataset`), on ``device``.

    Only training interactions and item features are given to the model; validation and test stay with the
    evaluator.
    """
    if config.name not in MODELS:
        raise ValueError(f"unknown model {config.name!r}; choose one of {', '.join(MODELS)}")
    device = device or "cpu"
    train = dataset.train.to(device)
    feats = {m: f.to(device) for m, f in dataset.features.items()}
    return MODELS[config.name](num_users=dataset.num_users, num_items=dataset.num_items, train=train,
                               features=feats, config=config, backend=backend)
