"""Baselines in the same harness as MoToRec: ``lightgcn`` (IDs only), ``content`` (MLP on features, BPR) and
``lightgcn_content`` (LightGCN with projected features added to the item layer-0 embedding).

All three score by inner product and train with BPR on one sampled negative and an L2 penalty on the layer-0
embeddings of the batch; the two graph models propagate with :class:`motorec.nn.LightGCN` on the user-item
graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from motorec.config import ConfigError, ModelConfig
from motorec.models.base import Recommender, loss_part
from motorec.models.features import FeatureEncoder, ItemFeatures
from motorec.models.losses import bpr_loss
from motorec.nn.lightgcn import LightGCN, id_rows

__all__ = ["LightGCNRec", "ContentRec", "LightGCNContentRec", "ContentConfig"]


@dataclass
class ContentConfig(ModelConfig):
    """The own hyper-parameters of ``content`` and ``lightgcn_content`` (sections ``content:`` and
    ``lightgcn_content:``)."""

    # hidden width of the per-modality feature MLP
    hidden: int = 256

    def check(self) -> None:
        if isinstance(self.hidden, bool) or not isinstance(self.hidden, int) or self.hidden <= 0:
            raise ConfigError(f"{self.name}.hidden must be an integer > 0, got {self.hidden!r}")


class LightGCNRec(Recommender):
    """LightGCN (He et al., 2020) on IDs only; cold items keep their untrained initial ID embedding.

    Shapes:
        embeddings() -> (users [U, dim], items [I, dim]).
    """

    history_propagation = True  # train.propagation: history (Recommender.history_steps)

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        c = self.config
        self.lightgcn = LightGCN(self.num_users, self.num_items, embedding_dim=c.dim, num_layers=c.num_layers,
                                 init_std=0.1, backend=self.backend, device=self.device)

    @property
    def user_emb(self) -> Tensor:
        """[num_users, dim] layer-0 user embeddings (the LightGCN table)."""
        return self.lightgcn.user_embedding.weight

    @property
    def item_emb(self) -> Tensor:
        """[num_items, dim] item ID embeddings (the LightGCN table)."""
        return self.lightgcn.item_embedding.weight

    def item_layer0(self) -> Tensor:
        return self.item_emb

    def item_extra(self, items: Optional[Tensor] = None) -> Optional[Tensor]:
        """The non-ID part of the items' layer 0 (rows ``items``, all items when ``None``): none here."""
        return None

    def id_mask(self) -> Optional[Tensor]:
        """[I] bool, the items whose ID row is in their layer 0 (``None``: every item's)."""
        return None

    def embeddings(self) -> Tuple[Tensor, Tensor]:
        return self.lightgcn(self.graph, self.item_layer0())

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        if self.propagation == "history":
            self.refresh_history()

    @torch.no_grad()
    def refresh_history(self) -> None:
        """The history of ``train.propagation: history`` (:meth:`LightGCN.refresh_history`), from the
        current weights; the trainer's epoch start calls it."""
        self.lightgcn.refresh_history(self.graph, self.item_extra(), self.id_mask())

    def history_embeddings(self, users: Tensor, items: Tensor) -> Tuple[Tensor, Tensor]:
        """Final embeddings of the rows ``users`` [B] and ``items`` [B'] (repeats allowed) for a history step
        (:meth:`LightGCN.forward_nodes`), each distinct node computed once.

        Shapes:
            -> (users [B, d], items [B', d]).
        """
        if not self.lightgcn.has_history:
            self.refresh_history()
        uu, uinv = torch.unique(users, return_inverse=True)
        ii, iinv = torch.unique(items, return_inverse=True)
        ue, ie = self.lightgcn.forward_nodes(self.graph, uu, ii, self.item_extra(ii), sparse_grad=True,
                                             fanout=self.fanout)
        return ue.index_select(0, uinv), ie.index_select(0, iinv)

    def sparse_parameters(self) -> List[nn.Parameter]:
        """The ID tables under ``train.propagation: history`` (whose steps gather them sparsely)."""
        if self.propagation == "history":
            return [self.lightgcn.user_embedding.weight, self.lightgcn.item_embedding.weight]
        return []

    def drop_history(self) -> None:
        self.lightgcn.drop_history()

    def bpr_terms(self, batch: Dict[str, Tensor], users: Tensor, items: Tensor
                  ) -> Tuple[Tensor, Tensor, Tuple[Tensor, Tensor, Tensor]]:
        """LightGCN's loss terms on ``batch``: BPR of the final embeddings ``users`` / ``items`` and the L2
        penalty of the batch's layer-0 ID rows; also the batch's gathered final embeddings (the models built on
        this backbone reuse them).

        Shapes:
            batch users/pos/neg: [B]; users [U, d], items [I, d] -> (scalar, scalar, ([B, d], [B, d], [B, d])).
        """
        u, p, n = batch["users"], batch["pos"], batch["neg"]
        # index_select, not [] indexing: its backward sums repeated rows in a fixed order (MoToRec.loss)
        sel = torch.index_select
        ue, pe, ne = sel(users, 0, u), sel(items, 0, p), sel(items, 0, n)
        rank = bpr_loss((ue * pe).sum(1), (ue * ne).sum(1))
        reg = self.reg_loss(sel(self.user_emb, 0, u), sel(self.item_emb, 0, p), sel(self.item_emb, 0, n))
        return rank, reg, (ue, pe, ne)

    def history_bpr_terms(self, batch: Dict[str, Tensor]) -> Tuple[Tensor, Tensor]:
        """:meth:`bpr_terms`' BPR and L2 for a history step: the batch's final rows from its neighbourhoods."""
        u, p, n = batch["users"], batch["pos"], batch["neg"]
        ue, ie = self.history_embeddings(u, torch.cat([p, n]))
        pe, ne = ie.split([p.numel(), n.numel()])
        rank = bpr_loss((ue * pe).sum(1), (ue * ne).sum(1))
        return rank, self.reg_loss(id_rows(self.user_emb, u, True), id_rows(self.item_emb, p, True),
                                   id_rows(self.item_emb, n, True))

    def loss(self, batch: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        if self.history_steps:
            rank, reg = self.history_bpr_terms(batch)
        else:
            rank, reg, _ = self.bpr_terms(batch, *self.embeddings())
        total = rank + reg
        return total, {"bpr": loss_part(rank), "reg": loss_part(reg)}


class LightGCNContentRec(LightGCNRec):
    """LightGCN whose item layer-0 embedding is ``ID (warm items only) + MLP(features)``.

    A cold item has no edges and a zero ID embedding, so its embedding is its projected features
    (divided by ``num_layers + 1`` by the layer mean, which does not change its ranking among cold items).
    """

    uses_features = True
    history_propagation = True

    def __init__(self, *, features: Dict[str, Tensor], **kw) -> None:
        super().__init__(features=features, **kw)
        self.item_features = ItemFeatures(features, self.num_items)
        self.encoder = FeatureEncoder({m: f.shape[1] for m, f in features.items()}, self.config.hidden,
                                      self.config.dim).to(self.device)

    def item_layer0(self) -> Tensor:
        return self.item_emb * self.warm_mask.unsqueeze(1) + self.encoder(self.item_features.as_dict())

    def item_extra(self, items: Optional[Tensor] = None) -> Optional[Tensor]:
        feats = self.item_features.as_dict()
        if items is not None:
            feats = {m: f.index_select(0, items) for m, f in feats.items()}
        return self.encoder(feats)

    def id_mask(self) -> Optional[Tensor]:
        return self.warm_mask


class ContentRec(Recommender):
    """Content-only: item embedding = MLP(features); user embedding = a free ID embedding; BPR.

    Shapes:
        embeddings() -> (users [U, dim], items [I, dim]).
    """

    uses_features = True

    def __init__(self, *, features: Dict[str, Tensor], **kw) -> None:
        super().__init__(features=features, **kw)
        self.item_features = ItemFeatures(features, self.num_items)
        d = self.config.dim
        self.user_emb = nn.Parameter(torch.randn(self.num_users, d, device=self.device) * 0.1)
        self.encoder = FeatureEncoder({m: f.shape[1] for m, f in features.items()}, self.config.hidden,
                                      d).to(self.device)

    def embeddings(self) -> Tuple[Tensor, Tensor]:
        return self.user_emb, self.encoder(self.item_features.as_dict())

    def loss(self, batch: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        u, p, n = batch["users"], batch["pos"], batch["neg"]
        # a repeated item is encoded again: fixed shapes, no ``unique`` and so no host read per step
        items = self.encoder({m: f[torch.cat([p, n])] for m, f in self.item_features.as_dict().items()})
        ip, ineg = items[: p.numel()], items[p.numel():]
        ue = self.user_emb.index_select(0, u)
        rank = bpr_loss((ue * ip).sum(1), (ue * ineg).sum(1))
        reg = self.reg_loss(ue, ip, ineg)
        total = rank + reg
        return total, {"bpr": loss_part(rank), "reg": loss_part(reg)}
