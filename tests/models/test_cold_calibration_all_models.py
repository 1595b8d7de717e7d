"""The cold-score calibration (``ColdScorer``) is one option for every model that scores cold items from
features: the same config keys, each model's own default while ``model.cold_calibration`` is null (MoToRec on,
the baselines off), and the same map whichever model applies it."""
from __future__ import annotations

import pytest
import torch

from motorec.config import Config, ConfigError, ModelConfig
from motorec.data import synthetic
from motorec.models import build_model
from motorec.models.cold import ColdScorer

SMALL = dict(codebook_size=16, latent_dim=16, hidden_dims=[32], dim=16, knn_k=5, content_hidden=32)
FEATURE_BASELINES = ("lightgcn_content", "content", "knn", "aldi")


@pytest.fixture(scope="module")
def ds():
    return synthetic(120, 90, num_topics=6, modalities={"image": 24, "text": 12}, seed=3)


def _model(ds, name, **over):
    torch.manual_seed(0)
    m = build_model(ds, ModelConfig(name=name, **{**SMALL, **over}))
    m.on_epoch_start(0)
    m.eval()
    return m


def _raw(m, users):
    return m.user_embeddings()[users] @ m.item_embeddings().t()


@pytest.mark.parametrize("name", FEATURE_BASELINES)
def test_baselines_default_off_and_option_works(ds, name):
    users = torch.arange(0, ds.num_users, 5)
    cold = ds.cold_items()
    m = _model(ds, name)
    assert isinstance(m.cold, ColdScorer) and m.config.cold_calibration is None
    assert torch.equal(m.score(users), _raw(m, users))  # default: off, as before

    # the same keys as MoToRec: user scope, full strength -> each user's cold scores get the warm moments
    m = _model(ds, name, cold_calibration=1.0, cold_calibration_scope="user")
    raw, s = _raw(m, users).double(), m.score(users).double()
    assert torch.equal(s[:, ~cold], raw[:, ~cold])
    c, w = raw[:, cold], raw[:, ~cold]
    expect = (c - c.mean(1, keepdim=True)) / c.std(1, keepdim=True) * w.std(1, keepdim=True) + w.mean(1, keepdim=True)
    assert torch.allclose(s[:, cold], expect, atol=1e-5)

    # global scope with a shift: one affine map over all users, from the embeddings' moments
    m = _model(ds, name, cold_calibration=0.5, cold_score_shift=0.3)
    allu = torch.arange(ds.num_users)
    raw, s = _raw(m, allu).double(), m.score(allu).double()
    c, w = raw[:, cold], raw[:, ~cold]
    mw, sw, mc, sc = w.mean(), w.std(unbiased=False), c.mean(), c.std(unbiased=False)
    expect = 0.5 * c + 0.5 * ((c - mc) / sc * sw + mw) - 0.3 * sw
    assert torch.allclose(s[:, cold], expect, atol=1e-4)
    assert torch.equal(s[:, ~cold], raw[:, ~cold])


def test_motorec_default_is_on_and_equals_explicit_one(ds):
    users = torch.arange(0, ds.num_users, 3)
    default = _model(ds, "motorec").score(users)
    explicit = _model(ds, "motorec", cold_calibration=1.0).score(users)
    off = _model(ds, "motorec", cold_calibration=0.0)
    assert torch.equal(default, explicit)
    assert torch.equal(off.score(users), _raw(off, users))
    assert not torch.allclose(default, off.score(users))  # calibrated exactly once, not twice, not never


def test_id_only_model_has_no_calibration(ds):
    m = _model(ds, "lightgcn", cold_calibration=1.0)
    assert m.cold is None
    users = torch.arange(10)
    assert torch.equal(m.score(users), _raw(m, users))


def test_calibration_adds_no_checkpoint_state(ds):
    for name in FEATURE_BASELINES:
        assert not any(k.startswith("cold.") for k in _model(ds, name).state_dict()), name


def test_config_values():
    assert Config.from_dict({"model": {"cold_calibration": None}}).model.cold_calibration is None
    assert Config.from_dict({"model": {"cold_calibration": 1}}).model.cold_calibration == 1.0
    for bad in (1.5, -0.1, "high", True):
        with pytest.raises(ConfigError, match="cold_calibration"):
            Config.from_dict({"model": {"cold_calibration": bad}})
    with pytest.raises(ValueError, match="default_calibration"):
        ColdScorer(ModelConfig(), torch.ones(3, dtype=torch.bool), default_calibration=2.0)
