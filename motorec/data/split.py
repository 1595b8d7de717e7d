"""Train / validation / test splits: the strict item cold-start split and the warm split.

Everything is vectorized torch on CPU (sort, unique, isin, bincount); seeded with a private
``torch.Generator`` so a split depends only on its inputs and ``seed``.

Conventions shared by both splits (documented in :func:`cold_start_split` and :func:`warm_split`):

* repeated ``(user, item)`` pairs count once (implicit feedback);
* validation and test interactions of a user with no training interaction are dropped: a user with no
  history cannot be represented by an ID-based or graph model, and user cold-start is not what is measured
  here. The count is reported in ``info["dropped_no_train_user"]``.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from motorec.data.dataset import DataError

__all__ = ["SplitResult", "cold_start_split", "warm_split", "per_user_labels", "dedupe"]


class SplitResult(NamedTuple):
    """Output of :func:`cold_start_split` / :func:`warm_split`.

    Shapes:
        train: [E_train, 2], valid: [E_valid, 2], test: [E_test, 2] int64 (user, item) pairs
        cold_valid_items: [C_valid], cold_test_items: [C_test] int64 sorted item ids (empty for warm)
    """

    train: Tensor
    valid: Tensor
    test: Tensor
    cold_valid_items: Tensor
    cold_test_items: Tensor
    info: Dict[str, object]


def _check_pairs(pairs: Tensor, num_users: int, num_items: int) -> Tensor:
    if not isinstance(pairs, Tensor) or pairs.dim() != 2 or pairs.shape[1] != 2:
        shape = tuple(pairs.shape) if isinstance(pairs, Tensor) else type(pairs).__name__
        raise ValueError(f"pairs must be a [E, 2] (user, item) integer tensor, got {shape}")
    if pairs.is_floating_point() or pairs.dtype == torch.bool:
        raise ValueError(f"pairs must have an integer dtype, got {pairs.dtype}")
    pairs = pairs.to(device="cpu", dtype=torch.int64)
    if pairs.numel():
        for col, n, what in ((0, num_users, "user"), (1, num_items, "item")):
            lo, hi = int(pairs[:, col].min()), int(pairs[:, col].max())
            if lo < 0 or hi >= n:
                raise DataError(f"{what} id {lo if lo < 0 else hi} out of range [0, {n})")
    return pairs


def dedupe(pairs: Tensor, num_items: int, labels: Optional[Tensor] = None):
    """Remove repeated ``(user, item)`` pairs; with ``labels``, keep the smallest label of each pair
    (train 0 before valid 1 before test 2), so a pair seen in training is never also a test target.

    Shapes:
        pairs: [E, 2] int64, labels: [E] int64 or None -> (pairs [E', 2] sorted by (user, item), labels [E'] or None)
    """
    n = max(int(num_items), 1)
    key = pairs[:, 0] * n + pairs[:, 1]
    if labels is None:
        key = torch.unique(key)
        return torch.stack([key // n, key % n], dim=1), None
    order = torch.argsort(key * 3 + labels)
    key, labels = key[order], labels[order]
    first = torch.ones_like(key, dtype=torch.bool)
    first[1:] = key[1:] != key[:-1]
    key, labels = key[first], labels[first]
    return torch.stack([key // n, key % n], dim=1), labels


def per_user_labels(users: Tensor, *, ratios: Sequence[float] = (0.8, 0.1, 0.1),
                    generator: Optional[torch.Generator] = None) -> Tensor:
    """Random per-user train/valid/test labels (0/1/2): each user's interactions are shuffled, then the first
    ``deg - n_valid - n_test`` go to train, with ``n_valid = floor(deg * ratios[1])`` and
    ``n_test = floor(deg * ratios[2])``. A user with at least one interaction keeps at least one in training;
    users with fewer than ``1 / ratios[2]`` interactions contribute no test interaction.

    Shapes:
        users: [E] int64 -> labels [E] int64 in {0, 1, 2}
    """
    r0, r1, r2 = (float(r) for r in ratios)
    if min(r0, r1, r2) < 0 or r0 <= 0 or abs(r0 + r1 + r2 - 1.0) > 1e-6:
        raise ValueError(f"ratios must be 3 non-negative numbers summing to 1 with ratios[0] > 0, got {tuple(ratios)}")
    e = users.numel()
    if e == 0:
        return torch.zeros(0, dtype=torch.int64)
    rand = torch.rand(e, generator=generator, dtype=torch.float64)
    order = torch.argsort(rand)
    order = order[torch.argsort(users[order], stable=True)]  # grouped by user, random within a user
    su = users[order]
    _, counts = torch.unique_consecutive(su, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(e) - torch.repeat_interleave(starts, counts)
    deg = torch.repeat_interleave(counts, counts).to(torch.float64)
    # The epsilon keeps floor(10 * 0.1) == 1 despite binary rounding.
    n_valid = torch.floor(deg * r1 + 1e-9).long()
    n_test = torch.floor(deg * r2 + 1e-9).long()
    n_train = deg.long() - n_valid - n_test
    sorted_labels = torch.where(rank < n_train, 0, torch.where(rank < n_train + n_valid, 1, 2))
    labels = torch.empty(e, dtype=torch.int64)
    labels[order] = sorted_labels
    return labels


def _drop_users_without_train(train: Tensor, part: Tensor, num_users: int):
    has_train = torch.bincount(train[:, 0], minlength=num_users) > 0
    keep = has_train[part[:, 0]]
    return part[keep], int((~keep).sum())


def cold_start_split(pairs: Tensor, num_users: int, num_items: int, *, cold_ratio: float = 0.2, seed: int = 0,
                     warm_ratios: Sequence[float] = (0.8, 0.1, 0.1)) -> SplitResult:
    """Strict item cold-start split (MICRO / ColdRec protocol).

    1. Repeated pairs count once.
    2. ``round(cold_ratio * n)`` of the ``n`` items that have interactions are drawn at random (seeded); the
       first half (rounded down) are the validation cold items, the rest the test cold items. *All* their
       interactions go to valid / test respectively, so train has no interaction of a held-out item.
    3. The remaining (warm-item) interactions are split per user with :func:`per_user_labels`
       (``warm_ratios``, default 80/10/10), so valid/test also measure warm items. A warm valid/test pair
       whose item ended up with no training interaction is moved back to train: the evaluation's "cold"
       group is then exactly the held-out items.
    4. Valid/test pairs of users without any training interaction are dropped (count in
       ``info["dropped_no_train_user"]``).

    Any labels the source data carries (MMRec's ``x_label``) are not used: the cold split is drawn afresh.

    Shapes:
        pairs: [E, 2] int (user, item) -> :class:`SplitResult`
    """
    if not 0.0 <= float(cold_ratio) < 1.0:
        raise ValueError(f"cold_ratio must be in [0, 1), got {cold_ratio!r}")
    pairs = _check_pairs(pairs, num_users, num_items)
    n0 = pairs.shape[0]
    pairs, _ = dedupe(pairs, num_items)
    g = torch.Generator().manual_seed(int(seed))
    items = pairs[:, 1]
    candidates = torch.nonzero(torch.bincount(items, minlength=num_items) > 0).flatten()
    n_cold = int(round(float(cold_ratio) * candidates.numel()))
    chosen = candidates[torch.randperm(candidates.numel(), generator=g)[:n_cold]]
    cold_valid_items = torch.sort(chosen[: n_cold // 2]).values
    cold_test_items = torch.sort(chosen[n_cold // 2:]).values
    # A per-item lookup table is much cheaper than torch.isin over millions of interactions.
    held = torch.zeros(num_items, dtype=torch.int8)
    held[cold_valid_items] = 1
    held[cold_test_items] = 2
    item_held = held[items]
    in_cold_valid = item_held == 1
    in_cold_test = item_held == 2
    warm = ~(in_cold_valid | in_cold_test)

    warm_pairs = pairs[warm]
    labels = per_user_labels(warm_pairs[:, 0], ratios=warm_ratios, generator=g)
    in_train = torch.zeros(num_items, dtype=torch.bool)
    in_train[warm_pairs[labels == 0, 1]] = True
    moved = (labels > 0) & ~in_train[warm_pairs[:, 1]]
    labels = torch.where(moved, 0, labels)

    train = warm_pairs[labels == 0]
    valid = torch.cat([warm_pairs[labels == 1], pairs[in_cold_valid]])
    test = torch.cat([warm_pairs[labels == 2], pairs[in_cold_test]])
    if train.shape[0] == 0:
        raise DataError(f"the cold-start split left no training interaction ({pairs.shape[0]} interactions, "
                        f"cold_ratio={cold_ratio})")
    valid, dv = _drop_users_without_train(train, valid, num_users)
    test, dt = _drop_users_without_train(train, test, num_users)
    info = {"dropped_no_train_user": dv + dt, "moved_to_train": int(moved.sum()), "duplicates_removed": n0 - pairs.shape[0]}
    return SplitResult(train, valid, test, cold_valid_items, cold_test_items, info)


def warm_split(pairs: Tensor, labels: Tensor, num_users: int, num_items: int) -> SplitResult:
    """Warm split from given labels (MMRec's ``x_label``: 0 train, 1 valid, 2 test).

    Repeated pairs keep their smallest label; valid/test pairs of users without training interactions are
    dropped (``info["dropped_no_train_user"]``). Valid/test may contain items never seen in training: the
    evaluation reports them in its "cold" group.

    Shapes:
        pairs: [E, 2] int, labels: [E] int in {0, 1, 2} -> :class:`SplitResult` (empty cold item lists)
    """
    pairs = _check_pairs(pairs, num_users, num_items)
    if not isinstance(labels, Tensor) or labels.shape != (pairs.shape[0],):
        raise ValueError(f"labels must be a [{pairs.shape[0]}] tensor, got "
                         f"{tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__}")
    labels = labels.to(device="cpu", dtype=torch.int64)
    bad = (labels < 0) | (labels > 2)
    if bool(bad.any()):
        raise DataError(f"split label {int(labels[bad][0])} is not one of 0 (train), 1 (valid), 2 (test)")
    n0 = pairs.shape[0]
    pairs, labels = dedupe(pairs, num_items, labels)
    train, valid, test = (pairs[labels == k] for k in range(3))
    if train.shape[0] == 0:
        raise DataError("the training split is empty (no interaction with label 0)")
    valid, dv = _drop_users_without_train(train, valid, num_users)
    test, dt = _drop_users_without_train(train, test, num_users)
    empty = torch.zeros(0, dtype=torch.int64)
    info = {"dropped_no_train_user": dv + dt, "duplicates_removed": n0 - pairs.shape[0]}
    return SplitResult(train, valid, test, empty, empty.clone(), info)
