"""Shared test parameter matrix and generators (after pytorch_scatter's ``testing.py`` and PyG's ``withCUDA``).

Tests import from here so that every op is exercised over the same devices, dtypes and backends, with
readable ids, and GPU-only cases skip with a reason on CPU machines.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from motorec import _ext
from motorec._dispatch import dispatcher
from motorec.graph import Graph

DEVICES: List[torch.device] = [torch.device("cpu")] + ([torch.device("cuda")] if _ext.CUDA_AVAILABLE else [])
FLOAT_DTYPES = [torch.float32, torch.float64]
INDEX_DTYPES = [torch.int32, torch.int64]


def device_ids(devices: Sequence[torch.device] = DEVICES) -> List[str]:
    return [d.type for d in devices]


def backends_here(op: str, device: torch.device | str, dtype: Optional[torch.dtype] = None) -> List[str]:
    """Backends of ``op`` that can serve inputs on ``device`` (and ``dtype``) on this machine, explicit use."""
    dev = torch.device(device).type
    d = dispatcher(op)
    inputs = {"device": dev}
    if dtype is not None:
        inputs["dtype"] = dtype
    return [name for name in d.order if d.reason(name, **inputs) is None]


def backend_params(op: str, dtype: Optional[torch.dtype] = None):
    """``pytest.param((device, backend))`` for every device here and every backend that serves it."""
    import pytest

    params = []
    for dev in DEVICES:
        for b in backends_here(op, dev, dtype):
            params.append(pytest.param(dev, b, id=f"{dev.type}-{b}"))
    return params


def power_law_degrees(n: int, total: int, alpha: float = 1.2, *, generator: torch.Generator) -> torch.Tensor:
    """[n] int64 degrees summing to about ``total``, Zipf-like (power-law) in rank."""
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    w = ranks.pow(-alpha)
    w = w[torch.randperm(n, generator=generator)]
    return torch.multinomial(w, total, replacement=True, generator=generator).bincount(minlength=n)


def random_interactions(num_users: int, num_items: int, num_edges: int, *, seed: int = 0, alpha: float = 1.0):
    """Power-law random (users, items) id pairs (duplicates possible, some users/items isolated)."""
    g = torch.Generator().manual_seed(seed)
    if num_edges == 0 or num_users == 0 or num_items == 0:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    uw = torch.arange(1, num_users + 1, dtype=torch.float64).pow(-alpha)[torch.randperm(num_users, generator=g)]
    iw = torch.arange(1, num_items + 1, dtype=torch.float64).pow(-alpha)[torch.randperm(num_items, generator=g)]
    users = torch.multinomial(uw, num_edges, replacement=True, generator=g)
    items = torch.multinomial(iw, num_edges, replacement=True, generator=g)
    return users, items


def power_law_graph(num_users: int, num_items: int, num_edges: int, *, seed: int = 0, device="cpu",
                    index_dtype: torch.dtype = torch.int64, alpha: float = 1.0) -> Graph:
    """Normalized user-item LightGCN graph on power-law random interactions."""
    users, items = random_interactions(num_users, num_items, num_edges, seed=seed, alpha=alpha)
    return Graph.from_interactions(users, items, num_users, num_items, device=device, index_dtype=index_dtype)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` computed in float64 (0 when both are empty or ref is zero and out equals)."""
    o, r = out.detach().double().cpu(), ref.detach().double().cpu()
    if r.numel() == 0:
        return 0.0
    den = r.norm().item()
    num = (o - r).norm().item()
    return num / den if den > 0 else num


def assert_close_rel(out: torch.Tensor, ref: torch.Tensor, tol: float, what: str = "output") -> None:
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{what}: non-finite values"
    err = rel_error(out, ref)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"
