"""The loss terms the models share: BPR, InfoNCE (full and sampled), rarity weights, ALDI's alignment terms,
and squared norms with a light backward for the L2 penalties.

Every function takes the batch's scores or embeddings and returns a scalar (or per-row values); none reads a
model. Shapes are in each docstring.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["bpr_loss", "info_nce", "contrastive_loss", "contrastive_items", "batch_contrastive_items",
           "contrastive_rows_loss", "rarity_weights",
           "aldi_distill_losses", "sq_sum", "row_sq_norms"]


class _SqSum(torch.autograd.Function):
    """``x.pow(2).sum(dim)`` with a one-op backward ``x * 2g``: autograd's graph of pow + sum builds three
    temporaries of x's size in the backward (``x.pow(1)``, ``2 *`` it, ``grad *`` that), each a fresh allocation
    the OS page-faults in at batch scale. The same values and gradients, bit for bit (doubling is exact)."""

    @staticmethod
    def forward(ctx, x: Tensor, dim: Optional[int]) -> Tensor:
        ctx.save_for_backward(x)
        ctx.dim = dim
        return x.pow(2).sum() if dim is None else x.pow(2).sum(dim)

    @staticmethod
    def backward(ctx, g: Tensor):
        (x,) = ctx.saved_tensors
        g2 = 2.0 * g
        return x * (g2 if ctx.dim is None else g2.unsqueeze(ctx.dim)), None


def sq_sum(x: Tensor, dim: Optional[int] = None) -> Tensor:
    """Sum of squares of ``x`` (over everything, or over ``dim``): ``x.pow(2).sum(dim)``, with a lighter backward.

    Shapes:
        x: [B, d] -> [] (``dim=None``) or [B] (``dim=1``).
    """
    return _SqSum.apply(x, dim)


class _RowSqNorms(torch.autograd.Function):
    """Each row's squared norm, ``||x_i||^2``, with no [N, d] temporary in the forward (``vecdot``) and one in
    the backward (``x * 2g``)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.linalg.vecdot(x, x)

    @staticmethod
    def backward(ctx, g: Tensor):
        (x,) = ctx.saved_tensors
        return x * (2.0 * g).unsqueeze(1)


def row_sq_norms(x: Tensor) -> Tensor:
    """Squared L2 norm of every row of ``x``.

    Shapes:
        x: [N, d] -> [N].
    """
    return _RowSqNorms.apply(x)


def bpr_loss(pos_scores: Tensor, neg_scores: Tensor, weights: Optional[Tensor] = None) -> Tensor:
    """Mean of ``-w * log sigmoid(pos - neg)`` (weights default to 1).

    Shapes:
        pos_scores, neg_scores, weights: [B] -> scalar.
    """
    loss = nn.functional.softplus(neg_scores - pos_scores)
    if weights is not None:
        loss = loss * weights
    return loss.mean() if loss.numel() else pos_scores.sum() * 0.0


def info_nce(a: Tensor, b: Tensor, tau: float, weights: Optional[Tensor] = None) -> Tensor:
    """Symmetric InfoNCE between two views with in-batch negatives (row i of ``a`` matches row i of ``b``).

    Shapes:
        a, b: [B, d] (cosine similarity, temperature ``tau``), weights: optional [B] -> scalar.
    """
    if a.shape[0] == 0:
        return a.sum() * 0.0
    a = nn.functional.normalize(a, dim=1)
    b = nn.functional.normalize(b, dim=1)
    logits = a @ b.t() / tau
    target = torch.arange(a.shape[0], device=a.device)
    la = nn.functional.cross_entropy(logits, target, reduction="none")
    lb = nn.functional.cross_entropy(logits.t(), target, reduction="none")
    loss = 0.5 * (la + lb)
    if weights is not None:
        loss = loss * weights
    return loss.mean()


def rarity_weights(degree: Tensor, pos: Tensor, *, ramp: float, clip: Tuple[float, float]) -> Tensor:
    """Rarity weight of each positive in a batch.

    ``s_i = log(1 + d_max) / log(2 + d_i)``; normalized to mean 1 over ``pos``; clipped to ``clip``; then
    ``1 + ramp * (s - 1)`` with ``ramp`` in [0, 1] (0: all ones, 1: fully amplified).

    Shapes:
        degree: [num_items] float, pos: [B] int -> [B] float.
    """
    if pos.numel() == 0:
        return degree.new_ones(0)
    d_max = degree.max()
    s = torch.log1p(d_max) / torch.log(2.0 + degree[pos])
    s = s / s.mean()
    s = s.clamp(clip[0], clip[1])
    return 1.0 + float(ramp) * (s - 1.0)


