"""``heater``: Heater (Zhu, Lin, He, Wang, Wei and Caverlee, "Recommendation for New Users and New Items via
Randomized Training and Mixture-of-Experts Transformation", SIGIR 2020; the authors' TensorFlow code:
github.com/Zziwei/Heater--Cold-Start-Recommendation; ColdRec's port: github.com/YuanchenBei/ColdRec,
``model/Heater.py``).

An item's content ``x_i`` is mapped to the CF space by a mixture of ``experts`` experts (each a two-layer tanh
MLP, hidden ``hidden``), mixed by a softmax gate on the content: ``c_i = sum_k g_k(x_i) E_k(x_i)``. A
similarity (alignment) constraint pulls ``c_i`` to the item's CF embedding ``v_i``:
``alpha * sum_batch ||c_i - v_i||^2``. Randomized training: each item of a batch enters the transformation as
``v_i`` or, with probability ``dropout``, as ``c_i``, so one transformation serves both. Users and items then go
through their own transformation ``W_2 tanh(W_1 .)`` and the model fits the CF scores ``<u, v_i>`` (mean
squared error on the batch's positives and negatives). Warm items are scored from ``v_i``, cold items from
``c_i``.

What differs from the authors' code, stated:

* The CF embeddings come from a LightGCN trained in the same run (:class:`~motorec.models.backbone.CFBackbone`,
  exactly ``lightgcn``), seen detached by the Heater terms, instead of embeddings pre-trained by another
  program; the checkpoint the trainer selects holds both.
* Item cold start only: no user content and so no user-side experts; the content is the items'
  L2-normalized modalities side by side.
* Each expert has its own weights (ColdRec applies one MLP K times) and the gate is a softmax, as in the paper.
* One uniform negative per positive from the trainer's sampler; the transformations' L2 penalty is left to
  ``train.weight_decay`` (the authors: 1e-4 on their weights).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch
from torch import Tensor, nn

from motorec.config import ModelConfig
from motorec.models.backbone import CFBackbone, check_fraction, check_nonneg, check_positive_int, mse
from motorec.models.base import loss_part
from motorec.models.losses import sq_sum

__all__ = ["HeaterRec", "HeaterConfig", "MixtureOfExperts"]


@dataclass
class HeaterConfig(ModelConfig):
    """``heater``'s own hyper-parameters (section ``heater:``); defaults are the authors' code defaults."""

    # number of experts of the content transformation
    experts: int = 5
    # weight of the similarity constraint (summed over the batch's items, as the authors sum it)
    alpha: float = 1e-4
    # probability that an item enters the transformation by its content embedding (randomized training)
    dropout: float = 0.5
    # hidden width of each expert
    hidden: int = 200

    def check(self) -> None:
        check_positive_int(self, "experts", "hidden")
        check_nonneg(self, "alpha")
        check_fraction(self, "dropout")


class MixtureOfExperts(nn.Module):
    """``sum_k softmax(G x)_k tanh(W2_k tanh(W1_k x + b1_k) + b2_k)``: ``experts`` two-layer tanh MLPs, all
    evaluated in two batched products.

    Shapes:
        x: [B, d_in] -> [B, d_out].
    """

    def __init__(self, d_in: int, hidden: int, d_out: int, experts: int) -> None:
        super().__init__()
        self.experts, self.hidden = experts, hidden
        self.first = nn.Linear(d_in, experts * hidden)
        self.second = nn.Parameter(torch.randn(experts, hidden, d_out) / hidden ** 0.5)
        self.second_bias = nn.Parameter(torch.zeros(experts, d_out))
        self.gate = nn.Linear(d_in, experts)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.first(x)).view(x.shape[0], self.experts, self.hidden)
        out = torch.tanh(torch.einsum("bkh,khd->bkd", h, self.second) + self.second_bias)
        g = torch.softmax(self.gate(x), dim=1)
        return (g.unsqueeze(2) * out).sum(1)


def _transform(dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, dim))


class HeaterRec(CFBackbone):
    """LightGCN backbone + Heater (module docstring). Parts: ``lightgcn`` (the CF model), ``experts`` (content to
    CF space), ``user_transform`` and ``item_transform``.

    Shapes:
        embeddings() -> (users [U, dim], items [I, dim]); content_embeddings(items [B]) -> [B, dim].
    """

    def __init__(self, *, features: Dict[str, Tensor], **kw) -> None:
        super().__init__(features=features, **kw)
        c = self.config
        self.experts = MixtureOfExperts(self.content.shape[1], c.hidden, c.dim, c.experts).to(self.device)
        self.user_transform = _transform(c.dim).to(self.device)
        self.item_transform = _transform(c.dim).to(self.device)

    def content_embeddings(self, items: Tensor) -> Tensor:
        """``c_i``, the experts' mixture on the items' content."""
        return self.experts(self.content.index_select(0, items))

    def embeddings(self) -> Tuple[Tensor, Tensor]:
        users, items = self.cf_embeddings()
        c = self.content_embeddings(torch.arange(self.num_items, device=self.device))
        return self.user_transform(users), self.item_transform(self.warm_or_cold(items, c))

    def loss(self, batch: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        backbone, parts, (ue, pe, ne) = self.backbone_loss(batch)
        b = ue.shape[0]
        v = torch.cat([pe, ne])
        c = self.content_embeddings(torch.cat([batch["pos"], batch["neg"]]))
        keep = self.row_keep(2 * b, self.config.dropout)
        iv = self.item_transform(v * keep + c * (1.0 - keep))
        uv = self.user_transform(ue).repeat(2, 1)
        fit = mse((uv * iv).sum(1), torch.cat([(ue * pe).sum(1), (ue * ne).sum(1)]))
        align = self.config.alpha * sq_sum(c - v)
        return backbone + fit + align, {**parts, "score_mse": loss_part(fit), "align": loss_part(align)}
