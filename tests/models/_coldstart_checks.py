"""Checks shared by the tests of the field's cold-start baselines (dropoutnet, heater, clcrec, gar,
aldi_published): each test file calls them with its model's name and small settings, and adds its own."""
from __future__ import annotations

import torch

from motorec.config import Config, WrapperConfig, model_config
from motorec.data import synthetic
from motorec.models import build_model
from motorec.testing import no_host_sync
from motorec.train import BPRSampler, Trainer

_DATA = {}


def catalog():
    """The brief's catalog: 300 users, 400 items, 5000 interactions (built once per session)."""
    if "ds" not in _DATA:
        _DATA["ds"] = synthetic(300, 400, num_interactions=5000, seed=0)
    return _DATA["ds"]


def build(name, own, seed=0, wrappers=None, ds=None):
    torch.manual_seed(seed)
    return build_model(ds or catalog(), model_config(name, dim=16, **own), wrappers=wrappers)


def train_epochs(model, epochs, lr=0.01, batch_size=512, seed=0):
    """Train ``model`` ``epochs`` epochs with Adam; the mean of each loss part over each epoch."""
    ds = catalog()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sampler = BPRSampler(ds.train, ds.num_items, batch_size=batch_size)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    out = []
    for ep in range(epochs):
        model.on_epoch_start(ep)
        sums, n = {}, 0
        for batch in sampler.epoch(gen):
            opt.zero_grad(set_to_none=True)
            loss, parts = model.loss(batch)
            assert torch.isfinite(loss), (ep, parts)
            loss.backward()
            opt.step()
            n += 1
            for k, v in {"total": loss.detach(), **parts}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        out.append({k: v / n for k, v in sums.items()})
    return out


def grads_after_one_step(model):
    """Parameter name -> whether one batch's loss gave it a non-zero gradient."""
    ds = catalog()
    batch = next(BPRSampler(ds.train, ds.num_items, batch_size=256).epoch(torch.Generator().manual_seed(1)))
    model.train()
    model.zero_grad(set_to_none=True)
    loss, _ = model.loss(batch)
    loss.backward()
    return {k: p.grad is not None and bool(p.grad.abs().sum() > 0) for k, p in model.named_parameters()}


def cold_and_warm_item(model):
    cold = torch.nonzero(~model.warm_mask).flatten()
    warm = torch.nonzero(model.warm_mask).flatten()
    assert cold.numel() > 0 and warm.numel() > 0
    return int(cold[0]), int(warm[0])


def scores(model, users=None):
    model.eval()
    model.drop_caches()
    with torch.no_grad():
        return model.score(torch.arange(20) if users is None else users).clone()


def perturb_content(model, item):
    """Move one item's row of the model's content matrix (the ``perturb`` of :func:`check_feature_scoring` for
    the baselines that score from ``model.content``)."""
    with torch.no_grad():
        model.content[item] += 0.5


def check_feature_scoring(model, perturb, warm_from_features: bool):
    """Changing a cold item's features changes its scores and no other item's; changing a warm item's changes its
    scores exactly when ``warm_from_features``. ``perturb(model, item)`` changes one item's features in place."""
    cold, warm = cold_and_warm_item(model)
    before = scores(model)
    perturb(model, cold)
    after = scores(model)
    assert not torch.allclose(after[:, cold], before[:, cold])
    others = torch.ones(model.num_items, dtype=torch.bool)
    others[cold] = False
    assert torch.allclose(after[:, others], before[:, others], atol=1e-6)
    perturb(model, warm)
    again = scores(model)
    assert torch.allclose(again[:, warm], after[:, warm], atol=1e-6) != warm_from_features


def check_state_round_trip(name, own):
    a = build(name, own, seed=0)
    train_epochs(a, 1)
    b = build(name, own, seed=1)
    b.load_state_dict(a.state_dict())
    for m in (a, b):
        m.on_epoch_start(1)
    assert torch.equal(scores(a), scores(b))


def check_trainer(name, own, wrapped: bool, extra_train=None):
    ds = catalog()
    cfg = Config.from_dict({"model": {"name": name, "dim": 16}, name: own,
                            **({"wrappers": {"ensemble": 3, "decoupled": True} if wrapped else {"ensemble": 1, "decoupled": False}}),
                            "train": {"epochs": 2, "batch_size": 1024, "patience": 0, **(extra_train or {})}})
    r = Trainer(cfg, ds, quiet=True).fit()
    assert r["epochs_run"] == 2
    for group in ("cold", "warm", "hybrid"):
        assert 0.0 <= r["test"][group]["recall@20"] <= 1.0
    return r


def check_no_host_sync(name, own, wrappers=None):
    """After a warm-up step, the loss, its backward and the batch run under motorec.testing.no_host_sync."""
    ds = catalog()
    model = build(name, own, wrappers=wrappers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = BPRSampler(ds.train, ds.num_items, batch_size=128).epoch(torch.Generator().manual_seed(0))
    model.train()
    model.on_epoch_start(0)
    for check in (False, True, True):
        if check:
            with no_host_sync():
                loss, _ = model.loss(next(batches))
                opt.zero_grad(set_to_none=True)
                loss.backward()
        else:
            loss, _ = model.loss(next(batches))
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()


WRAPPERS = WrapperConfig(ensemble=3, decoupled=True)
