"""``aldi``: a decoupled cold-start model on the LightGCN backbone after ALDI (Huang et al., "Aligning
Distillation For Cold-start Item Recommendation", SIGIR 2023; the authors' code: github.com/zfnWong/ALDI).

A teacher (exactly :class:`~motorec.models.baselines.LightGCNRec`: same graph, BPR loss, L2 penalty) scores
warm items. A content student ``s(x_i)`` (:class:`~motorec.models.features.FeatureEncoder`: per-modality MLP on
L2-normalized features, summed) learns to stand in for the teacher's final item embedding, from the teacher's
detached embeddings only, with ALDI's terms on each (user, positive, negative) batch, ``t`` the teacher's
scores (teacher user . teacher item), ``s`` the student's (teacher user . student item):

* supervised: ``BPR(s_pos, s_neg)``, weight ``supervised`` (ALDI: 1);
* rating-distribution alignment: ``mean(|t_pos - s_pos| + |t_neg - s_neg|)``, weight ``gamma``
  (ALDI: 0.1);
* ranking alignment: ``BCE(sigmoid(s_pos - s_neg), sigmoid(t_pos - t_neg))``, weight ``alpha`` (0.9);
* identification alignment: ``BCE`` between the student's and the teacher's ``<i, i> - mean_j <i, j>``
  (``i`` the batch's positives, ``j`` its negatives), weight ``beta`` (0.05);
* optional teacher-aware weighting (``tws``, ALDI's ``tws``, off by default as in the authors' code): the
  ranking and identification terms of positive ``i`` are weighted by ``min(tanh(a f_i), tanh(M))`` with
  ``f_i = sum_{u in N(i)} 1 / |N(u)|``, ``a = M / (U / I)`` and ``M = tws_m`` (4): items whose teacher
  embedding rests on few interactions teach less.

Decoupled: the student terms see ``teacher.detach()``, so the teacher's parameters get gradients from its own
BPR and penalty only and train exactly as ``lightgcn`` does (same seed, same weights). Warm items keep the
teacher's embedding; a cold item's embedding is ``s(x_i)``, which the alignment terms put on the scale of the
teacher's final (layer-mean) embeddings, so cold and warm items are scored by the same user embeddings.

Simplifications against ALDI, stated: one training run (teacher and student side by side instead of a
pre-trained frozen teacher, so the student chases a teacher still moving early on); no user mapper ``f_U``
(ALDI scores cold items with a transformed user embedding; here the teacher's user embedding scores both
warm and cold items, so a shared warm + cold ranking compares like with like); the student is the project's
feature MLP (hidden ``hidden``, LeakyReLU) instead of ALDI's tanh/batch-norm MLP, and its weights are
regularized only through ``train.weight_decay``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Tuple

import torch
from torch import Tensor

from motorec.config import ConfigError, ModelConfig
from motorec.models.base import loss_part
from motorec.models.baselines import LightGCNRec
from motorec.models.features import FeatureEncoder, ItemFeatures
from motorec.models.losses import aldi_distill_losses

__all__ = ["ALDIRec", "ALDIConfig", "aldi_item_weights"]


@dataclass
class ALDIConfig(ModelConfig):
    """``aldi``'s own hyper-parameters (section ``aldi:``); defaults are the ALDI authors'."""

    # weights of the student's ranking, identification, rating-distribution and supervised BPR terms
    alpha: float = 0.9
    beta: float = 0.05
    gamma: float = 0.1
    supervised: float = 1.0
    # teacher-aware weighting of the ranking and identification terms, and its cap M
    tws: bool = False
    tws_m: float = 4.0
    # hidden width of the student MLP
    hidden: int = 256

    def check(self) -> None:
        for k in ("alpha", "beta", "gamma", "supervised"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
                raise ConfigError(f"{self.name}.{k} must be a finite number >= 0, got {v!r}")
        if isinstance(self.tws_m, bool) or not isinstance(self.tws_m, (int, float)) or not self.tws_m > 0:
            raise ConfigError(f"{self.name}.tws_m must be a number > 0, got {self.tws_m!r}")
        if not isinstance(self.tws, bool):
            raise ConfigError(f"{self.name}.tws must be true or false, got {self.tws!r}")
        if isinstance(self.hidden, bool) or not isinstance(self.hidden, int) or self.hidden <= 0:
            raise ConfigError(f"{self.name}.hidden must be an integer > 0, got {self.hidden!r}")


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


class ALDIRec(LightGCNRec):
    """LightGCN teacher + ALDI content student (module docstring). The parts: ``lightgcn`` (the teacher) and
    ``student`` (the content encoder that embeds cold items).

    Config: ``alpha`` (ranking, 0.9), ``beta`` (identification, 0.05), ``gamma`` (rating
    distribution, 0.1), ``supervised`` (student BPR, 1.0), ``tws`` (teacher-aware weighting, false),
    ``tws_m`` (its cap M, 4.0), ``hidden`` (student MLP width); the teacher reads ``lightgcn``'s
    settings. Defaults are the authors' code defaults.

    Shapes:
        embeddings() -> (users [U, dim], items [I, dim]); student_embeddings(items [B]) -> [B, dim].
    """

    uses_features = True

    def __init__(self, *, features: Dict[str, Tensor], **kw) -> None:
        super().__init__(features=features, **kw)
        self.item_features = ItemFeatures(features, self.num_items)
        self.student = FeatureEncoder(self.item_features.dims(), self.config.hidden,
                                      self.config.dim).to(self.device)
        self.register_buffer("cold_items", torch.nonzero(~self.warm_mask).flatten(), persistent=False)
        self.register_buffer("tws_weights", aldi_item_weights(self.train_pairs, self.num_users, self.num_items,
                                                               self.config.tws_m), persistent=False)

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
        p, n = batch["pos"], batch["neg"]
        teacher, reg, (ue, tp, tn) = self.bpr_terms(batch, *self.teacher_embeddings())
        s = self.student_embeddings(torch.cat([p, n]))
        sp, sn = s[: p.numel()], s[p.numel():]
        parts = aldi_distill_losses(ue, tp, tn, sp, sn, self.tws_weights[p] if c.tws else None)
        student = (c.supervised * parts["supervised"] + c.gamma * parts["rating"]
                   + c.alpha * parts["ranking"] + c.beta * parts["identification"])
        total = teacher + reg + student
        return total, {"bpr": loss_part(teacher), "reg": loss_part(reg),
                       **{f"student_{k}": loss_part(v) for k, v in parts.items()}}
