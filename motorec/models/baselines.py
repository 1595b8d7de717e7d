"""Baselines in the same harness as MoToRec: ``lightgcn`` (IDs only), ``content`` (MLP on features, BPR) and
``lightgcn_content`` (LightGCN with projected features added to the item layer-0 embedding).

All three score by inner product, train with BPR on one sampled negative and an L2 penalty on the layer-0
embeddings of the batch, and propagate through :func:`motorec.ops.propagate` on the user-item graph.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import Tensor, nn

from motorec import ops
from motorec.models.base import Recommender, _f, bpr_loss

__all__ = ["LightGCNRec", "ContentRec", "LightGCNContentRec", "FeatureEncoder"]


class FeatureEncoder(nn.Module):
    """Per-modality MLP on L2-normalized features, summed over modalities.

    Shapes:
        features: {m: [N, d_m]} -> [N, dim].
    """

    def __init__(self, dims: Dict[str, int], hidden: int, dim: int) -> None:
        super().__init__()
        if not dims:
            raise ValueError("a content model needs at least one feature modality; the dataset has none")
        self.mlps = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(d, hidden), nn.LeakyReLU(0.1), nn.Linear(hidden, dim)) for m, d in dims.items()
        })

    def forward(self, features: Dict[str, Tensor]) -> Tensor:
        return sum(mlp(nn.functional.normalize(features[m], dim=1)) for m, mlp in self.mlps.items())


class _FeatureMixin:
    def _register_features(self, features: Dict[str, Tensor]) -> None:
        self._modalities = sorted(features)
        for m in self._modalities:
            f = features[m]
            if f.dim() != 2 or f.shape[0] != self.num_items:
                raise ValueError(f"features[{m!r}] must be [num_items={self.num_items}, d], got {tuple(f.shape)}")
            # Features are data, not state: kept out of the state dict and checkpoints.
            self.register_buffer(f"feat_{m}", f.float(), persistent=False)

    def features(self) -> Dict[str, Tensor]:
        return {m: getattr(self, f"feat_{m}") for m in self._modalities}


class LightGCNRec(Recommender):
    """LightGCN (He et al., 2020) on IDs only; cold items keep their untrained initial ID embedding.

    Shapes:
        embeddings() -> (users [U, dim], items [I, dim]).
    """

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        d = self.config.dim
        self.user_emb = nn.Parameter(torch.randn(self.num_users, d, device=self.device) * 0.1)
        self.item_emb = nn.Parameter(torch.randn(self.num_items, d, device=self.device) * 0.1)

    def item_layer0(self) -> Tensor:
        return self.item_emb

    def embeddings(self) -> Tuple[Tensor, Tensor]:
        x = torch.cat([self.user_emb, self.item_layer0()])
        out = ops.propagate(self.graph, x, self.config.num_layers, backend=self.backend)
        return out[: self.num_users], out[self.num_users:]

    def loss(self, batch: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, float]]:
        u, p, n = batch["users"], batch["pos"], batch["neg"]
        users, items = self.embeddings()
        ue = users[u]
        rank = bpr_loss((ue * items[p]).sum(1), (ue * items[n]).sum(1))
        reg = self.reg_loss(self.user_emb[u], self.item_emb[p], self.item_emb[n])
        total = rank + reg
        return total, {"bpr": _f(rank), "reg": _f(reg)}


class LightGCNContentRec(_FeatureMixin, LightGCNRec):
    """LightGCN whose item layer-0 embedding is ``ID (warm items only) + MLP(features)``.

    A cold item has no edges and a zero ID embedding, so its embedding is its projected features
    (divided by ``num_layers + 1`` by the layer mean, which does not change its ranking among cold items).
    """

    uses_features = True

    def __init__(self, *, features: Dict[str, Tensor], **kw) -> None:
        super().__init__(features=features, **kw)
        self._register_features(features)
        self.encoder = FeatureEncoder({m: f.shape[1] for m, f in features.items()}, self.config.content_hidden,
                                      self.config.dim).to(self.device)

    def item_layer0(self) -> Tensor:
        return self.item_emb * self.warm_mask.unsqueeze(1) + self.encoder(self.features())


class ContentRec(_FeatureMixin, Recommender):
    """Content-only: item embedding = MLP(features); user embedding = a free ID embedding; BPR.

    Shapes:
        embeddings() -> (users [U, dim], items [I, dim]).
    """

    uses_features = True

    def __init__(self, *, features: Dict[str, Tensor], **kw) -> None:
        super().__init__(features=features, **kw)
        self._register_features(features)
        d = self.config.dim
        self.user_emb = nn.Parameter(torch.randn(self.num_users, d, device=self.device) * 0.1)
        self.encoder = FeatureEncoder({m: f.shape[1] for m, f in features.items()}, self.config.content_hidden,
                                      d).to(self.device)

    def embeddings(self) -> Tuple[Tensor, Tensor]:
        return self.user_emb, self.encoder(self.features())

    def loss(self, batch: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, float]]:
        u, p, n = batch["users"], batch["pos"], batch["neg"]
        idx = torch.cat([p, n])
        uniq, inv = torch.unique(idx, return_inverse=True)
        items = self.encoder({m: f[uniq] for m, f in self.features().items()})
        ip, ineg = items[inv[: p.numel()]], items[inv[p.numel():]]
        ue = self.user_emb[u]
        rank = bpr_loss((ue * ip).sum(1), (ue * ineg).sum(1))
        reg = self.reg_loss(ue, ip, ineg)
        total = rank + reg
        return total, {"bpr": _f(rank), "reg": _f(reg)}
