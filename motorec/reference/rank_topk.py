"""Reference per-user top-k ranking (``motorec::rank_topk``'s ``torch`` backend, and the oracle of the others).

Per user ``b`` (a row of ``users``) and item ``i``:
    s_bi = (u_b . i) * item_scale_i + item_shift_i       (scale 1 / shift 0 when None; two roundings, no FMA)
An item is eligible for row ``b`` when it is not in the row's exclude list
(``exclude_col[exclude_rowptr[b]:exclude_rowptr[b + 1]]``, any order, duplicates allowed) and ``s_bi`` is not NaN.
Three rankings per row, each the first ``k`` of its eligible items ordered by descending score, equal scores by
ascending item index (an exact rule: ``-inf`` scores are ranked too, after every finite one):
    hybrid: every item;  warm: the items with ``cold[i]`` false;  cold: the items with ``cold[i]`` true.
Slots past a row's eligible items hold -1. ``nan[b]`` is true when a non-excluded score of row ``b`` was NaN
(NaN is never ranked; the caller decides whether that is an error).

This path forms the dense [B, I] scores and sorts each row once per ranking (``torch.sort(stable=True)`` on the
negated scores, ineligible entries as NaN, which an ascending sort places last): the tie rule is exact by
construction. It holds about 5 [B, I] buffers; the C++ kernel holds none.

Shapes:
    users [B, d], items [I, d] float; item_scale, item_shift [I] or None; exclude_rowptr [B+1] int64;
    exclude_col [nnz] int64; cold [I] bool -> hybrid, warm, cold [B, k] int64, nan [B] bool.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


def scores(users: Tensor, items: Tensor, item_scale: Optional[Tensor], item_shift: Optional[Tensor]) -> Tensor:
    """``[B, I]`` scores ``(users @ items^T) * item_scale + item_shift``."""
    s = users @ items.t()
    if item_scale is not None:
        s = s * item_scale
    if item_shift is not None:
        s = s + item_shift
    return s


def excluded_mask(exclude_rowptr: Tensor, exclude_col: Tensor, num_rows: int, num_items: int) -> Tensor:
    """``[B, I]`` bool: the entries named by the CSR exclude lists."""
    counts = exclude_rowptr[1:] - exclude_rowptr[:-1]
    row = torch.repeat_interleave(torch.arange(num_rows, device=exclude_col.device), counts,
                                  output_size=exclude_col.numel())
    mask = torch.zeros(num_rows, num_items, dtype=torch.bool, device=exclude_col.device)
    mask[row, exclude_col] = True
    return mask


def _ranked(s: Tensor, eligible: Tensor, k: int) -> Tensor:
    b, n = s.shape
    out = torch.full((b, k), -1, dtype=torch.int64, device=s.device)
    if n == 0 or b == 0:
        return out
    key = torch.where(eligible, -s, torch.full_like(s, float("nan")))
    _, order = torch.sort(key, dim=1, stable=True)
    m = min(k, n)
    top = order[:, :m]
    out[:, :m] = torch.where(eligible.gather(1, top), top, -1)
    return out


def rank_topk_forward(users: Tensor, items: Tensor, k: int, item_scale: Optional[Tensor],
                      item_shift: Optional[Tensor], exclude_rowptr: Tensor, exclude_col: Tensor,
                      cold: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(hybrid, warm, cold [B, k] int64, nan [B] bool)``; see the module docstring."""
    b, n = users.shape[0], items.shape[0]
    s = scores(users, items, item_scale, item_shift)
    excl = excluded_mask(exclude_rowptr, exclude_col, b, n)
    isnan = torch.isnan(s)
    nan = (isnan & ~excl).any(1)
    eligible = ~(excl | isnan)
    del excl, isnan
    hybrid = _ranked(s, eligible, k)
    warm = _ranked(s, eligible & ~cold, k)
    cold_rank = _ranked(s, eligible & cold, k)
    return hybrid, warm, cold_rank, nan
