"""Cold-item score calibration: :class:`ColdScorer` maps the scores of items without training interactions
onto the warm items' score scale."""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor, nn

from motorec.config import ModelConfig

__all__ = ["ColdScorer", "gram_and_mean"]

Moments = Tuple[Tuple[Tensor, Tensor], Tuple[Tensor, Tensor]]


class ColdScorer(nn.Module):
    """Calibrates cold items' scores onto the warm items' scale.

    With ``a = cold_calibration`` (in [0, 1]; ``None`` in the config: ``default_calibration``, the model's
    default) and the mean/std of the scores over every (user, item) pair of the catalog, warm items and cold
    items apart (:meth:`moments`, cached while in eval mode), one affine map is applied to every cold score:

    ``s_c <- (1 - a) s_c + a ((s_c - mean_c) / std_c * std_w + mean_w)``,

    so each user's cold scores keep their level relative to other users'.

    Why: a warm item's embedding carries a collaborative part (largely popularity) that a cold item's
    content-only embedding cannot have, so raw cold scores live on another scale than warm ones and whether
    cold items reach a top-K list would depend on that scale, not on their content. ``a = 1`` scores cold items
    as a random warm item is scored in distribution. Only which items have training interactions is used, never
    validation or test data. The config is read at each call, so changing ``cold_calibration`` takes effect at
    once. :class:`~motorec.models.base.Recommender` gives every feature model one (``default_calibration`` =
    its class's ``default_cold_calibration``: 0 for the baselines), applied in :meth:`Recommender.score`.

    Shapes:
        forward: scores [B, num_items], embeddings() -> (users [U, d], items [num_items, d]) -> [B, num_items]
    """

    def __init__(self, config: ModelConfig, warm_mask: Tensor, default_calibration: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= float(default_calibration) <= 1.0:
            raise ValueError(f"default_calibration must lie in [0, 1], got {default_calibration}")
        self.config = config
        self.default_calibration = float(default_calibration)
        self.register_buffer("warm_mask", warm_mask, persistent=False)
        # fixed by the training data; counted once here, not per call (a device sync on GPU)
        self.num_cold = int((~warm_mask).sum())
        self.num_items = int(warm_mask.numel())
        self._moments: Optional[Tuple[Tensor, Moments]] = None

    def strength(self) -> float:
        """``a``: ``model.cold_calibration``, or the model's default while that is null."""
        a = self.config.cold_calibration
        return self.default_calibration if a is None else a

    def active(self) -> bool:
        """Whether calibration changes any score (strength non-zero, at least 2 warm and 2 cold items)."""
        return not (self.strength() <= 0 or self.num_cold < 2 or self.num_items - self.num_cold < 2)

    def affine(self, embeddings: Callable[[], Tuple[Tensor, Tensor]]) -> Optional[Tuple[Tensor, Tensor]]:
        """``(alpha, beta)``, 0-dim tensors in the items' dtype, such that the calibrated cold score is
        ``s * alpha + beta`` (what :meth:`forward` applies); ``None`` when calibration changes nothing
        (:meth:`active` false). With ``r = std_w / std_c``: ``alpha = (1 - a) + a r``,
        ``beta = a (mean_w - mean_c r)``."""
        if not self.active():
            return None
        a = self.strength()
        (mw, sw), (mc, sdc) = self.moments(*embeddings())
        r = sw / sdc.clamp_min(1e-12)
        return (1.0 - a) + a * r, a * (mw - mc * r)

    def forward(self, s: Tensor, embeddings: Callable[[], Tuple[Tensor, Tensor]]) -> Tensor:
        """Calibrate ``s`` in place and return it; ``embeddings`` gives the model's (eval) user and item
        embeddings."""
        ab = self.affine(embeddings)
        if ab is None:
            return s
        cold = ~self.warm_mask
        s[:, cold] = s[:, cold] * ab[0] + ab[1]
        return s

    def moments(self, u: Tensor, items: Tensor) -> Moments:
        """Mean and std of ``u . i`` over all users and the warm items, and over all users and the cold items,
        without forming the score matrix: ``E[s] = mean(u) . mean(i)``, ``E[s^2] = <U^T U, I^T I> / (|U||I|)``
        in float64 (O((|U| + |I|) d^2)). In eval mode cached for as long as ``u`` is the same tensor."""
        if self._moments is not None and self._moments[0] is u:
            return self._moments[1]
        gu, mu = gram_and_mean(u)
        out = []
        for sel in (self.warm_mask, ~self.warm_mask):
            gi, mi = gram_and_mean(items, sel)
            mean = mu @ mi
            var = ((gu * gi).sum() - mean * mean).clamp_min(0.0)
            out.append((mean.to(items.dtype), var.sqrt().to(items.dtype)))
        result = (out[0], out[1])
        if not self.training:
            self._moments = (u, result)
        return result


def gram_and_mean(x: Tensor, rows: Optional[Tensor] = None, chunk: int = 65536) -> Tuple[Tensor, Tensor]:
    """``(x_R^T x_R / n, mean of the rows of x_R)`` in float64 for the rows ``R`` selected by the bool mask
    ``rows`` (default: all, ``n = |R|``), ``chunk`` rows at a time: no float64 or masked copy of ``x``.

    Shapes:
        x: [N, d], rows: optional [N] bool -> ([d, d], [d]) float64.
    """
    d = x.shape[1]
    gram = torch.zeros(d, d, dtype=torch.float64, device=x.device)
    total = torch.zeros(d, dtype=torch.float64, device=x.device)
    for s in range(0, x.shape[0], chunk):
        part = x[s:s + chunk] if rows is None else x[s:s + chunk][rows[s:s + chunk]]
        part = part.double()
        gram += part.t() @ part
        total += part.sum(0)
    n = max(x.shape[0] if rows is None else int(rows.sum()), 1)
    return gram / n, total / n
