"""``evaluate`` through the fused ranking (:func:`motorec.ops.rank_topk` on ``Recommender.ranking_parts()``)
against the dense path (``score_fn`` scores, masking, three ``torch.topk``): the same metrics on trained models,
with and without cold-score calibration, and the NaN error on both paths."""
from __future__ import annotations

import pytest
import torch

from motorec import _ext
from motorec.config import Config
from motorec.data import synthetic
from motorec.eval import evaluate
from motorec.train import Trainer

pytestmark = pytest.mark.skipif(not _ext.c_has_op("rank_topk"), reason=f"motorec._C has no rank_topk ({_ext.C_REASON})")

SMALL = {"model": {"dim": 32}, "motorec": dict(codebook_size=16, latent_dim=16, hidden_dims=[32], knn_k=5),
         "lightgcn_content": {"hidden": 64}}


@pytest.fixture(scope="module")
def ds():
    return synthetic(300, 200, num_topics=8, modalities={"image": 32, "text": 16}, seed=3)


def _trained(ds, name, wrappers=None, **model):
    cfg = Config().replace(model={"name": name, **SMALL["model"], **model}, motorec=SMALL["motorec"],
                           lightgcn_content=SMALL["lightgcn_content"], wrappers=wrappers or {},
                           train={"epochs": 3, "pretrain_epochs": 1, "batch_size": 512, "patience": 0, "lr": 5e-3,
                                  "backend": "cpu"})
    t = Trainer(cfg, ds, quiet=True)
    t.fit()
    t.model.eval()
    return t.model


def _dense(model):
    return lambda users: model.score(users)  # not the bound method: evaluate takes the dense path


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for g in a:
        for m, v in a[g].items():
            assert b[g][m] == pytest.approx(v, abs=1e-12, rel=0), f"{g} {m}: {v} vs {b[g][m]}"


WRAPPED = {"ensemble": 3, "decoupled": True}


@pytest.mark.parametrize("name,model,wrappers", [("motorec", {}, None), ("lightgcn", {}, None),
                                                 ("motorec", {"cold_calibration": 0.7}, None),
                                                 ("lightgcn_content", {"cold_calibration": 1.0}, None),
                                                 ("motorec", {}, WRAPPED),
                                                 ("lightgcn_content", {"cold_calibration": 1.0}, WRAPPED)],
                         ids=["motorec", "lightgcn", "motorec-calibrated", "lightgcn_content-calibrated",
                              "motorec-wrapped", "lightgcn_content-wrapped"])
@pytest.mark.parametrize("split", ["valid", "test"])
def test_fused_matches_dense(ds, name, model, wrappers, split):
    m = _trained(ds, name, wrappers, **model)
    parts = m.ranking_parts()
    assert parts is not None
    if model:
        assert parts[2] is not None and parts[3] is not None
    fused = evaluate(m.score, ds, split=split, ks=(5, 20), batch_size=64, backend="cpu")
    dense = evaluate(_dense(m), ds, split=split, ks=(5, 20), batch_size=64)
    _assert_same(fused, dense)
    assert fused["cold"]["num_users"] > 0 and fused["warm"]["num_users"] > 0


@pytest.mark.parametrize("wrappers", [None, WRAPPED], ids=["plain", "wrapped"])
def test_ranking_parts_reproduce_score(ds, wrappers):
    m = _trained(ds, "motorec", wrappers, cold_calibration=0.5)
    u, i, scale, shift = m.ranking_parts()
    users = torch.arange(17)
    torch.testing.assert_close((u[users] @ i.t()) * scale + shift, m.score(users), rtol=1e-5, atol=1e-5)


def test_torch_backend_uses_dense_path_and_fused_skips_score_fn(ds, monkeypatch):
    m = _trained(ds, "lightgcn")
    calls = []
    orig = type(m).score

    def score(self, users):  # named score: evaluate recognises a model's bound score method by name
        calls.append(users.numel())
        return orig(self, users)

    monkeypatch.setattr(type(m), "score", score)
    # an overridden score is trusted only beside a ranking_parts of the same class (here: the same parts)
    monkeypatch.setattr(type(m), "ranking_parts", type(m).ranking_parts)
    evaluate(m.score, ds, backend="cpu")
    assert not calls
    evaluate(m.score, ds, backend="torch")
    assert calls


def test_nan_raises_on_fused_path(ds):
    m = _trained(ds, "lightgcn")
    u, i = m._eval_embeddings()
    u[3, 0] = float("nan")
    with pytest.raises(ValueError, match="score_fn returned NaN scores"):
        evaluate(m.score, ds, backend="cpu")
    with pytest.raises(ValueError, match="score_fn returned NaN scores"):
        evaluate(_dense(m), ds)


def test_subclass_overriding_score_alone_is_ranked_from_its_score(ds):
    """A model that changes ``score`` but inherits ``ranking_parts`` is ranked by its own scores (the parent's
    parts describe the parent's scores): here the override reverses every item's score."""
    m = _trained(ds, "lightgcn")
    parent = type(m)
    calls = []

    class Reversed(parent):
        def score(self, users):
            calls.append(users.numel())
            return -super().score(users)

    m.__class__ = Reversed
    got = evaluate(m.score, ds, backend="cpu")
    assert calls, "the dense path (the override's own scores) ranked"
    _assert_same(got, evaluate(_dense(m), ds))
    m.__class__ = parent
    assert evaluate(m.score, ds, backend="cpu") != got  # the parent's parts rank differently
