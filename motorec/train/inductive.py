"""The inductive check (``motorec train --inductive``): MoToRec trained without ever seeing the held-out items,
which arrive afterwards through :meth:`MoToRec.with_new_items`, evaluated on the full catalog.

In the standard cold-start run the held-out (validation and test) items are in the catalog from the start:
they get no interactions and no trained ID embedding, but their features are in the feature matrices during
training (the tokenizer's k-means initialization, the codebook statistics, the item-item kNN graphs). Here
they are not: :func:`inductive_split` builds the catalog without them (the kept items first, in their
original order, so held-out item ``h`` gets id ``n_kept + rank of h``), MoToRec is trained on it as usual,
the held-out items are appended by ``with_new_items`` with their features alone, and
:func:`fit_inductive` evaluates the grown model on the original dataset in the original item ids, with the
same :func:`motorec.eval.evaluate` as every other run.

What cannot be the same: checkpoint selection. The catalog it trains on has no cold validation items (they are
held out too), so ``train.select``'s cold part has no users and selection falls back to the warm setting
(:func:`motorec.train.trainer.select_score`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

from motorec.config import Config, ConfigError

__all__ = ["inductive_split", "fit_inductive"]


def inductive_split(ds) -> Tuple[Any, Tensor, Tensor]:
    """The catalog without ``ds``'s held-out items, and how to map back.

    Returns ``(kept_ds, held, new_of_old)``: ``kept_ds`` has the kept items as ids ``0 .. n_kept - 1`` (their
    original order), the same users and training pairs, the validation/test pairs of kept items, and the kept
    items' feature rows only; ``held`` are the held-out item ids (sorted); ``new_of_old[i]`` is item ``i``'s id
    in the grown catalog (kept items first, then ``held`` in order).

    Shapes:
        -> (Dataset, held [H] int64, new_of_old [num_items] int64)
    """
    if ds.split != "cold":
        raise ConfigError("--inductive needs the cold-start split (data.split: cold): the warm split holds no "
                          "items out")
    dev = ds.train.device
    held = torch.sort(torch.cat([ds.cold_valid_items, ds.cold_test_items]).to(dev)).values
    if held.numel() == 0:
        raise ConfigError("--inductive: the dataset holds no items out (cold_valid_items and cold_test_items "
                          "are empty)")
    is_held = torch.zeros(ds.num_items, dtype=torch.bool, device=dev)
    is_held[held] = True
    kept = torch.nonzero(~is_held).flatten()
    order = torch.cat([kept, held])
    new_of_old = torch.empty_like(order)
    new_of_old[order] = torch.arange(order.numel(), device=dev)

    def pairs(p: Tensor) -> Tensor:
        p = p[~is_held[p[:, 1]]]
        return torch.stack([p[:, 0], new_of_old[p[:, 1]]], 1)

    kept_ds = dataclasses.replace(
        ds, num_items=int(kept.numel()), train=pairs(ds.train), valid=pairs(ds.valid), test=pairs(ds.test),
        features={m: f[kept] for m, f in ds.features.items()}, name=f"{ds.name}-inductive",
        cold_valid_items=ds.cold_valid_items.new_empty(0), cold_test_items=ds.cold_test_items.new_empty(0),
        info={**ds.info, "inductive_held_out_items": int(held.numel())})
    return kept_ds, held, new_of_old


def fit_inductive(config: Config, ds, *, quiet: bool = False, logger=None, device: Optional[torch.device] = None,
                  evaluate_fn=None) -> Dict[str, Any]:
    """Train MoToRec on ``ds`` without its held-out items, append them with ``with_new_items``, evaluate on
    ``ds`` (original item ids).

    Returns the :meth:`Trainer.fit` fields (``valid``/``test`` now the full catalog's metrics, every setting),
    plus ``"model"`` (the grown model, grown-catalog ids), ``"trained_model"`` (the model before the new items
    arrived), ``"new_of_old"`` and ``"num_new_items"``.
    """
    from motorec.train.trainer import Trainer

    if config.model.name != "motorec":
        raise ConfigError(f"--inductive is for MoToRec (its with_new_items); got model {config.model.name!r}")
    if evaluate_fn is None:
        from motorec.eval import evaluate as evaluate_fn
    kept_ds, held, new_of_old = inductive_split(ds)
    trainer = Trainer(config, kept_ds, quiet=quiet, logger=logger, device=device)
    res = trainer.fit()
    trained = trainer.model
    trained.eval()
    dev = trained.device
    grown = trained.with_new_items({m: f[held].to(dev) for m, f in ds.features.items()})
    new_of_old = new_of_old.to(dev)

    def score_fn(users: Tensor) -> Tensor:
        return grown.score(users)[:, new_of_old]  # grown-catalog columns back to the original ids (a copy)

    full = ds.to(dev)
    metrics = {split: {g: {k: v if isinstance(v, int) else float(v) for k, v in m.items()} for g, m in
                       evaluate_fn(score_fn, full, split=split, batch_size=config.train.eval_batch_size,
                                   device=dev).items()} for split in ("valid", "test")}
    return {**res, **metrics, "model": grown, "trained_model": trained, "new_of_old": new_of_old,
            "num_new_items": int(held.numel())}
