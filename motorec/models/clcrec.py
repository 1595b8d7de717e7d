"""``clcrec``: CLCRec (Wei, Wang, Li, Nie, Li, Li and Chua, "Contrastive Learning for Cold-Start
Recommendation", ACM MM 2021; the authors' PyTorch code: github.com/weiyinwei/CLCRec; ColdRec's port:
github.com/YuanchenBei/ColdRec, ``model/CLCRec.py``).

Free user and item ID embeddings and a content encoder ``f(x_i)`` (Linear 256, LeakyReLU, Linear) are trained
by two InfoNCE terms, mixed by ``lr_lambda``:

* item-item (weight ``lr_lambda``): an item's ID embedding against its own content embedding, the other items'
  content embeddings as negatives (both L2-normalized, temperature ``temperature``): the collaborative and
  content views of an item agree;
* user-item (weight ``1 - lr_lambda``): a user against their positive item, the other items as negatives, where
  each item is represented by its ID embedding or, with probability ``num_sample``, by its content embedding
  (inner products, temperature ``temperature``): the user's embedding learns to score content embeddings too.

Warm items are scored by their ID embedding, cold items by ``f(x_i)``, both against the user's ID embedding.

What differs from the authors' code, stated:

* Negatives are in-batch: the trainer's sampler gives one uniform negative per positive, and every row's
  candidates are the batch's positives and negatives (``2B`` of them), instead of ``num_neg`` (512) negatives
  sampled per row; a repeated item in the batch is a false negative, as in any in-batch InfoNCE.
* The replacement by content draws each item independently with probability ``num_sample`` (the authors draw
  ``num_sample * n`` indices with replacement).
* The penalty is the shared ``model.lambda_reg`` on the batch's squared ID embeddings (the authors: the mean
  L2 norm times ``reg_weight``); the content is the items' L2-normalized modalities side by side.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from motorec.config import ConfigError, ModelConfig
from motorec.models.backbone import check_fraction, check_nonneg, check_positive_int, content_matrix
from motorec.models.base import Recommender, loss_part

__all__ = ["CLCRecRec", "CLCRecConfig"]


@dataclass
class CLCRecConfig(ModelConfig):
    """``clcrec``'s own hyper-parameters (section ``clcrec:``); defaults are the authors' code defaults."""

    # temperature of both InfoNCE terms
    temperature: float = 2.0
    # weight of the item-item term (the user-item term has 1 - lr_lambda)
    lr_lambda: float = 0.5
    # probability that an item is represented by its content embedding in the user-item term
    num_sample: float = 0.5
    # hidden width of the content encoder
    hidden: int = 256

    def check(self) -> None:
        check_nonneg(self, "temperature", positive=True)
        check_positive_int(self, "hidden")
        if isinstance(self.lr_lambda, bool) or not isinstance(self.lr_lambda, (int, float)) \
                or not 0 <= self.lr_lambda <= 1:
            raise ConfigError(f"clcrec.lr_lambda must be a number in [0, 1], got {self.lr_lambda!r}")
        check_fraction(self, "num_sample")


class CLCRecRec(Recommender):
    """CLCRec (module docstring). Parts: ``user_emb``, ``item_emb`` (ID embeddings) and ``encoder`` (content).

    Shapes:
        embeddings() -> (users [U, dim], items [I, dim]); content_embeddings(items [B]) -> [B, dim].
    """

    uses_features = True

    def __init__(self, *, features: Dict[str, Tensor], **kw) -> None:
        super().__init__(features=features, **kw)
        c = self.config
        self.register_buffer("content", content_matrix(features, self.num_items).to(self.device), persistent=False)
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.num_users, c.dim, device=self.device)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.num_items, c.dim, device=self.device)))
        self.encoder = nn.Sequential(nn.Linear(self.content.shape[1], c.hidden), nn.LeakyReLU(),
                                     nn.Linear(c.hidden, c.dim)).to(self.device)

    def content_embeddings(self, items: Tensor) -> Tensor:
        return self.encoder(self.content.index_select(0, items))

    def embeddings(self) -> Tuple[Tensor, Tensor]:
        c = self.content_embeddings(torch.arange(self.num_items, device=self.device))
        return self.user_emb, self.warm_or_cold(self.item_emb, c)

    def loss(self, batch: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        c = self.config
        u, p, n = batch["users"], batch["pos"], batch["neg"]
        b = p.numel()
        items = torch.cat([p, n])
        ids = self.item_emb.index_select(0, items)
        content = self.content_embeddings(items)
        target = torch.arange(b, device=self.device)
        # item-item: a positive's ID view against every batch item's content view
        logits = F.normalize(ids[:b], dim=1) @ F.normalize(content, dim=1).t() / c.temperature
        item_item = F.cross_entropy(logits, target) if b else logits.sum() * 0.0
        # user-item: each batch item by its ID or (probability num_sample) its content embedding
        swap = (torch.rand(2 * b, 1, device=self.device) < c.num_sample).to(ids.dtype)
        mixed = ids * (1.0 - swap) + content * swap
        ue = self.user_emb.index_select(0, u)
        user_item = F.cross_entropy(ue @ mixed.t() / c.temperature, target) if b else logits.sum() * 0.0
        reg = self.reg_loss(ue, ids[:b], ids[b:])
        cl = c.lr_lambda * item_item + (1.0 - c.lr_lambda) * user_item
        return cl + reg, {"item_item": loss_part(item_item), "user_item": loss_part(user_item),
                          "reg": loss_part(reg)}
