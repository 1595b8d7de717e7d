"""Item features as a model part, shared by every model that reads them (MoToRec and the content baselines).

:class:`ItemFeatures` holds each modality's raw feature matrix; :class:`FeatureEncoder` is the per-modality
MLP over L2-normalized features.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["ItemFeatures", "FeatureEncoder"]


class ItemFeatures(nn.Module):
    """Each modality's item features, as non-persistent buffers: data, not state, so they stay out of
    ``state_dict()`` and checkpoints (the dataset brings them back) but follow the model's device.

    Args:
        features: ``{modality: [num_items, d_m]}``; modalities are kept in sorted order.
        num_items: catalog size every matrix must have as rows.
        normalize: store each row L2-normalized (once, at construction): ``self[m]`` is then the normalized
            matrix and :meth:`normalized` only indexes it.

    Shapes:
        self[m] -> [num_items, d_m] float32; normalized(m, items [B]) -> [B, d_m]; as_dict() -> {m: [num_items, d_m]}
    """

    def __init__(self, features: Dict[str, Tensor], num_items: int, *, normalize: bool = False) -> None:
        super().__init__()
        self.modalities = sorted(features)
        self.num_items = int(num_items)
        self.is_normalized = bool(normalize)
        for m in self.modalities:
            f = features[m]
            if f.dim() != 2 or f.shape[0] != self.num_items:
                raise ValueError(f"features[{m!r}] must be [num_items={self.num_items}, d], got {tuple(f.shape)}")
            f = f.float()
            if normalize:  # once here instead of on every read (a pass over the catalog's features per step)
                f = nn.functional.normalize(f, dim=1)
            self.register_buffer(f"feat_{m}", f, persistent=False)

    def __getitem__(self, m: str) -> Tensor:
        return getattr(self, f"feat_{m}")

    def as_dict(self) -> Dict[str, Tensor]:
        return {m: self[m] for m in self.modalities}

    def dims(self) -> Dict[str, int]:
        return {m: int(self[m].shape[1]) for m in self.modalities}

    def normalized(self, m: str, items: Optional[Tensor] = None) -> Tensor:
        """Modality ``m``'s features of ``items`` (default: all), each row L2-normalized."""
        f = self[m]
        if items is not None:
            f = f[items]
        return f if self.is_normalized else nn.functional.normalize(f, dim=1)

    @torch.no_grad()
    def extended(self, new: Dict[str, Tensor]) -> Tuple[Dict[str, Tensor], int]:
        """The features of a catalog grown by ``N`` new items: ``({m: [num_items + N, d_m]}, N)``.

        ``new`` must map every modality to an ``[N, d_m]`` array of finite values with the existing width;
        anything else raises ValueError naming the modality.
        """
        if not isinstance(new, dict) or sorted(new) != self.modalities:
            got = sorted(new) if isinstance(new, dict) else type(new).__name__
            raise ValueError(f"features must map each trained modality {self.modalities} to a tensor, got {got}")
        n = None
        out = {}
        for m in self.modalities:
            f = new[m] if isinstance(new[m], Tensor) else torch.as_tensor(new[m])
            old = self[m]
            if f.dim() != 2 or f.shape[1] != old.shape[1]:
                raise ValueError(f"features[{m!r}] must be [N, {old.shape[1]}] (the trained width), got "
                                 f"{tuple(f.shape)}")
            if n is None:
                n = f.shape[0]
            elif f.shape[0] != n:
                raise ValueError(f"every modality must have the same number of new items: features[{m!r}] has "
                                 f"{f.shape[0]} rows, the first modality {n}")
            if not f.is_floating_point():
                f = f.float()
            if not bool(torch.isfinite(f).all()):
                raise ValueError(f"features[{m!r}] holds NaN or Inf values")
            f = f.to(device=old.device, dtype=old.dtype)
            out[m] = torch.cat([old, nn.functional.normalize(f, dim=1) if self.is_normalized else f])
        if not n:
            raise ValueError("features hold no new items (0 rows)")
        return out, n


class FeatureEncoder(nn.Module):
    """Per-modality MLP on L2-normalized features; :meth:`forward` sums them over modalities.

    Shapes:
        features: {m: [N, d_m]} -> [N, dim]; per_modality(features) -> {m: [N, dim]}.
    """

    def __init__(self, dims: Dict[str, int], hidden: int, dim: int) -> None:
        super().__init__()
        if not dims:
            raise ValueError("a content model needs at least one feature modality; the dataset has none")
        self.mlps = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(d, hidden), nn.LeakyReLU(0.1), nn.Linear(hidden, dim)) for m, d in dims.items()
        })

    def per_modality(self, features: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return {m: mlp(nn.functional.normalize(features[m], dim=1)) for m, mlp in self.mlps.items()}

    def forward(self, features: Dict[str, Tensor]) -> Tensor:
        return sum(self.per_modality(features).values())
