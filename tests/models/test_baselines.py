"""The baselines of ``motorec/models/baselines.py``: ``lightgcn`` (IDs only), ``content`` (feature MLP, BPR) and
``lightgcn_content`` (LightGCN with projected features in the item layer 0), with ``content.hidden`` /
``lightgcn_content.hidden`` the width of the feature MLP."""
from __future__ import annotations

import math

import torch
from _model_helpers import make_batch, make_model

from motorec.models import item_degrees
from motorec.models.losses import bpr_loss


def test_item_degrees_counts_distinct_pairs():
    train = torch.tensor([[0, 1], [0, 1], [1, 1], [2, 3], [1, 0]])
    assert item_degrees(train, 5).tolist() == [1.0, 2.0, 0.0, 1.0, 0.0]


def test_lightgcn_loss_is_bpr_plus_the_l2_of_layer0(ds):
    m = make_model(ds, "lightgcn", lambda_reg=1e-2)
    b = make_batch(ds)
    total, parts = m.loss(b)
    u, p, n = b["users"], b["pos"], b["neg"]
    with torch.no_grad():
        users, items = m.embeddings()
        bpr = bpr_loss((users[u] * items[p]).sum(1), (users[u] * items[n]).sum(1))
        reg = 1e-2 * (m.user_emb[u].pow(2).sum() + m.item_emb[p].pow(2).sum() + m.item_emb[n].pow(2).sum())
        reg = reg / u.numel()
    assert math.isclose(float(parts["bpr"]), float(bpr), rel_tol=1e-5)
    assert math.isclose(float(parts["reg"]), float(reg), rel_tol=1e-5)
    assert math.isclose(float(total.detach()), float(bpr + reg), rel_tol=1e-5)
    assert m.cold is None  # an ID model scores no cold item from features: nothing to calibrate


def test_lightgcn_content_cold_items_from_features(ds):
    m = make_model(ds, "lightgcn_content")
    m.eval()
    before = m.item_embeddings().clone()
    cold = ds.cold_items()
    with torch.no_grad():
        m.item_emb[cold] = torch.randn(int(cold.sum()), m.item_emb.shape[1])
    m.train()
    m.eval()
    assert torch.allclose(m.item_embeddings()[cold], before[cold], atol=1e-6)
    # layer 0: ID (warm rows) + the feature MLP; a cold item's final embedding is its projection / (L + 1)
    with torch.no_grad():
        proj = m.encoder(m.item_features.as_dict())
        torch.testing.assert_close(m.item_layer0()[cold], proj[cold])
        torch.testing.assert_close(m.item_layer0()[~cold], m.item_emb[~cold] + proj[~cold])
        torch.testing.assert_close(before[cold], proj[cold] / (m.config.num_layers + 1), rtol=1e-5, atol=1e-6)


def test_content_scores_items_by_their_features_alone(ds):
    m = make_model(ds, "content")
    m.eval()
    users, items = m.embeddings()
    with torch.no_grad():
        torch.testing.assert_close(items, m.encoder(m.item_features.as_dict()))
    assert torch.equal(users, m.user_emb)
    b = make_batch(ds)
    m.train()
    total, parts = m.loss(b)
    with torch.no_grad():
        ue, ip, ineg = m.user_emb[b["users"]], items[b["pos"]], items[b["neg"]]
        bpr = bpr_loss((ue * ip).sum(1), (ue * ineg).sum(1))
    assert math.isclose(float(parts["bpr"]), float(bpr), rel_tol=1e-5)


def test_hidden_sets_the_feature_mlp_width(ds):
    for name in ("content", "lightgcn_content"):
        widths = {h: sum(p.numel() for p in make_model(ds, name, hidden=h).encoder.parameters()) for h in (8, 32)}
        assert widths[8] < widths[32], name
