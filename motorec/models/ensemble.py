"""``SnapshotEnsemble``: cold items scored by the mean of a model's standardized scores over its last W epochs.

A content path's cold ranking can move a lot from one epoch to the next while its warm ranking changes
smoothly (MoToRec's tokens churn: most items' codes change every epoch), so the epoch that validation selects
is partly a draw among nearby rankings. Averaging the scores of the last W epochs' weights removes most of
that draw; averaging the weights themselves does not (their scores are not linear in the weights).

What it keeps (the memory, bounded): per snapshot, the model's final user table divided by the standard
deviation of its scores over every (user, item) pair, and the final embeddings of the items it averages (the
catalog's cold items at construction): ``(W - 1) * (U + C) * d`` floats, never W copies of the model or of
the item table. Warm items, and items added later (:meth:`with_new_items`), are scored by the current weights
alone, standardized the same way, so their ranking is the model's own.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from motorec.models.base import Recommender, weights_key
from motorec.models.cold import gram_and_mean
from motorec.models.wrapper import Wrapper

__all__ = ["SnapshotEnsemble", "standardized"]


class SnapshotEnsemble(Wrapper):
    """A snapshot ensemble of ``model`` over its last ``size`` epochs (the current weights and ``size - 1``
    snapshots, each taken at the end of a joint epoch).

    With ``n`` states held, user ``u``'s score of an averaged item ``i`` is
    ``(1 / n) sum_k <u_k, i_k> / sd_k`` (``sd_k`` the standard deviation of state ``k``'s scores over every pair)
    and of any other item ``<u_0, i_0> / sd_0`` (the current state). Training is the model's own, unchanged; a
    snapshot costs one forward pass in eval mode at each epoch start, none when the last eval-mode
    :meth:`embeddings` saw the same weights (the trainer's validation of the epoch before: its snapshot is kept
    until then, ``(U + C) * d`` floats, and forgotten by a training :meth:`loss`).

    Args:
        model: any recommender. size: W >= 2. items: the items to average (default: the items without training
            interactions).

    Shapes:
        embeddings() in eval mode -> (users [U, n * d], items [I, n * d]); in training mode the model's own.
    """

    def __init__(self, model: Recommender, size: int, items: Optional[Tensor] = None) -> None:
        super().__init__(model)
        if isinstance(size, bool) or not isinstance(size, int) or size < 2:
            raise ValueError(f"size must be an integer >= 2 (1 is no ensemble), got {size!r}")
        self.model = model
        self.size = size
        if items is None:
            items = torch.nonzero(~model.warm_mask).flatten()
        if items.dtype != torch.long or items.dim() != 1:
            raise ValueError(f"items must be a 1-d int64 tensor of item ids, got {items.dtype} {tuple(items.shape)}")
        self.register_buffer("items", items.to(model.device), persistent=False)
        self.members: List[Dict[str, Any]] = []
        # (weights_key of the model, snapshot) from the last eval-mode embeddings(), for the next epoch start
        self._seen: Optional[Tuple[Any, Dict[str, Any]]] = None

    # ------------------------------------------------------------------ training: the model's own
    def loss(self, batch: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        self._seen = None  # a training forward may move weights through .data (EMA codebooks)
        return self.model.loss(batch)

    def on_epoch_start(self, epoch: int) -> None:
        """Takes the snapshot of the weights at the end of joint epoch ``epoch - 1``, then the model's own
        epoch start."""
        super().on_epoch_start(epoch)
        if epoch >= 1:
            self.members = (self.members + [self._snapshot(epoch - 1)])[-(self.size - 1):]
            self.drop_caches()
        self.model.on_epoch_start(epoch)

    @torch.no_grad()
    def _snapshot(self, epoch: int) -> Dict[str, Any]:
        seen, self._seen = self._seen, None
        with self.model.eval_mode():
            if seen is not None and seen[0] == weights_key(self.model):
                member = seen[1]
            else:
                users, items = self.model.embeddings()
                member = self._member(standardized(users, items)[0], items)
        return _frozen({"epoch": int(epoch), **member})

    def _member(self, scaled_users: Tensor, items: Tensor) -> Dict[str, Any]:
        """A snapshot's tensors: the standardized users, the averaged items' rows."""
        return {"users": scaled_users.detach(), "items": items.detach().index_select(0, self.items)}

    # ------------------------------------------------------------------ scoring
    def embeddings(self) -> Tuple[Tensor, Tensor]:
        users, items = self.model.embeddings()
        if self.training:
            return users, items
        scaled, _ = standardized(users, items)
        # the next epoch start's snapshot, if the weights stay as they are
        self._seen = (weights_key(self.model), self._member(scaled, items))
        if not self.members:
            return users, items
        users = scaled
        n, d = len(self.members) + 1, items.shape[1]
        others = items.new_zeros(items.shape[0], (n - 1) * d)
        others.index_copy_(0, self.items, torch.cat([m["items"] for m in self.members], dim=1))
        # the averaged items take every state's block; the others the current block alone, times n
        scale = torch.full((items.shape[0], 1), float(n), dtype=items.dtype, device=items.device)
        scale.index_fill_(0, self.items, 1.0)
        return (torch.cat([users] + [m["users"] for m in self.members], dim=1) / n,
                torch.cat([items * scale, others], dim=1))

    # ------------------------------------------------------------------ state
    def get_extra_state(self) -> Dict[str, Any]:
        return {"items": self.items, "members": list(self.members)}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        members = state.get("members") if isinstance(state, dict) else None
        ok = isinstance(members, list) and all(
            isinstance(m, dict) and isinstance(m.get("epoch"), int) and isinstance(m.get("users"), Tensor)
            and isinstance(m.get("items"), Tensor) for m in members)
        if not ok:
            raise ValueError("a SnapshotEnsemble state must be {'items': ids, 'members': [{'epoch', 'users', "
                             "'items'}, ...]}")
        if len(members) > self.size - 1:
            raise ValueError(f"the state holds {len(members)} snapshots, this ensemble keeps {self.size - 1}")
        if not torch.equal(state["items"].cpu(), self.items.cpu()):
            raise ValueError("the state averages other items than this ensemble")
        for m in members:
            if m["users"].shape[0] != self.num_users or m["items"].shape[0] != self.items.numel():
                raise ValueError(f"the snapshot of epoch {m['epoch']} has {m['users'].shape[0]} users and "
                                 f"{m['items'].shape[0]} items, this ensemble {self.num_users} and {self.items.numel()}")
        dev = self.items.device
        self.members = [_frozen(m, dev) for m in members]
        self.drop_caches()

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self.members = [_frozen(m, self.items.device) for m in self.members]
        self._seen = None
        return out

    @torch.no_grad()
    def with_new_items(self, features: Dict[str, Tensor]) -> "SnapshotEnsemble":
        """The ensemble around ``model.with_new_items(features)``; the new items are scored by the final weights
        alone (no snapshot holds them)."""
        grown = SnapshotEnsemble(self.model.with_new_items(features), self.size, self.items)
        grown.members = list(self.members)
        grown.epoch = self.epoch
        return grown.eval()


def _frozen(member: Dict[str, Any], device=None) -> Dict[str, Any]:
    """A snapshot whose tensors are fresh inference tensors (on ``device``): torch refuses to change them in place,
    so copies of a state dict may share them instead of copying (the trainer's selected states do)."""
    with torch.inference_mode():
        return {"epoch": member["epoch"], **{k: member[k].to(device, copy=True) for k in ("users", "items")}}


def standardized(users: Tensor, items: Tensor) -> Tuple[Tensor, Tensor]:
    """``(users / sd, items)``, ``sd`` the standard deviation of ``users @ items.T`` over all pairs, from the two
    Gram matrices (:func:`~motorec.models.cold.gram_and_mean`: never the score matrix, float64 moments; 1 where
    the scores are constant; no host read).

    Shapes:
        users [U, d], items [I, d] -> the same."""
    gu, mu = gram_and_mean(users.detach())
    gi, mi = gram_and_mean(items.detach())
    mean = mu @ mi
    sd = ((gu * gi).sum() - mean * mean).clamp_min(0.0).sqrt()
    return users / torch.where(sd > 0, sd, torch.ones_like(sd)).to(users.dtype), items
