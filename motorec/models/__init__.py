"""Recommenders: :class:`MoToRec` and the baselines ``lightgcn``, ``content``, ``lightgcn_content``, the cold-start
baselines ``knn`` and ``aldi`` (docs/BASELINES.md); the wrappers any model can take
(:class:`SnapshotEnsemble`, :class:`Decoupled`); and the parts MoToRec is composed of (tokenizer, content
encoder levels, cold scorer).

Each model's hyper-parameters are a :class:`~motorec.config.ModelConfig` subclass beside it, registered here
under the model's name (its config section). :func:`build_model` makes any model from a dataset, its config
and the wrappers to apply.
"""
from __future__ import annotations

from typing import Optional

from motorec.config import MODEL_NAMES, ConfigError, ModelConfig, WrapperConfig, model_config, register_model_config
from motorec.models.aldi import ALDIConfig, ALDIRec
from motorec.models.aldi_published import ALDIPublishedConfig, ALDIPublishedRec
from motorec.models.base import Recommender, item_degrees
from motorec.models.baselines import ContentConfig, ContentRec, LightGCNContentRec, LightGCNRec
from motorec.models.clcrec import CLCRecConfig, CLCRecRec
from motorec.models.cold import ColdScorer
from motorec.models.content import ItemItemEncoder, SourceAttention, TokenEncoder
from motorec.models.decoupled import Decoupled
from motorec.models.dropoutnet import DropoutNetConfig, DropoutNetRec
from motorec.models.ensemble import SnapshotEnsemble
from motorec.models.features import FeatureEncoder, ItemFeatures
from motorec.models.gar import GARConfig, GARRec
from motorec.models.heater import HeaterConfig, HeaterRec
from motorec.models.knn import KNNConfig, KNNRec
from motorec.models.losses import bpr_loss, info_nce, rarity_weights
from motorec.models.motorec import MoToRec, MoToRecConfig
from motorec.models.tokenizer import MultimodalTokenizer
from motorec.models.wrapper import Wrapper, unwrap

__all__ = ["MoToRec", "MoToRecConfig", "LightGCNRec", "ContentRec", "LightGCNContentRec", "ContentConfig", "KNNRec",
           "KNNConfig", "ALDIRec", "ALDIConfig", "ALDIPublishedRec", "ALDIPublishedConfig", "DropoutNetRec",
           "DropoutNetConfig", "HeaterRec", "HeaterConfig", "CLCRecRec", "CLCRecConfig", "GARRec", "GARConfig", "Recommender", "SnapshotEnsemble", "Decoupled", "Wrapper", "unwrap",
           "build_model", "wrap", "MODELS", "bpr_loss", "info_nce", "item_degrees", "rarity_weights", "ItemFeatures",
           "FeatureEncoder", "MultimodalTokenizer", "TokenEncoder", "ItemItemEncoder", "SourceAttention", "ColdScorer"]

# name -> (model class, its config class); the name is also the model's config section
MODELS = {"motorec": (MoToRec, MoToRecConfig), "lightgcn": (LightGCNRec, ModelConfig),
          "content": (ContentRec, ContentConfig), "lightgcn_content": (LightGCNContentRec, ContentConfig),
          "knn": (KNNRec, KNNConfig), "aldi": (ALDIRec, ALDIConfig),
          "aldi_published": (ALDIPublishedRec, ALDIPublishedConfig), "dropoutnet": (DropoutNetRec, DropoutNetConfig),
          "heater": (HeaterRec, HeaterConfig), "clcrec": (CLCRecRec, CLCRecConfig), "gar": (GARRec, GARConfig)}
for _name, (_, _cfg) in MODELS.items():
    register_model_config(_name, _cfg)
assert tuple(MODELS) == MODEL_NAMES


def build_model(dataset, config: ModelConfig, *, wrappers: Optional[WrapperConfig] = None, backend: str = "auto",
                device: Optional[str] = None, propagation: str = "full", fanout: int = 0) -> Recommender:
    """The recommender ``config.name`` for ``dataset`` (a :class:`motorec.data.Dataset`), on ``device``, with
    ``wrappers`` applied (:func:`wrap`; default none), training with ``propagation`` (``train.propagation``:
    ``full`` or ``history``; a model that cannot take ``history`` raises ConfigError) and at most ``fanout``
    sampled neighbours a node in a history step (``train.fanout``; 0: all).

    Only training interactions and item features are given to the model; validation and test stay with the
    evaluator.
    """
    if config.name not in MODELS:
        raise ValueError(f"unknown model {config.name!r}; choose one of {', '.join(MODELS)}")
    cls, cfg_cls = MODELS[config.name]
    if type(config) is not cfg_cls:
        raise ConfigError(f"model {config.name!r} is configured by a {cfg_cls.__name__}, got a "
                          f"{type(config).__name__} (motorec.config.model_config builds one)")
    device = device or "cpu"
    train = dataset.train.to(device)
    feats = {m: f.to(device) for m, f in dataset.features.items()}
    model = cls(num_users=dataset.num_users, num_items=dataset.num_items, train=train, features=feats,
                config=config, backend=backend, propagation=propagation, fanout=fanout)
    return wrap(model, wrappers) if wrappers is not None else model


def wrap(model: Recommender, wrappers: WrapperConfig) -> Recommender:
    """``model`` with the generic wrappers of ``wrappers`` that it can take: the snapshot ensemble (any model,
    ``ensemble`` > 1) inside, then the decoupled warm scorer (feature models, ``decoupled``): a pure-ID
    LightGCN with ``model``'s shared settings (``dim``, ``num_layers``, ``lambda_reg``), propagation and fanout,
    initialized from the global seed plus :data:`~motorec.models.decoupled.WARM_SEED_OFFSET`."""
    wrappers.validate()
    out = SnapshotEnsemble(model, wrappers.ensemble) if wrappers.ensemble > 1 else model
    if wrappers.decoupled and model.uses_features:
        c = model.config
        cfg = model_config("lightgcn", dim=c.dim, num_layers=c.num_layers, lambda_reg=c.lambda_reg)
        warm = Decoupled.seeded(lambda: LightGCNRec(num_users=model.num_users, num_items=model.num_items,
                                                    train=model.train_pairs, features={}, config=cfg,
                                                    backend=model.backend, propagation=model.propagation,
                                                    fanout=model.fanout),
                                   model.device)
        out = Decoupled(warm, out)
    return out
