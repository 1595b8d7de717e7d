"""Helpers of the model-layer tests (imported by adding this folder to ``sys.path``, as ``tests/train/_mmrec.py``
is): a tiny catalog, seeded models with small settings, BPR batches."""
from __future__ import annotations

import torch

from motorec.config import model_config
from motorec.data import synthetic
from motorec.models import build_model
from motorec.train import BPRSampler

# small per-model settings; tokenizer_sample 0: the whole (90-item) catalog every step, so a training step and a
# full-catalog forward see the same tokens (tests of the sampled step set it themselves)
SMALL = {
    "motorec": dict(dim=16, codebook_size=16, latent_dim=16, hidden_dims=(32,), knn_k=5, tokenizer_sample=0),
    "lightgcn": dict(dim=16),
    "content": dict(dim=16, hidden=32),
    "lightgcn_content": dict(dim=16, hidden=32),
    "knn": dict(dim=16),
    "aldi": dict(dim=16, hidden=32),
    "aldi_published": dict(dim=16, hidden=32, teacher_epochs=1),
    "dropoutnet": dict(dim=16, hidden=32),
    "heater": dict(dim=16, hidden=32, experts=3),
    "clcrec": dict(dim=16, hidden=32),
    "gar": dict(dim=16, hidden=32),
}


def tiny_dataset():
    """120 users, 90 items (about a fifth cold), two modalities."""
    return synthetic(120, 90, num_topics=6, modalities={"image": 24, "text": 12}, seed=3)


def small_config(name: str, **over):
    """``model_config(name)`` with :data:`SMALL`'s settings, ``over`` on top; MoToRec's scores uncalibrated
    (calibration has its own tests) unless ``over`` says otherwise."""
    if name == "motorec":
        over.setdefault("cold_calibration", 0.0)
    return model_config(name, **{**SMALL[name], **over})


def make_model(ds, name: str = "motorec", seed: int = 0, wrappers=None, propagation: str = "full", fanout: int = 0,
               **over):
    torch.manual_seed(seed)
    return build_model(ds, small_config(name, **over), wrappers=wrappers, propagation=propagation, fanout=fanout)


def make_batch(ds, seed: int = 0, size: int = 64):
    g = torch.Generator().manual_seed(seed)
    return next(BPRSampler(ds.train, ds.num_items, batch_size=size).epoch(g))



def cold_last(ds):
    """``ds`` with item ids permuted so that every item without a training interaction comes last, and the same
    dataset truncated to its warm items (as if the cold ones had never been in the catalog)."""
    from motorec.data import Dataset

    warm = ds.warm_items()
    order = torch.cat([torch.nonzero(warm).flatten(), torch.nonzero(~warm).flatten()])
    new_id = torch.empty_like(order)
    new_id[order] = torch.arange(order.numel())
    remap = lambda pairs: torch.stack([pairs[:, 0], new_id[pairs[:, 1]]], 1)  # noqa: E731
    full = Dataset(num_users=ds.num_users, num_items=ds.num_items, train=remap(ds.train), valid=remap(ds.valid),
                   test=remap(ds.test), features={m: f[order] for m, f in ds.features.items()}, name="cold-last")
    n_warm = int(warm.sum())
    keep = lambda pairs: pairs[pairs[:, 1] < n_warm]  # noqa: E731
    trunc = Dataset(num_users=ds.num_users, num_items=n_warm, train=full.train, valid=keep(full.valid),
                    test=keep(full.test), features={m: f[:n_warm] for m, f in full.features.items()}, name="warm")
    return full, trunc, n_warm
