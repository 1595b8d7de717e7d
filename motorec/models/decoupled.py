"""``Decoupled``: warm items scored by one model, cold items by another, each selected at its own best epoch.

The cold-start field's decoupled designs (DropoutNet, Heater, ALDI, ...) rank warm items by a collaborative
model and cold items by a content model. Here any feature model (``cold``) is paired with a pure-ID model
(``warm``, a :class:`~motorec.models.baselines.LightGCNRec` by default): both are trained in the same step on the
same batch, their losses added and sharing nothing, so each trains exactly as it would alone. A warm item's score
is the warm model's, a cold item's the cold model's; the hybrid ranking puts them on one scale through the
wrapper's cold-score calibration. Under ``train.select: warm_cold_mean`` the two parts are selected apart
(:class:`~motorec.models.selection.PartsSelection`), since the mean of two separable terms is maximized term
by term.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import torch
from torch import Tensor

from motorec.models.base import EmbeddingScorer, Recommender
from motorec.models.selection import PartsSelection, Selection
from motorec.models.wrapper import Wrapper

__all__ = ["Decoupled", "WARM_SEED_OFFSET"]

# the warm model's initial weights come from the global seed plus this constant, so building it leaves the
# global random stream (and so the cold model's draws and the sampler's) as without the wrapper
WARM_SEED_OFFSET = 0x5EED_B4A9C4


class Decoupled(Wrapper):
    """Warm items scored by ``warm``, cold items by ``cold``; see the module docstring.

    Args:
        warm: the warm scorer (any recommender of the same catalog; its cold items' scores are never used).
        cold: the cold scorer, a feature model (its warm items' scores are used only to select it).

    Shapes:
        embeddings() -> (users [U, d_c + d_w], items [I, d_c + d_w]): ``[cold users, warm users]`` and
        ``[cold items (cold rows only), warm items (warm rows only)]``.
    """

    def __init__(self, warm: Recommender, cold: Recommender) -> None:
        super().__init__(cold)
        if not cold.uses_features:
            raise ValueError(f"the cold part must score cold items from features; {type(cold).__name__} does not")
        if (warm.num_users, warm.num_items) != (cold.num_users, cold.num_items):
            raise ValueError(f"warm and cold must share a catalog: {warm.num_users} x {warm.num_items} users x items "
                             f"against {cold.num_users} x {cold.num_items}")
        self.cold_model = cold
        self.warm_model = warm

    @staticmethod
    def seeded(build: Callable[[], Recommender], device) -> Recommender:
        """``build()`` under the global seed plus :data:`WARM_SEED_OFFSET`, the caller's random stream left as it
        was (how :func:`motorec.models.build_model` makes the warm model)."""
        dev = torch.device(device)
        cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
        seed = torch.cuda.initial_seed() if dev.type == "cuda" else torch.initial_seed()
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed((seed + WARM_SEED_OFFSET) % (2 ** 63))
            return build()

    # ------------------------------------------------------------------ training
    def loss(self, batch: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        cold, cold_parts = self.cold_model.loss(batch)
        warm, warm_parts = self.warm_model.loss(batch)
        return cold + warm, {**cold_parts, **{f"warm_{k}": v for k, v in warm_parts.items()}}

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self.cold_model.on_epoch_start(epoch)
        self.warm_model.on_epoch_start(epoch)

    # ------------------------------------------------------------------ scoring
    def embeddings(self) -> Tuple[Tensor, Tensor]:
        # the parts' own eval caches (the selection scores the cold part alone from the same pass)
        uc, ic = self.cold_model._eval_embeddings()
        uw, iw = self.warm_model._eval_embeddings()
        warm = self.warm_mask.to(ic.dtype).unsqueeze(1)
        return torch.cat([uc, uw], dim=1), torch.cat([ic * (1.0 - warm), iw * warm], dim=1)

    def cold_part_scores(self) -> EmbeddingScorer:
        """The cold part's own scores of every item (warm ones too), uncalibrated, from its current weights in the
        current mode (calibration moves cold scores only, so its warm-setting recall is the same)."""
        return EmbeddingScorer(*self.cold_model._eval_embeddings(), self.backend)

    def selection(self, rule: str, score: Callable[[Dict[str, Any]], float], metric: str) -> Selection:
        if rule != "warm_cold_mean":
            return Selection(score)
        return PartsSelection(score, metric, cold_scorer=self.cold_part_scores, merge=self.merge_parts,
                              warm_keys=lambda k: k.startswith("warm_model."))

    @staticmethod
    def merge_parts(warm_state: Dict[str, Any], cold_state: Dict[str, Any]) -> Dict[str, Any]:
        """``cold_state`` with the warm model's entries taken from ``warm_state``."""
        return {**cold_state, **{k: v for k, v in warm_state.items() if k.startswith("warm_model.")}}

    def drop_caches(self) -> None:
        super().drop_caches()
        for part in ("cold_model", "warm_model"):
            if part in self._modules:
                self._modules[part].drop_caches()

    @torch.no_grad()
    def with_new_items(self, features: Dict[str, Tensor]) -> "Decoupled":
        """Both parts over the grown catalog: the cold part embeds the new items from ``features``; the warm part
        gets zero rows for them (they are cold: never scored by it)."""
        cold = self.cold_model.with_new_items(features)
        with torch.random.fork_rng(devices=[]):  # init draws (overwritten below): not the caller's RNG
            warm = type(self.warm_model)(num_users=self.num_users, num_items=cold.num_items, train=self.train_pairs,
                                         features={}, config=self.warm_model.config, backend=self.backend)
        state = dict(self.warm_model.state_dict())
        n = cold.num_items - self.num_items
        for k, v in state.items():
            if k.endswith("item_embedding.weight"):
                state[k] = torch.cat([v, v.new_zeros(n, v.shape[1])])
        warm.load_state_dict(state)
        grown = Decoupled(warm.to(cold.device), cold)
        grown.epoch = self.epoch
        return grown.eval()
