"""``heater`` (``motorec/models/heater.py``): a LightGCN backbone trained as ``lightgcn``, a mixture of experts
mapping content to its space under a similarity constraint, and randomized training of the transformations."""
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
from motorec.models.heater import MixtureOfExperts

OWN = {"hidden": 32, "experts": 3}


def test_loss_finite_and_decreasing():
    parts = train_epochs(build("heater", OWN), 3)
    assert parts[-1]["total"] < parts[0]["total"]
    assert parts[-1]["bpr"] < parts[0]["bpr"]


def test_alignment_pulls_content_embeddings_to_the_cf_embeddings():
    # the backbone moves as it trains, so the trained experts are compared with fresh ones on the final backbone
    m = build("heater", {**OWN, "alpha": 1.0})
    train_epochs(m, 2)
    fresh = build("heater", {**OWN, "alpha": 1.0}, seed=1)
    fresh.lightgcn.load_state_dict(m.lightgcn.state_dict())
    warm = torch.nonzero(m.warm_mask).flatten()

    def gap(model):
        with torch.no_grad():
            return float((model.content_embeddings(warm) - model.cf_embeddings()[1][warm]).pow(2).sum(1).mean())

    assert gap(m) < 0.5 * gap(fresh)


def test_gradients_reach_every_part():
    g = grads_after_one_step(build("heater", OWN))
    assert all(g.values()), [k for k, v in g.items() if not v]


def test_mixture_weights_experts_by_a_softmax_gate():
    torch.manual_seed(0)
    moe = MixtureOfExperts(6, 4, 3, 2)
    x = torch.randn(5, 6)
    h = torch.tanh(moe.first(x)).view(5, 2, 4)
    experts = [torch.tanh(h[:, k] @ moe.second[k] + moe.second_bias[k]) for k in range(2)]
    g = torch.softmax(moe.gate(x), dim=1)
    assert torch.allclose(moe(x), g[:, :1] * experts[0] + g[:, 1:] * experts[1], atol=1e-6)


def test_cold_items_scored_from_content_warm_items_from_cf():
    m = build("heater", OWN)
    train_epochs(m, 1)
    check_feature_scoring(m, perturb_content, warm_from_features=False)



def test_bad_config_named():
    with pytest.raises(ConfigError, match="heater.experts"):
        model_config("heater", experts=0)
    with pytest.raises(ConfigError, match="heater.alpha"):
        model_config("heater", alpha=-1.0)