def contrastive_items(num_items: int, pos: Tensor, max_items: int, dtype: torch.dtype = torch.float32
                      ) -> Tuple[Tensor, Tensor]:
    """The items :func:`contrastive_loss` compares: ``(items [C], valid [C])`` with ``C = min(max_items,
    num_items)``, ``valid`` 1.0 for a positive item and 0.0 for padding.

    Fixed shapes, no ``unique`` (a host read): the rows are taken by ``topk`` of a random key that ranks every
    positive item above every other item, so with at most ``max_items`` distinct positives they are all of
    them (the rest padding), and with more a uniform random subset of them.
    """
    present = torch.zeros(num_items, dtype=dtype, device=pos.device).index_fill_(0, pos, 1.0)
    key = torch.rand(num_items, device=pos.device, dtype=dtype) + 2.0 * present
    top, items = torch.topk(key, min(max_items, num_items))
    return items, (top >= 2.0).to(dtype)


def batch_contrastive_items(pos: Tensor, max_items: int, dtype: torch.dtype = torch.float32
                            ) -> Tuple[Tensor, Tensor]:
    """:func:`contrastive_items` without per-catalog work (for steps whose cost must not grow with the catalog):
    a uniform random subset of at most ``max_items`` of the distinct positives, no padding (every ``valid`` is
    1.0), at the price of a ``unique`` (a host read on a GPU).

    Shapes:
        pos: [B] int64 -> (items [C], valid [C]), C = min(max_items, distinct positives).
    """
    distinct = torch.unique(pos)
    if distinct.numel() > max_items:
        distinct = distinct.index_select(0, torch.randperm(distinct.numel(), device=pos.device)[:max_items])
    return distinct, torch.ones(distinct.numel(), dtype=dtype, device=pos.device)


def contrastive_rows_loss(collab_rows: Tensor, content_rows: Tensor, valid: Tensor, tau: float) -> Tensor:
    """Symmetric InfoNCE between the rows of two views, in-batch negatives, padding rows (``valid`` 0) switched
    off by a weight of 0 and a -1e4 logit (whose exponential is exactly 0), so they are never negatives.

    Shapes:
        collab_rows, content_rows: [C, d], valid: [C] -> scalar.
    """
    a = F.normalize(collab_rows, dim=1)
    c = F.normalize(content_rows, dim=1)
    logits = a @ c.t() / tau
    pad = ((valid - 1.0) * 1e4).unsqueeze(0)  # added to every row: a padding column is never a negative
    target = torch.arange(valid.numel(), device=valid.device)
    la = F.cross_entropy(logits + pad, target, reduction="none")
    lb = F.cross_entropy(logits.t() + pad, target, reduction="none")
    return (0.5 * (la + lb) * valid).sum() / valid.sum()


def contrastive_loss(collab: Tensor, content: Tensor, pos: Tensor, tau: float, max_items: int) -> Tensor:
    """Symmetric InfoNCE between the collaborative and content views of the batch's distinct positive items
    (at most ``max_items`` of them, :func:`contrastive_items`), in-batch negatives
    (:func:`contrastive_rows_loss`).

    Shapes:
        collab, content: [num_items, d], pos: [B] -> scalar.
    """
    if pos.numel() == 0:
        return collab.sum() * 0.0
    items, valid = contrastive_items(collab.shape[0], pos, max_items, collab.dtype)
    return contrastive_rows_loss(collab.index_select(0, items), content.index_select(0, items), valid, tau)


def aldi_distill_losses(tu: Tensor, tp: Tensor, tn: Tensor, sp: Tensor, sn: Tensor,
                        weights: Tensor | None = None, su: Tensor | None = None) -> Dict[str, Tensor]:
    """ALDI's student terms (unweighted by their coefficients) from the teacher's user, positive and negative
    embeddings (``tu, tp, tn``, treated as constants) and the student's positive and negative embeddings.
    The student scores with ``su`` (ALDI's mapped user ``f_U(tu)``) when given, else with ``tu``.

    Returns ``{"supervised", "rating", "ranking", "identification"}`` (scalars; see the module docstring).
    ``weights`` ([B], teacher-aware) scale the ranking and identification terms per positive.

    Shapes:
        tu, tp, tn, sp, sn, su: [B, d]; weights: optional [B] -> dict of scalars.
    """
    tu, tp, tn = tu.detach(), tp.detach(), tn.detach()
    su = tu if su is None else su
    if tu.shape[0] == 0:
        zero = sp.sum() * 0.0 + su.sum() * 0.0
        return {"supervised": zero, "rating": zero, "ranking": zero, "identification": zero}
    t_pos, t_neg = (tu * tp).sum(1), (tu * tn).sum(1)
    s_pos, s_neg = (su * sp).sum(1), (su * sn).sum(1)
    w = torch.ones_like(t_pos) if weights is None else weights
    rating = ((t_pos - s_pos).abs() + (t_neg - s_neg).abs()).mean()
    ranking = (w * F.binary_cross_entropy_with_logits(s_pos - s_neg, torch.sigmoid(t_pos - t_neg),
                                                      reduction="none")).mean()
    t_iden = (tp * tp).sum(1) - (tp @ tn.t()).mean(1)
    s_iden = (sp * sp).sum(1) - (sp @ sn.t()).mean(1)
    iden = (w * F.binary_cross_entropy_with_logits(s_iden, torch.sigmoid(t_iden), reduction="none")).mean()
    return {"supervised": bpr_loss(s_pos, s_neg), "rating": rating, "ranking": ranking, "identification": iden}
