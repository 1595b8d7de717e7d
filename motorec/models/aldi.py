"""``aldi``: a decoupled cold-start model on the LightGCN backbone after ALDI (Huang et al., "Aligning
Distillation For Cold-start Item Recommendation", SIGIR 2023; the authors' code: github.com/zfnWong/ALDI).

A teacher (exactly :class:`~motorec.models.baselines.LightGCNRec`: same graph, BPR loss, L2 penalty) scores
warm items. A content student ``s(x_i)`` (:class:`~motorec.models.features.FeatureEncoder`: per-modality MLP on
L2-normalized features, summed) learns to stand in for the teacher's final item embedding, from the teacher's
detached embeddings only, with ALDI's terms on each (user, positive, negative) batch, ``t`` the teacher's
scores (teacher user . teacher item), ``s`` the student's (teacher user . student item):

* supervised: ``BPR(s_pos, s_neg)``, weight ``aldi_supervised`` (ALDI: 1);
* rating-distribution alignment: ``mean(|t_pos - s_pos| + |t_neg - s_neg|)``, weight ``aldi_gamma``
  (ALDI: 0.1);
* ranking alignment: ``BCE(sigmoid(s_pos - s_neg), sigmoid(t_pos - t_neg))``, weight ``aldi_alpha`` (0.9);
* identification alignment: ``BCE`` between the student's and the teacher's ``<i, i> - mean_j <i, j>``
  (``i`` the batch's positives, ``j`` its negatives), weight ``aldi_beta`` (0.05);
* optional teacher-aware weighting (``aldi_tws``, ALDI's ``tws``, off by default as in the authors' code): the
  ranking and identification terms of positive ``i`` are weighted by ``min(tanh(a f_i), tanh(M))`` with
  ``f_i = sum_{u in N(i)} 1 / |N(u)|``, ``a = M / (U / I)`` and ``M = aldi_tws_m`` (4): items whose teacher
  embedding rests on few interactions teach less.

Decoupled: the student terms see ``teacher.detach()``, so the teacher's parameters get gradients from its own
BPR and penalty only and train exactly as ``lightgcn`` does (same seed, same weights). Warm items keep the
teacher's embedding; a cold item's embedding is ``s(x_i)``, which the alignment terms put on the scale of the
teacher's final (layer-mean) embeddings, so cold and warm items are scored by the same user embeddings.

Simplifications against ALDI, stated: one training run (teacher and student side by side instead of a
pre-trained frozen teacher, so the student chases a teacher still moving early on); no user mapper ``f_U``
(ALDI scores cold items with a transformed user embedding; here the teacher's user embedding scores both
warm and cold items, so a shared warm + cold ranking compares like with like); the student is the project's
feature MLP (hidden ``content_hidden``, LeakyReLU) instead of ALDI's tanh/batch-norm MLP, and its weights are
regularized only through ``train.weight_decay``.
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import torch
from torch import Tensor
from torch.nn import functional as F

from motorec.models.base import bpr_loss, loss_part
from motorec.models.baselines import LightGCNRec
from motorec.models.features import FeatureEncoder, ItemFeatures

__all__ = ["ALDIRec", "aldi_item_weights", "aldi_distill_losses"]


@torch.no_grad()
def aldi_item_weights(train: Tensor, num_users: int, num_items: int, m: float) -> Tensor:
    """ALDI's teacher-aware weights: ``min(tanh(a f_i), tanh(M))`` with ``f_i = sum_{u in N(i)} 1/|N(u)|`` and
    ``a = M * I / U`` (``U / I`` is the expected ``f_i``). Items without interactions get 0 (they never are
    positives). Repeated pairs count once.

    Shapes:
        train: [E, 2] int (user, item) -> [num_items] float32.
    """
    if train.numel() == 0:
        return torch.zeros(num_items, device=train.device)
    key = torch.unique(train[:, 0].long() * num_items + train[:, 1].long())
    users, items = key // num_items, key % num_items
    udeg = torch.bincount(users, minlength=num_users).double()
    freq = torch.zeros(num_items, dtype=torch.float64, device=train.device)
    freq.index_add_(0, items, 1.0 / udeg[users])
    a = m * num_items / max(num_users, 1)
    return torch.tanh(a * freq).clamp_max(math.tanh(m)).float()


def aldi_distill_losses(tu: Tensor, tp: Tensor, tn: Tensor, sp: Tensor, sn: Tensor,
                        weights: Tensor | None = None) -> Dict[str, Tensor]:
    """ALDI's student terms (unweighted by their coefficients) from the teacher's user, positive and negative
    embeddings (``tu, tp, tn``, treated as constants) and the student's positive and negative embeddings.

    Returns ``{"supervised", "rating", "ranking", "identification"}`` (scalars; see the module docstring).
    ``weights`` ([B], teacher-aware) scale the ranking and identification terms per positive.

    Shapes:
        tu, tp, tn, sp, sn: [B, d]; weights: optional [B] -> dict of scalars.
    """
    tu, tp, tn = tu.detach(), tp.detach(), tn.detach()
    t_pos, t_neg = (tu * tp).sum(1), (tu * tn).sum(1)
    s_pos, s_neg = (tu * sp).sum(1), (tu * sn).sum(1)
    w = torch.ones_like(t_pos) if weights is None else weights
    if t_pos.numel() == 0:
        zero = sp.sum() * 0.0
        return {"supervised": zero, "rating": zero, "ranking": zero, "identification": zero}
    rating = ((t_pos - s_pos).abs() + (t_neg - s_neg).abs()).mean()
    ranking = (w * F.binary_cross_entropy_with_logits(s_pos - s_neg, torch.sigmoid(t_pos - t_neg),
                                                      reduction="none")).mean()
    t_iden = (tp * tp).sum(1) - (tp @ tn.t()).mean(1)
    s_iden = (sp * sp).sum(1) - (sp @ sn.t()).mean(1)
    iden = (w * F.binary_cross_entropy_with_logits(s_iden, torch.sigmoid(t_iden), reduction="none")).mean()
    return {"supervised": bpr_loss(s_pos, s_neg), "rating": rating, "ranking": ranking, "identification": iden}


class ALDIRec(LightGCNRec):
    """LightGCN teacher + ALDI content student (module docstring). The parts: ``lightgcn`` (the teacher) and
    ``student`` (the content encoder that embeds cold items).

    Config: ``aldi_alpha`` (ranking, 0.9), ``aldi_beta`` (identification, 0.05), ``aldi_gamma`` (rating
    distribution, 0.1), ``aldi_supervised`` (student BPR, 1.0), ``aldi_tws`` (teacher-aware weighting, false),
    ``aldi_tws_m`` (its cap M, 4.0), ``content_hidden`` (student MLP width); the teacher reads ``lightgcn``'s
    settings. Defaults are the authors' code defaults.

    Shapes:
        embeddings() -> (users [U, dim], items [I, dim]); student_embeddings(items [B]) -> [B, dim].
    """

    uses_features = True

    def __init__(self, *, features: Dict[str, Tensor], **kw) -> None:
        super().__init__(features=features, **kw)
        self.item_features = ItemFeatures(features, self.num_items)
        self.student = FeatureEncoder(self.item_features.dims(), self.config.content_hidden,
                                      self.config.dim).to(self.device)
        self.register_buffer("cold_items", torch.nonzero(~self.warm_mask).flatten(), persistent=False)
        self.register_buffer("tws_weights", aldi_item_weights(self.train_pairs, self.num_users, self.num_items,
                                                               self.config.aldi_tws_m), persistent=False)

    def student_embeddings(self, items: Tensor) -> Tensor:
        """The student's embedding ``s(x_i)`` of some items (a repeated item is encoded again: fixed shapes, no
        ``unique`` and so no host read per step)."""
        return self.student({m: f[items] for m, f in self.item_features.as_dict().items()})

    def teacher_embeddings(self) -> Tuple[Tensor, Tensor]:
        """The teacher's (LightGCN's) final user and item embeddings."""
        return super().embeddings()

    def embeddings(self) -> Tuple[Tensor, Tensor]:
        users, items = self.teacher_embeddings()
        if self.cold_items.numel():
            items = items.index_copy(0, self.cold_items, self.student_embeddings(self.cold_items))
        return users, items

    def loss(self, batch: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        c = self.config
        u, p, n = batch["users"], batch["pos"], batch["neg"]
        users, items = self.teacher_embeddings()
        # index_select, not [] indexing: its backward sums repeated rows in a fixed order (MoToRec.loss)
        sel = torch.index_select
        ue, tp, tn = sel(users, 0, u), sel(items, 0, p), sel(items, 0, n)
        teacher = bpr_loss((ue * tp).sum(1), (ue * tn).sum(1))
        reg = self.reg_loss(sel(self.user_emb, 0, u), sel(self.item_emb, 0, p), sel(self.item_emb, 0, n))
        s = self.student_embeddings(torch.cat([p, n]))
        sp, sn = s[: p.numel()], s[p.numel():]
        parts = aldi_distill_losses(ue, tp, tn, sp, sn, self.tws_weights[p] if c.aldi_tws else None)
        student = (c.aldi_supervised * parts["supervised"] + c.aldi_gamma * parts["rating"]
                   + c.aldi_alpha * parts["ranking"] + c.aldi_beta * parts["identification"])
        total = teacher + reg + student
        return total, {"bpr": loss_part(teacher), "reg": loss_part(reg),
                       **{f"student_{k}": loss_part(v) for k, v in parts.items()}}
