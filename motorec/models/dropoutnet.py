"""``dropoutnet``: DropoutNet (Volkovs, Yu and Poutanen, "DropoutNet: Addressing Cold Start in Recommender
Systems", NeurIPS 2017; the authors' TensorFlow code: github.com/layer6ai-labs/DropoutNet; ColdRec's PyTorch
port: github.com/YuanchenBei/ColdRec, ``model/DropoutNet.py``).

A user tower and an item tower map ``[preference embedding, content]`` to the output space; they learn to
reproduce the preference model's scores ``<u_pref, v_pref>`` (mean squared error, on the batch's positives and
negatives), while the item's preference embedding is dropped (set to 0) for a random ``dropout`` fraction of
the rows, so the item tower learns to score from content alone. A cold item enters the tower with a zero
preference embedding, as a dropped one does; a warm item with its own. Both are scored through the towers.

What differs from the authors' code, stated:

* The preference (CF) embeddings come from a LightGCN trained in the same run (:class:`~motorec.models.
  backbone.CFBackbone`, exactly ``lightgcn``), not from a WMF model trained before; the towers see them
  detached, so early on they learn from a backbone that is still moving. The checkpoint the trainer selects
  holds both.
* The content is the items' L2-normalized modalities side by side; the user tower has no user content (item
  cold start), and the authors' user-side transform of dropped items (a user's preference replaced by the mean
  of their items') is left out, as ColdRec leaves it out.
* Dropout draws each row independently with probability ``dropout`` (the authors and ColdRec drop an exact
  count of rows); the loss is the MSE of the scores as in both.
* The trainer's sampler gives one uniform negative per positive (the authors score a user against sampled
  items of a neighbourhood); Adam on every part with the run's learning rate.
* Hidden widths ``hidden`` and ``hidden // 2`` (the authors' CiteULike setting is 800 and 400), tanh + batch
  norm blocks and truncated-normal(0.01) initialization as in the authors' code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch
from torch import Tensor, nn

from motorec.config import ModelConfig
from motorec.models.backbone import CFBackbone, check_fraction, check_positive_int, mse
from motorec.models.base import loss_part

__all__ = ["DropoutNetRec", "DropoutNetConfig", "TanhTower"]


@dataclass
class DropoutNetConfig(ModelConfig):
    """``dropoutnet``'s own hyper-parameters (section ``dropoutnet:``); defaults are the authors'."""

    # fraction of the batch's items whose preference embedding is dropped (the authors' 0.5)
    dropout: float = 0.5
    # first hidden width of each tower; the second is half of it (the authors' 800, 400)
    hidden: int = 800

    def check(self) -> None:
        check_fraction(self, "dropout")
        check_positive_int(self, "hidden")


class TanhTower(nn.Module):
    """DropoutNet's tower: ``(Linear, BatchNorm, tanh)`` blocks then a linear output, weights drawn from a
    truncated normal with standard deviation 0.01 and zero biases (the authors' initialization).

    Shapes:
        x: [B, d_in] -> [B, d_out].
    """

    def __init__(self, d_in: int, hidden: Tuple[int, ...], d_out: int) -> None:
        super().__init__()
        dims = (d_in,) + tuple(hidden)
        self.blocks = nn.Sequential(*(nn.Sequential(nn.Linear(a, b), nn.BatchNorm1d(b, momentum=0.01, eps=1e-3),
                                                    nn.Tanh()) for a, b in zip(dims[:-1], dims[1:])))
        self.out = nn.Linear(dims[-1], d_out)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.01, a=-0.02, b=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.blocks(x))


class DropoutNetRec(CFBackbone):
    """LightGCN backbone + DropoutNet towers (module docstring). Parts: ``lightgcn`` (the preference model),
    ``user_tower`` and ``item_tower``.

    Shapes:
        embeddings() -> (users [U, dim], items [I, dim]).
    """

    def __init__(self, *, features: Dict[str, Tensor], **kw) -> None:
        super().__init__(features=features, **kw)
        c = self.config
        hidden = (c.hidden, max(c.hidden // 2, 1))
        self.user_tower = TanhTower(c.dim, hidden, c.dim).to(self.device)
        self.item_tower = TanhTower(c.dim + self.content.shape[1], hidden, c.dim).to(self.device)

    def item_input(self, pref: Tensor, items: Tensor) -> Tensor:
        """``[preference, content]`` of some items. Shapes: pref [B, dim], items [B] -> [B, dim + d_content]."""
        return torch.cat([pref, self.content.index_select(0, items)], dim=1)

    def embeddings(self) -> Tuple[Tensor, Tensor]:
        users, items = self.cf_embeddings()
        # a cold item's preference input is 0, as a dropped one's in training
        pref = items * self.warm_mask.unsqueeze(1).to(items.dtype)
        all_items = torch.arange(self.num_items, device=self.device)
        return self.user_tower(users), self.item_tower(self.item_input(pref, all_items))

    def loss(self, batch: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        backbone, parts, (ue, pe, ne) = self.backbone_loss(batch)
        p, n = batch["pos"], batch["neg"]
        b = p.numel()
        items = torch.cat([pe, ne])
        target = torch.cat([(ue * pe).sum(1), (ue * ne).sum(1)])
        dropped = items * self.row_keep(2 * b, self.config.dropout)
        iv = self.item_tower(self.item_input(dropped, torch.cat([p, n])))
        uv = self.user_tower(ue).repeat(2, 1)
        fit = mse((uv * iv).sum(1), target)
        return backbone + fit, {**parts, "score_mse": loss_part(fit)}
