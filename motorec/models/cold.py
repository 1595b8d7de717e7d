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
    default), ``d = cold_score_shift`` and mean/std taken over ``cold_calibration_scope``:

    * ``"global"`` (default): over every (user, item) pair of the catalog, warm items and cold items
      separately, so one affine map is applied to all cold scores and each user's cold scores keep their level
      relative to other users' (:meth:`moments`, cached while in eval mode);
    * ``"user"``: over each user's own scores (every user's cold scores get the warm spread);

    ``s_c <- (1 - a) s_c + a ((s_c - mean_c) / std_c * std_w + mean_w) - d * std_w``.

    Why: a warm item's embedding carries a collaborative part (largely popularity) that a cold item's
    content-only embedding cannot have, so raw cold scores live on another scale than warm ones and whether
    cold items reach a top-K list would depend on that scale, not on their content. ``a = 1, d = 0`` scores
    cold items as a random warm item is scored in distribution; ``d > 0`` lowers them (a content-only score
    is a noisier guess). Only which items have training interactions is used, never validation or test data.
    The config is read at each call, so changing its calibration fields takes effect at once.
    :class:`~motorec.models.base.Recommender` gives every feature model one (``default_calibration`` = its
    class's ``default_cold_calibration``: 0 for the baselines), applied in :meth:`Recommender.score`.

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

    def _strength(self) -> Tuple[float, float]:
        c = self.config
        return (self.default_calibration if c.cold_calibration is None else c.cold_calibration), c.cold_score_shift

    def active(self) -> bool:
        """Whether calibration changes any score (strength or shift non-zero, at least 2 warm and 2 cold items)."""
        a, shift = self._strength()
        return not ((a <= 0 and shift == 0) or self.num_cold < 2 or self.num_items - self.num_cold < 2)

    @property
    def per_user(self) -> bool:
        """True when calibration is active in the ``"user"`` scope: each user's cold scores get their own map, so
        the calibrated scores are not one affine map of ``u . i`` (:meth:`affine` does not apply)."""
        return self.active() and self.config.cold_calibration_scope != "global"

    def affine(self, embeddings: Callable[[], Tuple[Tensor, Tensor]]) -> Optional[Tuple[Tensor, Tensor]]:
        """``(alpha, beta)``, 0-dim tensors in the items' dtype, such that the ``"global"`` scope's calibrated
        cold score is ``s * alpha + beta`` (what :meth:`forward` applies); ``None`` when calibration changes
        nothing (:meth:`active` false). Raises ``ValueError`` in the ``"user"`` scope (:attr:`per_user`).

        With ``r = std_w / std_c``: ``alpha = (1 - a) + a r``, ``beta = a (mean_w - mean_c r) - d std_w``.
        """
        if not self.active():
            return None
        if self.per_user:
            raise ValueError("cold_calibration_scope 'user' is not one affine map of the scores")
        a, shift = self._strength()
        (mw, sw), (mc, sdc) = self.moments(*embeddings())
        if a > 0:
            r = sw / sdc.clamp_min(1e-12)
            alpha, beta = (1.0 - a) + a * r, a * (mw - mc * r)
        else:
            alpha, beta = torch.ones_like(sw), torch.zeros_like(sw)
        return alpha, beta - shift * sw

    def forward(self, s: Tensor, embeddings: Callable[[], Tuple[Tensor, Tensor]]) -> Tensor:
        """Calibrate ``s`` in place and return it; ``embeddings`` gives the model's (eval) user and item
        embeddings, called only for the global scope (there the map is :meth:`affine`'s)."""
        if not self.active():
            return s
        cold = ~self.warm_mask
        sc = s[:, cold]
        if not self.per_user:
            alpha, beta = self.affine(embeddings)
            s[:, cold] = sc * alpha + beta
            return s
        a, shift = self._strength()
        w = s[:, ~cold]
        mw, sw = w.mean(1, keepdim=True), w.std(1, keepdim=True)
        mc, sdc = sc.mean(1, keepdim=True), sc.std(1, keepdim=True)
        if a > 0:
            sc = (1.0 - a) * sc + a * ((sc - mc) / sdc.clamp_min(1e-12) * sw + mw)
        s[:, cold] = sc - shift * sw
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
