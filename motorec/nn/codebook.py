"""Codebook maintenance for :class:`~motorec.nn.ResidualQuantizer`: usage counts, EMA codeword updates,
dead-code re-seeding and usage statistics, and how these statistics agree across data-parallel ranks
(:class:`StatisticsSync`).

The quantizer owns the tensors (they are its buffers, so a checkpoint holds them under the quantizer's own
keys) and decides when each step runs; the functions here update one level's rows in place. None of them
reads a value back to the host except :func:`reseed_dead_codes` (the number of dead codes sizes its random
draw), which the quantizer calls only at the end of a dead-code window.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["StatisticsSync", "SHARDED", "REPLICATED", "code_counts", "ema_update", "reseed_dead_codes",
           "usage", "perplexity"]


def _group_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class StatisticsSync:
    """How a quantizer's training statistics agree across the ranks of the default ``torch.distributed``
    process group. Without an initialized group of more than one rank both operations do nothing.

    * :meth:`reduce` sums usage counts and EMA sums over ranks, in place.
    * :meth:`broadcast` copies random choices (k-means centroids, re-seeded codewords) from rank 0, in place,
      so that every rank keeps the same codebooks.

    Args:
        reduce: sum counts and EMA sums over ranks. True when each rank quantizes its own shard of the data
            (:data:`SHARDED`, the quantizer's default). False when every rank quantizes the same, whole data:
            its statistics are then global already, and summing would count each vector once per rank
            (:data:`REPLICATED`). Broadcasts happen either way.
    """

    def __init__(self, *, reduce: bool = True) -> None:
        if not isinstance(reduce, bool):
            raise TypeError(f"reduce must be a bool, got {type(reduce).__name__}")
        self._reduce = reduce

    @property
    def reduces(self) -> bool:
        """Whether :meth:`reduce` sums over ranks."""
        return self._reduce

    def reduce(self, t: Tensor) -> Tensor:
        """Sum ``t`` over ranks in place (all-reduce) when this strategy reduces; returns ``t``."""
        if self._reduce and _group_active():
            dist.all_reduce(t)
        return t

    def broadcast(self, t: Tensor) -> Tensor:
        """Copy rank 0's ``t`` into every rank's ``t`` in place; returns ``t``."""
        if _group_active():
            dist.broadcast(t, src=0)
        return t

    def __repr__(self) -> str:
        return f"StatisticsSync(reduce={self._reduce})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StatisticsSync) and other._reduce == self._reduce

    def __hash__(self) -> int:
        return hash((StatisticsSync, self._reduce))


SHARDED = StatisticsSync(reduce=True)
"""Each rank quantizes its own shard: counts and EMA sums are summed over ranks (the default)."""

REPLICATED = StatisticsSync(reduce=False)
"""Every rank quantizes the same data: counts and EMA sums stay per rank; random choices are still broadcast."""


def code_counts(codes: Tensor, codebook_size: int) -> Tensor:
    """Assignments per code of every level, as a fixed-size scatter: unlike ``torch.bincount``, which reads
    the largest value back to size its output, this never waits on the device. Integer sums: exact.

    Shapes:
        codes: [N, L] int64 with values in [0, codebook_size) -> [L, codebook_size] int64
    """
    num_levels = codes.shape[1]
    offsets = torch.arange(num_levels, device=codes.device, dtype=torch.int64) * codebook_size
    flat = (codes + offsets).reshape(-1)
    counts = torch.zeros(num_levels * codebook_size, dtype=torch.int64, device=codes.device)
    return counts.index_add_(0, flat, torch.ones_like(flat)).view(num_levels, codebook_size)


@torch.no_grad()
def ema_update(codebook: Tensor, cluster_size: Tensor, embed_sum: Tensor, counts: Tensor, residuals: Tensor,
               codes: Tensor, *, decay: float, eps: float, sync: StatisticsSync) -> None:
    """One EMA step of one level (VQ-VAE-2): ``cluster_size`` and ``embed_sum`` move toward this batch's
    ``counts`` and per-code sums of ``residuals`` (summed over ranks by ``sync``) with weight ``1 - decay``,
    and each codeword becomes its EMA sum over its Laplace-smoothed EMA count (``eps`` per code, total count
    preserved). Updates the first three in place.

    Shapes:
        codebook: [K, D], cluster_size: [K] float, embed_sum: [K, D] float32, counts: [K] (assignments in the
        batch, already reduced over ranks), residuals: [N, D] float32 (the vectors this level quantized),
        codes: [N] int64 (their codes)
    """
    sums = torch.zeros(embed_sum.shape, dtype=torch.float32, device=residuals.device)
    sums = sync.reduce(sums.index_add_(0, codes, residuals))
    cluster_size.mul_(decay).add_(counts.to(cluster_size.dtype), alpha=1.0 - decay)
    embed_sum.mul_(decay).add_(sums, alpha=1.0 - decay)
    total = cluster_size.sum()
    smoothed = (cluster_size + eps) / (total + cluster_size.shape[0] * eps) * total
    codebook.copy_(embed_sum / smoothed.unsqueeze(1))


@torch.no_grad()
def reseed_dead_codes(codebook: Tensor, cluster_size: Tensor, embed_sum: Tensor, usage_counts: Tensor,
                      window_counts: Tensor, residuals: Tensor, *, threshold: float, sync: StatisticsSync) -> None:
    """Replace every code of one level used fewer than ``threshold`` times in the window by a random row of
    ``residuals`` (without replacement when there are enough rows), drawn from the global torch generator of
    ``residuals``' device and broadcast from rank 0. A re-seeded code gets EMA count 1, EMA sum equal to its
    new codeword and usage count 0. Updates ``codebook``, ``cluster_size``, ``embed_sum`` and ``usage_counts``
    in place; nothing happens when no code is dead or ``residuals`` is empty.

    Reads the number of dead codes back to the host. With counts reduced by ``sync``, every rank finds the
    same dead codes.

    Shapes:
        codebook: [K, D], cluster_size: [K], embed_sum: [K, D], usage_counts: [K], window_counts: [K],
        residuals: [N, D] float32 (the vectors this level quantized in the current batch)
    """
    dead = window_counts < threshold
    n_dead, n = int(dead.sum()), residuals.shape[0]
    if n_dead == 0 or n == 0:
        return
    if n >= n_dead:
        pick = torch.randperm(n, device=residuals.device)[:n_dead]
    else:
        pick = torch.randint(n, (n_dead,), device=residuals.device)
    new = sync.broadcast(residuals[pick].contiguous())
    codebook[dead] = new.to(codebook.dtype)
    cluster_size[dead] = 1.0
    embed_sum[dead] = new
    usage_counts[dead] = 0


def usage(counts: Tensor) -> Tensor:
    """Fraction of assignments per code, per level (a row of zeros where nothing was counted).

    Shapes:
        counts: [L, K] -> [L, K] float
    """
    c = counts.float()
    return c / c.sum(1, keepdim=True).clamp_min(1)


def perplexity(counts: Tensor) -> Tensor:
    """``exp(entropy)`` of each level's code distribution: K when usage is uniform, 1 when one code takes
    everything.

    Shapes:
        counts: [L, K] -> [L]
    """
    p = usage(counts)
    ent = -(p * torch.log(p.clamp_min(1e-30))).sum(1)
    return torch.exp(ent)
