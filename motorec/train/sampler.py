"""Vectorized BPR sampling: every training pair once per epoch, with one negative per positive.

Negatives are drawn on the device with ``torch.randint`` from the items that have training interactions (a
cold item has no training signal and must not be pushed down by sampling either): a fixed number of
candidates per positive at once, keeping the first that is not one of the user's positives. Membership is a binary search (``torch.searchsorted``) in the
sorted ``user * num_items + item`` keys: no per-sample Python loop.
"""
from __future__ import annotations

from typing import Dict, Iterator, Optional

import torch
from torch import Tensor

__all__ = ["BPRSampler"]


class BPRSampler:
    """Shuffled mini-batches of ``(users, pos, neg)`` for BPR.

    Args:
        train: [E, 2] int64 (user, item) training pairs (their device is the sampling device).
        num_items: catalog size.
        batch_size: pairs per batch (the last batch may be smaller).
        max_rounds: candidates drawn per negative; the first that is not one of the user's positives is kept
            (a negative that still collides is only possible for a user who interacted with nearly every warm
            item).

    Shapes:
        each batch: {"users": [B], "pos": [B], "neg": [B]} int64.
    """

    def __init__(self, train: Tensor, num_items: int, *, batch_size: int = 2048, max_rounds: int = 20) -> None:
        if train.dim() != 2 or train.shape[1] != 2 or train.shape[0] == 0:
            raise ValueError(f"train must be a non-empty [E, 2] tensor of (user, item) pairs, got {tuple(train.shape)}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        if max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
        self.num_items = int(num_items)
        train = train.long()
        keys = torch.unique(train[:, 0] * self.num_items + train[:, 1])
        self.keys = keys  # sorted
        self.pairs = torch.stack([keys // self.num_items, keys % self.num_items], dim=1)
        self.candidates = torch.unique(self.pairs[:, 1])
        self.batch_size = int(batch_size)
        self.max_rounds = int(max_rounds)

    @property
    def device(self) -> torch.device:
        return self.keys.device

    def __len__(self) -> int:
        return (self.pairs.shape[0] + self.batch_size - 1) // self.batch_size

    def is_positive(self, users: Tensor, items: Tensor) -> Tensor:
        """Whether each ``(user, item)`` is a training pair. Shapes: [B], [B] -> [B] bool."""
        q = users * self.num_items + items
        pos = torch.searchsorted(self.keys, q).clamp(max=self.keys.numel() - 1)
        return self.keys[pos] == q

    def sample_negatives(self, users: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """One negative item per user, uniform over the warm items, avoiding the user's positives.

        ``max_rounds`` candidates per user are drawn at once and the first that is not a positive is kept (the
        first non-positive of i.i.d. uniform draws is uniform over the non-positives); a user whose every
        candidate collides keeps the first. Fixed shapes throughout: no host read, no data-dependent size, so
        a GPU step never waits on the sampler.

        Shapes:
            users: [B] int64 -> [B] int64.
        """
        n = self.candidates.numel()
        draws = self.candidates[torch.randint(n, (users.numel(), self.max_rounds), device=self.device,
                                              generator=generator)]
        hit = self.is_positive(users.unsqueeze(1).expand_as(draws), draws)
        first = (~hit).to(torch.uint8).argmax(1, keepdim=True)  # 0 when every draw hit: keep the first
        return draws.gather(1, first).squeeze(1)

    def epoch(self, generator: Optional[torch.Generator] = None) -> Iterator[Dict[str, Tensor]]:
        """Yield the batches of one epoch (a fresh permutation of all training pairs)."""
        perm = torch.randperm(self.pairs.shape[0], device=self.device, generator=generator)
        for start in range(0, perm.numel(), self.batch_size):
            idx = perm[start:start + self.batch_size]
            users, pos = self.pairs[idx, 0], self.pairs[idx, 1]
            yield {"users": users, "pos": pos, "neg": self.sample_negatives(users, generator)}
