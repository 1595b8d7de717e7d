"""``motorec.ops.rank_topk``: per-user top-k item ranking (all items, warm items, cold items) in one pass.

Custom op ``motorec::rank_topk`` (forward only: its outputs are indices, nothing to differentiate). The
ranking is defined in :mod:`motorec.reference.rank_topk`; every backend returns the same indices (the C++
kernel's score tiles come from another BLAS call than the reference's dense product, so items whose scores
agree to within rounding may swap; exactly equal scores always go to the lower index).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from motorec import _ext
from motorec._dispatch import Backend, dispatcher
from motorec.ops._common import c_cpu_float_check, check_float_matrix
from motorec.reference import rank_topk as _ref

_D = dispatcher("rank_topk")

_NO_GPU = "no GPU kernel for rank_topk: the torch path (dense scores and a stable sort) serves CUDA tensors"


def _c_fwd(users, items, k, item_scale, item_shift, exclude_rowptr, exclude_col, cold):
    return tuple(torch.ops.motorec_C.rank_topk(users, items, k, item_scale, item_shift, exclude_rowptr,
                                               exclude_col, cold))


_D.register(Backend("triton", static_reason=_NO_GPU))
_D.register(Backend("cuda", static_reason=_NO_GPU))
_D.register(Backend("cpu", forward=_c_fwd,
                    static_reason=None if _ext.c_has_op("rank_topk")
                    else (_ext.C_REASON or "motorec._C has no rank_topk (built before it was added: rebuild)"),
                    input_check=c_cpu_float_check,
                    note="OpenMP C++ kernel (motorec._C): BLAS score tiles, three sorted top-k buffers per row"))
_D.register(Backend("torch", forward=_ref.rank_topk_forward,
                    note="dense [B, I] scores and a stable sort per ranking (reference)"))


class RankTopK(NamedTuple):
    """Output of :func:`rank_topk`: item indices ``[B, k]`` (-1 past a row's eligible items) and ``nan [B]``."""
    hybrid: Tensor
    warm: Tensor
    cold: Tensor
    nan: Tensor


@torch.library.custom_op("motorec::rank_topk", mutates_args=())
def rank_topk_op(users: Tensor, items: Tensor, k: int, item_scale: Optional[Tensor], item_shift: Optional[Tensor],
                 exclude_rowptr: Tensor, exclude_col: Tensor, cold: Tensor,
                 backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Raw op: (hybrid, warm, cold [B, k] int64, nan [B] bool); see :mod:`motorec.reference.rank_topk`."""
    c = lambda t: None if t is None else t.contiguous()  # noqa: E731
    h, w, cr, nan = _D.forward(backend)(users.contiguous(), items.contiguous(), k, c(item_scale), c(item_shift),
                                        exclude_rowptr.contiguous(), exclude_col.contiguous(), cold.contiguous())
    return h, w, cr, nan


@rank_topk_op.register_fake
def _(users, items, k, item_scale, item_shift, exclude_rowptr, exclude_col, cold, backend):
    torch._check(users.dim() == 2 and items.dim() == 2, lambda: "users must be [B, d] and items [I, d]")
    torch._check(users.shape[1] == items.shape[1], lambda: "users and items must share d")
    torch._check(k >= 1, lambda: "k must be >= 1")
    torch._check(exclude_rowptr.dim() == 1 and exclude_rowptr.shape[0] == users.shape[0] + 1,
                 lambda: "exclude_rowptr must be [B + 1]")
    torch._check(cold.dim() == 1 and cold.shape[0] == items.shape[0], lambda: "cold must be [I]")
    b = users.shape[0]
    idx = [users.new_empty((b, k), dtype=torch.int64) for _ in range(3)]
    return idx[0], idx[1], idx[2], users.new_empty((b,), dtype=torch.bool)


def _check_index(t, name: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.int64 or t.dim() != 1:
        raise TypeError(f"{name} must be a 1-D int64 tensor, got {t.dtype} of shape {tuple(t.shape)}")


def rank_topk(users: Tensor, items: Tensor, k: int, *, item_scale: Optional[Tensor] = None,
              item_shift: Optional[Tensor] = None, exclude_rowptr: Optional[Tensor] = None,
              exclude_col: Optional[Tensor] = None, cold: Optional[Tensor] = None,
              backend: str = "auto") -> RankTopK:
    r"""Per user, the ``k`` best items by ``s_ui = (u . i) * item_scale_i + item_shift_i`` three times over:
    all items (``hybrid``), the items with ``cold`` false (``warm``) and those with ``cold`` true (``cold``).

    Each row is sorted by descending score, equal scores by ascending item index (exact); the items of the row's
    exclude list are never listed; slots past a row's eligible items hold -1. A NaN score is never ranked and
    sets ``nan[row]`` (unless the item is excluded): the caller decides whether that is an error
    (:func:`motorec.eval.evaluate` raises). The C++ kernel never forms the ``[B, I]`` scores: BLAS tiles and
    three sorted top-k buffers per row. Forward only (indices have no gradient; inputs are detached).

    Args:
        users: [B, d] float (B may be 0). items: [I, d], dtype and device of users.
        k: ranking length >= 1 (may exceed I: the tail is -1).
        item_scale, item_shift: optional [I] per-item affine map of the scores (dtype of users).
        exclude_rowptr, exclude_col: CSR exclude lists (``exclude_rowptr`` [B+1] int64 from 0 to ``nnz``,
            non-decreasing; ``exclude_col`` [nnz] int64 in ``[0, I)``; rows need not be sorted). Both None: none.
        cold: [I] bool (default: no cold item).
        backend: ``auto`` (default; ``MOTOREC_BACKEND`` if set) or ``torch | cpu``. CUDA tensors run on the
            torch path (no GPU kernel; see ``motorec.ops.explain("rank_topk")``).

    Returns :class:`RankTopK` ``(hybrid, warm, cold, nan)``.

    Shapes:
        users [B, d], items [I, d] -> hybrid, warm, cold [B, k] int64, nan [B] bool
    """
    check_float_matrix(users, "users")
    check_float_matrix(items, "items")
    if items.dtype != users.dtype:
        raise TypeError(f"users ({users.dtype}) and items ({items.dtype}) must have the same dtype")
    if items.shape[1] != users.shape[1]:
        raise ValueError(f"users have d={users.shape[1]} but items have d={items.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    b, n, dev = users.shape[0], items.shape[0], users.device
    if items.device != dev:
        raise ValueError(f"users ({dev}) and items ({items.device}) must be on one device")
    for name, t in (("item_scale", item_scale), ("item_shift", item_shift)):
        if t is None:
            continue
        if not isinstance(t, Tensor) or t.dim() != 1 or t.shape[0] != n:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a [I] = [{n}] tensor, got {shape}")
        if t.dtype != users.dtype or t.device != dev:
            raise TypeError(f"{name} must have the dtype and device of users ({users.dtype}, {dev}), got "
                            f"{t.dtype} on {t.device}")
    if (exclude_rowptr is None) != (exclude_col is None):
        raise ValueError("exclude_rowptr and exclude_col must be given together")
    if exclude_rowptr is None:
        exclude_rowptr = torch.zeros(b + 1, dtype=torch.int64, device=dev)
        exclude_col = torch.zeros(0, dtype=torch.int64, device=dev)
    _check_index(exclude_rowptr, "exclude_rowptr")
    _check_index(exclude_col, "exclude_col")
    if exclude_rowptr.shape[0] != b + 1:
        raise ValueError(f"exclude_rowptr must have B + 1 = {b + 1} entries, got {exclude_rowptr.shape[0]}")
    if exclude_rowptr.device != dev or exclude_col.device != dev:
        raise ValueError(f"exclude_rowptr ({exclude_rowptr.device}) and exclude_col ({exclude_col.device}) must be "
                         f"on the device of users ({dev})")
    if cold is None:
        cold = torch.zeros(n, dtype=torch.bool, device=dev)
    if not isinstance(cold, Tensor) or cold.dtype != torch.bool or cold.shape != (n,) or cold.device != dev:
        desc = f"{cold.dtype} {tuple(cold.shape)} on {cold.device}" if isinstance(cold, Tensor) else type(cold).__name__
        raise ValueError(f"cold must be a bool [I] = [{n}] tensor on {dev}, got {desc}")
    # Values (one host read each; the C++ kernel checks them again as it reads them).
    rp0, rpn = (int(v) for v in exclude_rowptr[[0, -1]].tolist())
    if rp0 != 0 or rpn != exclude_col.numel():
        raise ValueError(f"exclude_rowptr must start at 0 and end at len(exclude_col)={exclude_col.numel()}, got "
                         f"{rp0} and {rpn}")
    if b and bool((exclude_rowptr[1:] < exclude_rowptr[:-1]).any()):
        raise ValueError("exclude_rowptr must be non-decreasing")
    if exclude_col.numel() and not (0 <= int(exclude_col.min()) and int(exclude_col.max()) < n):
        raise ValueError(f"exclude_col must lie in [0, I={n}), got values in [{int(exclude_col.min())}, "
                         f"{int(exclude_col.max())}]")
    name = _D.select(backend, device=dev.type, dtype=users.dtype, n=b, dim=users.shape[1], k=k)
    with torch.no_grad():
        out = rank_topk_op(users.detach(), items.detach(), k,
                           None if item_scale is None else item_scale.detach(),
                           None if item_shift is None else item_shift.detach(),
                           exclude_rowptr, exclude_col, cold, name)
    return RankTopK(*out)
