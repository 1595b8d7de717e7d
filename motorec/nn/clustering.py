"""k-means for codebook initialization: k-means++ seeding (D^2 sampling) and Lloyd iterations, vectorized,
with the assignment step run through :func:`motorec.ops.residual_quantize` (one level), so the fused kernels
serve it where available. :class:`~motorec.nn.ResidualQuantizer` initializes each level with it.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from motorec.ops import residual_quantize
from motorec.ops._common import check_float_matrix

__all__ = ["kmeans"]

# Rows per chunk of a nearest-centroid search: chunk x K distances stay around 16M floats (64 MiB) on the
# torch backend, which builds the distance matrix; the fused kernels never do.
_DIST_BUDGET = 1 << 24


def _nearest(data: Tensor, centroids: Tensor, backend: str, chunk: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """Nearest centroid of every row of ``data`` (ties: lowest index), in chunks of rows.

    Shapes:
        data: [N, D], centroids: [K, D] -> (assign [N] int64, squared distance [N] float32)
    """
    n, k = data.shape[0], centroids.shape[0]
    if chunk is None:
        chunk = max(1, _DIST_BUDGET // max(k, 1))
    cb = centroids.unsqueeze(0).to(data.dtype)
    codes, dists = [], []
    for s in range(0, n, chunk):
        out = residual_quantize(data[s:s + chunk], cb, backend=backend)
        codes.append(out.codes[:, 0])
        dists.append(out.residual_sq[:, 0].float())
    if not codes:
        return (torch.empty(0, dtype=torch.int64, device=data.device),
                torch.empty(0, dtype=torch.float32, device=data.device))
    return torch.cat(codes), torch.cat(dists)


def _rng_device(generator: Optional[torch.Generator], data: Tensor) -> torch.device:
    return data.device if generator is None else generator.device


def _kmeans_plusplus(data: Tensor, k: int, generator: Optional[torch.Generator]) -> Tensor:
    """k-means++ seeding (D^2 sampling) on ``data`` [M, D] -> [k, D]. Once every point coincides with a
    centre (fewer distinct points than k), the remaining centres are uniform random picks."""
    m = data.shape[0]
    rng = _rng_device(generator, data)
    idx = torch.empty(k, dtype=torch.int64, device=data.device)
    idx[0] = torch.randint(m, (1,), generator=generator, device=rng)[0].to(data.device)
    d2 = (data - data[idx[0]]).pow(2).sum(1)
    for j in range(1, k):
        total = d2.sum()
        if bool(total > 0):
            pick = torch.multinomial((d2 / total).to(rng), 1, generator=generator)
        else:
            pick = torch.randint(m, (1,), generator=generator, device=rng)
        idx[j] = pick[0].to(data.device)
        d2 = torch.minimum(d2, (data - data[idx[j]]).pow(2).sum(1))
    return data[idx].clone()


def kmeans(
    data: Tensor,
    num_clusters: int,
    iters: int = 10,
    *,
    max_seed_points: Optional[int] = None,
    backend: str = "auto",
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor]:
    """Lloyd's k-means with k-means++ seeding, vectorized; the assignment step is chunked (and runs through
    :func:`motorec.ops.residual_quantize` with one level, so the fused kernels serve it where available).

    Seeding runs on a random subset of at most ``max_seed_points`` rows (default ``max(4096, 16 K)``).
    Clusters left empty by an iteration are re-seeded with random data points.

    Args:
        data: [N, D] float, N >= 1.
        num_clusters: K >= 1 (may exceed N: the surplus centres duplicate data points).
        iters: Lloyd iterations (0: seeding only).

    Shapes:
        data: [N, D] -> (centroids [K, D] float32, assign [N] int64, the nearest final centroid per row)
    """
    check_float_matrix(data, "data")
    if data.shape[0] < 1:
        raise ValueError("data must have at least one row for k-means")
    if not isinstance(num_clusters, int) or num_clusters < 1:
        raise ValueError(f"num_clusters must be an int >= 1, got {num_clusters!r}")
    if not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters must be an int >= 0, got {iters!r}")
    x = data.detach().float()
    n, dim = x.shape
    limit = max_seed_points if max_seed_points is not None else max(4096, 16 * num_clusters)
    seed_rows = x
    if n > limit:
        sel = torch.randperm(n, generator=generator, device=_rng_device(generator, x))[:limit].to(x.device)
        seed_rows = x[sel]
    centroids = _kmeans_plusplus(seed_rows, num_clusters, generator)
    assign = _nearest(x, centroids, backend)[0]
    for _ in range(iters):
        counts = torch.bincount(assign, minlength=num_clusters)
        sums = torch.zeros(num_clusters, dim, dtype=x.dtype, device=x.device).index_add_(0, assign, x)
        empty = counts == 0
        centroids = torch.where(empty.unsqueeze(1), centroids, sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype))
        n_empty = int(empty.sum())
        if n_empty:
            pick = torch.randint(n, (n_empty,), generator=generator, device=_rng_device(generator, x)).to(x.device)
            centroids[empty] = x[pick]
        assign = _nearest(x, centroids, backend)[0]
    return centroids, assign
