"""``clcrec`` (``motorec/models/clcrec.py``): ID embeddings and a content encoder trained by CLCRec's
user-item and item-item InfoNCE terms; cold items scored by the content encoder."""
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
    parts = train_epochs(build("clcrec", OWN), 3)
    for k in ("total", "item_item", "user_item"):
        assert parts[-1][k] < parts[0][k], k


def test_item_item_term_aligns_the_two_views():
    m = build("clcrec", OWN)
    warm = torch.nonzero(m.warm_mask).flatten()

    def agreement():
        with torch.no_grad():
            a = torch.nn.functional.normalize(m.item_emb[warm], dim=1)
            b = torch.nn.functional.normalize(m.content_embeddings(warm), dim=1)
            return float((a * b).sum(1).mean())

    before = agreement()
    train_epochs(m, 3)
    assert agreement() > before + 0.1


def test_gradients_reach_every_part():
    g = grads_after_one_step(build("clcrec", OWN))
    assert all(g.values()), [k for k, v in g.items() if not v]


def test_lambda_one_is_the_item_item_term_alone():
    m = build("clcrec", {**OWN, "lr_lambda": 1.0, "lambda_reg": 0.0})
    g = grads_after_one_step(m)
    assert not g["user_emb"] and g["item_emb"] and g["encoder.0.weight"]


def test_cold_items_scored_from_content_warm_items_by_id():
    m = build("clcrec", OWN)
    train_epochs(m, 1)
    check_feature_scoring(m, perturb_content, warm_from_features=False)



def test_bad_config_named():
    with pytest.raises(ConfigError, match="clcrec.temperature"):
        model_config("clcrec", temperature=0.0)
    with pytest.raises(ConfigError, match="clcrec.lr_lambda"):
        model_config("clcrec", lr_lambda=1.5)
