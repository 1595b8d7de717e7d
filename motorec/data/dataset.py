"""The :class:`Dataset` container every loader returns, and :class:`DataError`.

A dataset is validated once, here, at the boundary: every later layer (graph construction, models,
training, evaluation) may assume ids in range, int64 ``[E, 2]`` interaction tensors and finite float32
features with one row per item.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Dict

import numpy as np
import torch
from torch import Tensor

__all__ = ["Dataset", "DataError", "SPLITS"]

SPLITS = ("cold", "warm")


class DataError(ValueError):
    """Bad input data (a file, a column, a value): the message is one line and names what is wrong.

    Subclass of :class:`ValueError`, so callers that catch ``ValueError`` also catch it; the CLI maps it to
    exit code 2.
    """


def _empty_ids(device=None) -> Tensor:
    return torch.zeros(0, dtype=torch.int64, device=device)


def _empty_pairs(device=None) -> Tensor:
    return torch.zeros(0, 2, dtype=torch.int64, device=device)


@dataclass
class Dataset:
    """Users, items, interaction splits and per-item modality features of one recommendation dataset.

    Ids are dense: users ``0 .. num_users-1``, items ``0 .. num_items-1``; row ``k`` of every feature matrix
    belongs to item ``k``. Interactions are implicit positives (``(user, item)`` pairs, no ratings).

    Attributes:
        num_users, num_items: id ranges.
        train, valid, test: int64 ``(user, item)`` pairs. In the ``"cold"`` split, ``valid``/``test`` hold all
            interactions of the held-out cold items (``cold_valid_items`` / ``cold_test_items``) plus a
            per-user sample of interactions with warm items; ``train`` has no interaction of a held-out item.
        features: modality name (``"image"``, ``"text"``, ``"meta"``, ...) -> float32 features.
        name: dataset name (``"ml-100k"``, the ``.inter`` stem, ``"synthetic"``).
        split: ``"cold"`` (strict item cold-start) or ``"warm"`` (every item may appear in training).
        cold_valid_items, cold_test_items: int64 ids of the items held out for validation / test (sorted,
            disjoint); empty for the warm split.
        info: free-form statistics from the loader (e.g. interactions dropped by the split); not part of the
            fingerprint.

    Shapes:
        train: [E_train, 2], valid: [E_valid, 2], test: [E_test, 2] (int64; column 0 user, column 1 item)
        features[m]: [num_items, d_m] float32
        cold_valid_items: [C_valid], cold_test_items: [C_test] (int64)
        warm_items(), cold_items(): [num_items] bool; item_interaction_counts(): [num_items];
        user_interaction_counts(): [num_users]

    Construction validates everything and raises :class:`DataError` naming the field and value.
    """

    num_users: int
    num_items: int
    train: Tensor
    valid: Tensor
    test: Tensor
    features: Dict[str, Tensor]
    name: str = "dataset"
    split: str = "cold"
    cold_valid_items: Tensor = field(default_factory=_empty_ids)
    cold_test_items: Tensor = field(default_factory=_empty_ids)
    info: Dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for attr in ("num_users", "num_items"):
            v = getattr(self, attr)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise DataError(f"Dataset.{attr} must be a non-negative int, got {v!r}")
            setattr(self, attr, int(v))
        if self.split not in SPLITS:
            raise DataError(f"Dataset.split must be one of {SPLITS}, got {self.split!r}")
        for attr in ("train", "valid", "test"):
            t = getattr(self, attr)
            if not isinstance(t, Tensor) or t.dim() != 2 or t.shape[1] != 2:
                shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise DataError(f"Dataset.{attr} must be a [E, 2] (user, item) tensor, got {shape}")
            if t.dtype != torch.int64:
                raise DataError(f"Dataset.{attr} must be int64, got {t.dtype}")
            self._check_range(t[:, 0], f"{attr} user id", self.num_users, "num_users")
            self._check_range(t[:, 1], f"{attr} item id", self.num_items, "num_items")
        if self.train.shape[0] == 0:
            raise DataError(f"dataset {self.name!r}: the training split is empty")
        for attr in ("cold_valid_items", "cold_test_items"):
            t = getattr(self, attr)
            if not isinstance(t, Tensor) or t.dim() != 1 or t.dtype != torch.int64:
                raise DataError(f"Dataset.{attr} must be a 1-D int64 tensor")
            self._check_range(t, attr, self.num_items, "num_items")
        if not isinstance(self.features, dict) or not self.features:
            raise DataError(f"dataset {self.name!r} has no item features (Dataset.features is empty)")
        for m, f in self.features.items():
            if not isinstance(f, Tensor) or f.dim() != 2:
                raise DataError(f"features[{m!r}] must be a 2-D tensor [num_items, d]")
            if f.shape[0] != self.num_items:
                raise DataError(f"features[{m!r}] has {f.shape[0]} rows, expected num_items={self.num_items}")
            if f.dtype != torch.float32:
                raise DataError(f"features[{m!r}] must be float32, got {f.dtype}")
            if f.numel() and not bool(torch.isfinite(f).all()):
                raise DataError(f"features[{m!r}] contains NaN or Inf values")
        if self.split == "cold":
            held = torch.cat([self.cold_valid_items, self.cold_test_items])
            if held.numel() != torch.unique(held).numel():
                raise DataError("cold_valid_items and cold_test_items must be disjoint and without repeats")
            is_held = torch.zeros(self.num_items, dtype=torch.bool, device=held.device)
            is_held[held] = True
            if held.numel() and bool(is_held[self.train[:, 1].to(held.device)].any()):
                raise DataError("the training split contains an interaction of a held-out cold item")
        elif self.cold_valid_items.numel() or self.cold_test_items.numel():
            raise DataError("the warm split must have empty cold_valid_items and cold_test_items")

    @staticmethod
    def _check_range(t: Tensor, what: str, upper: int, upper_name: str) -> None:
        if t.numel() == 0:
            return
        lo, hi = int(t.min()), int(t.max())
        if lo < 0:
            raise DataError(f"negative {what} {lo}")
        if hi >= upper:
            raise DataError(f"{what} {hi} is out of range for {upper_name}={upper}")

    # ------------------------------------------------------------------ views
    @property
    def device(self) -> torch.device:
        return self.train.device

    @property
    def modalities(self) -> list:
        """Modality names in insertion order."""
        return list(self.features)

    def interactions(self, split: str) -> Tensor:
        """The ``"train"``, ``"valid"`` or ``"test"`` pairs. Shapes: -> [E, 2] int64."""
        if split not in ("train", "valid", "test"):
            raise ValueError(f"split must be 'train', 'valid' or 'test', got {split!r}")
        return getattr(self, split)

    def item_interaction_counts(self) -> Tensor:
        """Number of training interactions per item, a repeated (user, item) pair counted each time (a
        model's ``item_degree`` counts distinct users). Shapes: -> [num_items] int64."""
        return torch.bincount(self.train[:, 1], minlength=self.num_items)

    def user_interaction_counts(self) -> Tensor:
        """Number of training interactions per user, repeats counted each time. Shapes: -> [num_users] int64."""
        return torch.bincount(self.train[:, 0], minlength=self.num_users)

    def warm_items(self) -> Tensor:
        """Mask of items with at least one training interaction. Shapes: -> [num_items] bool."""
        return self.item_interaction_counts() > 0

    def cold_items(self) -> Tensor:
        """Mask of items without any training interaction (``~warm_items()``): the held-out cold items and
        any item that never had an interaction. Shapes: -> [num_items] bool."""
        return ~self.warm_items()

    def train_graph(self, device=None, **kwargs):
        """The normalized user-item LightGCN adjacency of the training split (:meth:`motorec.Graph.from_interactions`).

        Shapes: -> Graph with ``num_users + num_items`` nodes (users first).
        """
        from motorec.graph import Graph

        return Graph.from_interactions(self.train[:, 0], self.train[:, 1], self.num_users, self.num_items,
                                       device=device, **kwargs)

    # ------------------------------------------------------------------ identity
    def fingerprint(self) -> str:
        """Content hash (hex, 32 chars) of the split kind, sizes, all interactions and all feature values.

        Two datasets with the same fingerprint hold the same data; a checkpoint trained on one can refuse to
        load on another. The name and ``info`` are not hashed; the tensors' device does not matter.
        """
        h = hashlib.blake2b(digest_size=16)
        h.update(f"motorec-dataset-v1|{self.split}|{self.num_users}|{self.num_items}".encode())
        for attr in ("train", "valid", "test", "cold_valid_items", "cold_test_items"):
            t = getattr(self, attr).detach().cpu().contiguous()
            h.update(f"|{attr}{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes())
        for m in sorted(self.features):
            t = self.features[m].detach().cpu().contiguous()
            h.update(f"|feat:{m}{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()

    def to(self, device) -> "Dataset":
        """A copy with every tensor on ``device`` (no copy of tensors already there)."""
        device = torch.device(device)
        return dataclasses.replace(
            self,
            train=self.train.to(device), valid=self.valid.to(device), test=self.test.to(device),
            features={m: f.to(device) for m, f in self.features.items()},
            cold_valid_items=self.cold_valid_items.to(device), cold_test_items=self.cold_test_items.to(device),
            info=dict(self.info),
        )

    def summary(self) -> str:
        """A few lines: sizes, density, split sizes, cold items, modalities."""
        n_tr, n_va, n_te = (int(t.shape[0]) for t in (self.train, self.valid, self.test))
        total = n_tr + n_va + n_te
        density = total / max(1, self.num_users * self.num_items)
        n_warm = int(self.warm_items().sum())
        lines = [
            f"{self.name} ({self.split} split): {self.num_users:,} users, {self.num_items:,} items, "
            f"{total:,} interactions (density {density:.3%})",
            f"  train {n_tr:,} / valid {n_va:,} / test {n_te:,}; items in train: {n_warm:,}, "
            f"without training interactions: {self.num_items - n_warm:,}",
        ]
        if self.split == "cold":
            lines.append(f"  held-out cold items: {self.cold_valid_items.numel():,} valid / "
                         f"{self.cold_test_items.numel():,} test")
        mods = ", ".join(f"{m} {f.shape[1]}-d" for m, f in self.features.items())
        lines.append(f"  modalities: {mods}")
        dropped = self.info.get("dropped_no_train_user")
        if dropped:
            lines.append(f"  dropped {dropped:,} valid/test interactions of users without training interactions")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, split={self.split!r}, num_users={self.num_users}, "
                f"num_items={self.num_items}, train={tuple(self.train.shape)}, valid={tuple(self.valid.shape)}, "
                f"test={tuple(self.test.shape)}, features={{{', '.join(f'{m!r}: {tuple(f.shape)}' for m, f in self.features.items())}}})")
