"""``dropoutnet`` (``motorec/models/dropoutnet.py``): a LightGCN backbone trained as ``lightgcn`` and DropoutNet
towers fitted to its scores with the items' preference embedding dropped at random."""
from __future__ import annotations

import pytest
import torch
from _coldstart_checks import (
    build,
    check_feature_scoring,
    grads_after_one_step,
    perturb_content,
    train_epochs,
)

from motorec.config import ConfigError, model_config

OWN = {"hidden": 32}


def test_loss_finite_and_decreasing():
    parts = train_epochs(build("dropoutnet", OWN), 4)
    assert parts[-1]["total"] < parts[0]["total"]
    assert parts[-1]["bpr"] < parts[0]["bpr"]


def test_towers_fit_the_backbone_scores():
    m = build("dropoutnet", OWN)
    train_epochs(m, 3)
    fresh = build("dropoutnet", OWN, seed=1)
    fresh.lightgcn.load_state_dict(m.lightgcn.state_dict())
    trained, untrained = (train_epochs(x, 1, lr=0.0)[0]["score_mse"] for x in (m, fresh))
    assert trained < untrained


def test_gradients_reach_every_part():
    g = grads_after_one_step(build("dropoutnet", OWN))
    assert all(g.values()), [k for k, v in g.items() if not v]


def test_dropout_zero_keeps_every_preference_and_one_drops_all():
    m = build("dropoutnet", {**OWN, "dropout": 0.0})
    assert bool(m.row_keep(64, 0.0).all())
    assert not bool(m.row_keep(64, 0.999999).any())


def test_cold_items_scored_from_content_warm_items_from_both():
    m = build("dropoutnet", OWN)
    train_epochs(m, 1)
    check_feature_scoring(m, perturb_content, warm_from_features=True)


def test_cold_item_enters_the_tower_with_a_zero_preference():
    m = build("dropoutnet", OWN)
    m.eval()
    with torch.no_grad():
        _, items = m.embeddings()
        m.item_emb[~m.warm_mask] += 5.0
        _, again = m.embeddings()
    assert torch.allclose(items[~m.warm_mask], again[~m.warm_mask])



def test_bad_config_named():
    with pytest.raises(ConfigError, match="dropoutnet.dropout"):
        model_config("dropoutnet", dropout=1.0)
    with pytest.raises(ConfigError, match="dropoutnet.hidden"):
        model_config("dropoutnet", hidden=0)
