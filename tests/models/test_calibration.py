"""Cold-score calibration (``motorec/models/cold.py``, ``ColdScorer``): one option for every model that scores cold
items from features (``model.cold_calibration``; null: the model's default, on for MoToRec and off for the
baselines): one affine map of every cold score onto the warm scores' distribution over all (user, item) pairs,
from the embeddings' moments; warm scores untouched; no checkpoint state."""
from __future__ import annotations

import math

import pytest
import torch
from _model_helpers import make_model

from motorec.config import Config, ConfigError, model_config
from motorec.models.cold import ColdScorer, gram_and_mean

FEATURE_MODELS = ("motorec", "lightgcn_content", "content", "knn", "aldi")


def _model(ds, name, **over):
    m = make_model(ds, name, **over)
    m.on_epoch_start(0)
    m.eval()
    return m


def _raw(m, users):
    return m.user_embeddings()[users] @ m.item_embeddings().t()


@pytest.mark.parametrize("a", [1.0, 0.3])
@pytest.mark.parametrize("name", FEATURE_MODELS)
def test_calibration_is_one_affine_map_onto_the_warm_moments(ds, name, a):
    m = _model(ds, name, cold_calibration=a)
    allu = torch.arange(ds.num_users)
    raw, s = _raw(m, allu).double(), m.score(allu).double()
    cold = ds.cold_items()
    w, c = raw[:, ~cold], raw[:, cold]
    mw, sw, mc, sc = w.mean(), w.std(unbiased=False), c.mean(), c.std(unbiased=False)
    expect = (1 - a) * c + a * ((c - mc) / sc * sw + mw)
    assert torch.equal(s[:, ~cold], raw[:, ~cold])
    assert torch.allclose(s[:, cold], expect, atol=1e-4)
    some = torch.tensor([3, 0, 17])  # the same map whatever users are asked for
    assert torch.allclose(m.score(some), s[some].float(), atol=1e-6)
    if a == 1.0:
        assert math.isclose(float(s[:, cold].mean()), float(mw), abs_tol=1e-4)
        assert math.isclose(float(s[:, cold].std(unbiased=False)), float(sw), rel_tol=1e-4)
    # the fused ranking's parts give the same scores
    u, i, scale, shift = m.ranking_parts()
    torch.testing.assert_close((u @ i.t()) * scale + shift, s.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", FEATURE_MODELS[1:])
def test_baselines_default_off(ds, name):
    m = _model(ds, name)
    users = torch.arange(0, ds.num_users, 5)
    assert isinstance(m.cold, ColdScorer) and m.config.cold_calibration is None and m.cold.strength() == 0.0
    assert torch.equal(m.score(users), _raw(m, users))
    assert m.ranking_parts()[2] is None


def test_motorec_default_is_on_and_equals_explicit_one(ds):
    users = torch.arange(0, ds.num_users, 3)
    default = _model(ds, "motorec", cold_calibration=None).score(users)
    explicit = _model(ds, "motorec", cold_calibration=1.0).score(users)
    off = _model(ds, "motorec", cold_calibration=0.0)
    assert torch.equal(default, explicit)
    assert torch.equal(off.score(users), _raw(off, users))
    assert not torch.allclose(default, off.score(users))  # calibrated exactly once, not twice, not never


def test_the_config_is_read_at_each_call(ds):
    m = _model(ds, "lightgcn_content")
    users = torch.arange(10)
    before = m.score(users).clone()
    m.config.cold_calibration = 1.0
    assert not torch.allclose(m.score(users), before)


def test_id_only_model_has_no_calibration(ds):
    m = _model(ds, "lightgcn", cold_calibration=1.0)
    assert m.cold is None
    users = torch.arange(10)
    assert torch.equal(m.score(users), _raw(m, users))


def test_calibration_adds_no_checkpoint_state(ds):
    for name in FEATURE_MODELS:
        assert not any(k.startswith("cold.") for k in _model(ds, name).state_dict()), name


def test_config_values():
    assert Config.from_dict({"model": {"cold_calibration": None}}).model.cold_calibration is None
    assert Config.from_dict({"model": {"cold_calibration": 1}}).model.cold_calibration == 1.0
    for bad in (1.5, -0.1, "high", True):
        with pytest.raises(ConfigError, match="cold_calibration"):
            Config.from_dict({"model": {"cold_calibration": bad}})
    with pytest.raises(ValueError, match="default_calibration"):
        ColdScorer(model_config("content"), torch.ones(3, dtype=torch.bool), default_calibration=2.0)


def test_gram_and_mean_chunked_matches_direct():
    x = torch.randn(10, 4)
    g, m = gram_and_mean(x, chunk=3)
    x64 = x.double()
    assert torch.allclose(g, x64.t() @ x64 / 10) and torch.allclose(m, x64.mean(0))
    rows = torch.tensor([True, False, True, True, False, False, True, True, False, True])
    gr, mr = gram_and_mean(x, rows, chunk=3)
    sel = x64[rows]
    assert torch.allclose(gr, sel.t() @ sel / 6) and torch.allclose(mr, sel.mean(0))
    g0, m0 = gram_and_mean(torch.zeros(0, 4))
    assert g0.shape == (4, 4) and torch.equal(m0, torch.zeros(4, dtype=torch.float64))
