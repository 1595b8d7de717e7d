"""``gar`` (``motorec/models/gar.py``): a LightGCN backbone trained as ``lightgcn``, a content generator and a
recommender playing GAR's adversarial game, each updated by its own objective only."""
from __future__ import annotations

import pytest
import torch
from _coldstart_checks import (
    build,
    catalog,
    check_feature_scoring,
    grads_after_one_step,
    perturb_content,
    train_epochs,
)

from motorec.config import ConfigError, model_config
from motorec.train import BPRSampler

OWN = {"hidden": 32}


def test_loss_finite_and_the_non_adversarial_parts_decrease():
    # the two players' objectives oppose each other, so their sum need not fall; the backbone's BPR does, and
    # with alpha 1 the generator's objective is the similarity term alone, which falls too
    parts = train_epochs(build("gar", {**OWN, "alpha": 1.0}), 3)
    assert parts[-1]["bpr"] < parts[0]["bpr"]
    assert parts[-1]["generator"] < parts[0]["generator"]


def test_each_player_gets_the_gradient_of_its_own_objective_only():
    m = build("gar", OWN)
    ds = catalog()
    batch = next(BPRSampler(ds.train, ds.num_items, batch_size=128).epoch(torch.Generator().manual_seed(0)))
    _, _, (ue, pe, ne) = m.backbone_loss(batch)
    gen = m.generate(batch["pos"])
    c = m.config
    # the recommender's objective alone, through the model's loss with the generator's part switched off
    m.zero_grad(set_to_none=True)
    total, _ = m.loss(batch)
    total.backward()
    rec_grads = {k: p.grad.clone() for k, p in m.item_rec.named_parameters()}
    gen_grads = {k: p.grad.clone() for k, p in m.generator.named_parameters()}
    m.zero_grad(set_to_none=True)
    ur, ir = m.user_rec(ue), m.item_rec(torch.cat([pe, ne, gen.detach()]))
    b = pe.shape[0]
    s = [(ur * ir[k * b:(k + 1) * b]).sum(1) for k in range(3)]
    sp = torch.nn.functional.softplus
    rec = (1 - c.beta) * sp(s[2] - s[0]).mean() + c.beta * sp(s[1] - s[0]).mean() + m.reg_loss(ur, ir)
    rec.backward()
    assert all(torch.allclose(p.grad, rec_grads[k], atol=1e-6) for k, p in m.item_rec.named_parameters())
    m.zero_grad(set_to_none=True)
    g = m.generate(batch["pos"])
    adv = sp((ur.detach() * m.item_rec(pe)).sum(1).detach() - (ur.detach() * m.item_rec(g)).sum(1)).mean()
    ((1 - c.alpha) * adv + c.alpha * (g - pe).pow(2).mean()).backward()
    assert all(torch.allclose(p.grad, gen_grads[k], atol=1e-6) for k, p in m.generator.named_parameters())


def test_gradients_reach_every_part():
    g = grads_after_one_step(build("gar", OWN))
    assert all(g.values()), [k for k, v in g.items() if not v]


def test_cold_items_scored_from_content_warm_items_from_cf():
    m = build("gar", OWN)
    train_epochs(m, 1)
    check_feature_scoring(m, perturb_content, warm_from_features=False)



def test_bad_config_named():
    with pytest.raises(ConfigError, match="gar.beta"):
        model_config("gar", beta=-0.1)
