"""The interface every model shares (``Recommender``): loss, backward, scores that are inner products of the
cached eval embeddings, and a training step whose gathers sum repeated rows without float atomics."""
from __future__ import annotations

import math

import pytest
import torch
from _model_helpers import make_batch, make_model

from motorec.config import WrapperConfig
from motorec.models import MODELS


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "wrapped"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_loss_backward_score(ds, name, wrapped):
    wrappers = WrapperConfig(ensemble=2, decoupled=True) if wrapped else None
    m = make_model(ds, name, wrappers=wrappers, cold_calibration=0.0) if name != "lightgcn" else \
        make_model(ds, name, wrappers=wrappers)
    m.train()
    m.on_epoch_start(0)
    total, parts = m.loss(make_batch(ds))
    # clcrec trains by InfoNCE alone: no BPR term
    assert torch.isfinite(total) and ("bpr" in parts or name == "clcrec") and all(math.isfinite(v) for v in parts.values())
    total.backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    m.on_epoch_start(1)  # a wrapped model takes a snapshot here
    m.eval()
    users = torch.tensor([0, 5, 7])
    s = m.score(users)
    assert s.shape == (3, ds.num_items) and torch.isfinite(s).all()
    u, i = m.user_embeddings(), m.item_embeddings()
    assert u.shape[0] == ds.num_users and i.shape[0] == ds.num_items
    assert torch.allclose(s, u[users] @ i.t(), atol=1e-6)
    s[:] = 0  # evaluate writes into the scores: they must not alias the cache
    assert torch.allclose(m.score(users), u[users] @ i.t(), atol=1e-6)


@pytest.mark.parametrize("name", ["motorec", "lightgcn", "content", "lightgcn_content", "aldi"])
def test_loss_backward_sums_repeated_rows_without_atomics(ds, name):
    """A training step's gathers are index_select, whose backward (index_add_) sums repeated rows in a fixed
    order: no index_put_ with accumulate, which ATen runs with float atomics on several CPU threads once a
    batch has 32k entries (a 2048-pair batch at dim 16), so that two runs of the same seed would differ."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.bad = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name_ = func.overloadpacket.__name__
            if name_ in ("index_put", "index_put_", "_index_put_impl_"):
                acc = kwargs.get("accumulate", args[3] if len(args) > 3 else False)
                if acc:
                    self.bad.append(name_)
            return func(*args, **kwargs)

    model = make_model(ds, name)
    model.train()
    model.on_epoch_start(1)
    batch = make_batch(ds, size=64)
    with Record() as rec:
        loss, _ = model.loss(batch)
        loss.backward()
    assert rec.bad == [], f"{name}: {rec.bad}"


@pytest.mark.parametrize("name", ["knn", "aldi"])
def test_trains_through_the_trainer(ds, name):
    from motorec.config import Config
    from motorec.train import Trainer

    cfg = Config.from_dict({"model": {"name": name, "dim": 16},
                            "train": {"epochs": 1, "batch_size": 512, "pretrain_epochs": 0}})
    r = Trainer(cfg, ds, quiet=True).fit()
    assert r["epochs_run"] == 1
    for group in ("cold", "warm", "hybrid"):
        assert 0.0 <= r["test"][group]["recall@20"] <= 1.0


@pytest.mark.parametrize("name", ["knn", "aldi"])
def test_cold_items_ignore_their_untrained_id_embedding(ds, name):
    m = make_model(ds, name)
    m.eval()
    before_u, before_i = m.user_embeddings().clone(), m.item_embeddings().clone()
    cold = ~m.warm_mask
    with torch.no_grad():
        m.item_emb[cold] += 10.0
    m.train(), m.eval()
    assert torch.allclose(m.item_embeddings(), before_i, atol=1e-6)
    assert torch.allclose(m.user_embeddings(), before_u, atol=1e-6)
