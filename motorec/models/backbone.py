"""What the field's two-stage cold-start baselines (DropoutNet, Heater, GAR, ALDI's published form) share here:
a LightGCN backbone that provides the collaborative (CF) embeddings, the items' content as one vector, and
the checks of their config keys.

The authors of these models read CF embeddings pre-trained by another program (WMF, BPR-MF or LightGCN) from a
file. Here :class:`CFBackbone` trains them in the same run: it is exactly :class:`~motorec.models.baselines.
LightGCNRec` (same graph, BPR loss, L2 penalty and initialization), and a subclass's content terms see its
embeddings detached, so the backbone trains as ``lightgcn`` does and the content part learns from it.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import Tensor
from torch.nn import functional as F

from motorec.config import ConfigError
from motorec.models.base import loss_part
from motorec.models.baselines import LightGCNRec
from motorec.models.features import ItemFeatures

__all__ = ["CFBackbone", "content_matrix", "check_fraction", "check_nonneg", "check_positive_int", "mse"]


def check_nonneg(cfg, *keys: str, positive: bool = False) -> None:
    """Refuse a key of ``cfg`` that is not a finite number >= 0 (> 0 with ``positive``), naming
    ``<model>.<key>``."""
    for k in keys:
        v = getattr(cfg, k)
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and 0 <= v < float("inf")
        if not ok or (positive and v == 0):
            raise ConfigError(f"{cfg.name}.{k} must be a finite number {'>' if positive else '>='} 0, got {v!r}")


def check_fraction(cfg, *keys: str) -> None:
    """Refuse a key of ``cfg`` outside ``[0, 1)`` (a dropout rate), naming ``<model>.<key>``."""
    for k in keys:
        v = getattr(cfg, k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise ConfigError(f"{cfg.name}.{k} must be a number in [0, 1), got {v!r}")


def check_positive_int(cfg, *keys: str) -> None:
    """Refuse a key of ``cfg`` that is not an integer > 0, naming ``<model>.<key>``."""
    for k in keys:
        v = getattr(cfg, k)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ConfigError(f"{cfg.name}.{k} must be an integer > 0, got {v!r}")


def content_matrix(features: Dict[str, Tensor], num_items: int) -> Tensor:
    """Every item's content as one vector: its L2-normalized modalities side by side (the authors feed one
    content vector; normalizing each modality keeps a long one from dominating).

    Shapes:
        features: {m: [num_items, d_m]} -> [num_items, sum_m d_m] float32.
    """
    feats = ItemFeatures(features, num_items, normalize=True)
    if not feats.modalities:
        raise ValueError("a content model needs at least one feature modality; the dataset has none")
    return torch.cat([feats[m] for m in feats.modalities], dim=1)


class CFBackbone(LightGCNRec):
    """A LightGCN that trains as ``lightgcn`` and hands its embeddings to a content part (module docstring).

    Subclasses add their parts and terms, call :meth:`backbone_loss` in their :meth:`loss`, and build their
    scoring :meth:`embeddings` from :meth:`cf_embeddings`. ``self.content`` is the items' content
    (:func:`content_matrix`), a non-persistent buffer.

    Shapes:
        cf_embeddings() -> (users [U, dim], items [I, dim]); content: [I, sum_m d_m].
    """

    uses_features = True

    def __init__(self, *, features: Dict[str, Tensor], **kw) -> None:
        super().__init__(features=features, **kw)
        self.register_buffer("content", content_matrix(features, self.num_items).to(self.device), persistent=False)

    def cf_embeddings(self) -> Tuple[Tensor, Tensor]:
        """The backbone's final (layer-mean) user and item embeddings, with their graph."""
        return self.lightgcn(self.graph, self.item_emb)

    def backbone_loss(self, batch: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor], Tuple[Tensor, ...]]:
        """The backbone's BPR loss and penalty on ``batch`` (``lightgcn``'s), its parts for the log, and the
        batch's detached CF embeddings ``(users, positives, negatives)`` for the content part.

        Shapes:
            batch users/pos/neg: [B] -> (scalar, parts, ([B, dim], [B, dim], [B, dim])).
        """
        rank, reg, (ue, pe, ne) = self.bpr_terms(batch, *self.cf_embeddings())
        return rank + reg, {"bpr": loss_part(rank), "reg": loss_part(reg)}, (ue.detach(), pe.detach(), ne.detach())

    def row_keep(self, rows: int, rate: float) -> Tensor:
        """A [rows, 1] float mask, 0 with probability ``rate`` and 1 otherwise (drawn on the model's device; no
        host read).

        Shapes:
            -> [rows, 1] float.
        """
        return (torch.rand(rows, 1, device=self.device) >= rate).to(torch.float32)


def mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared error (0 for empty inputs).

    Shapes:
        a, b: [B] or [B, d] -> scalar.
    """
    return F.mse_loss(a, b) if a.numel() else a.sum() * 0.0
