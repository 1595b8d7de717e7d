"""The base of the generic cold-start wrappers (:class:`~motorec.models.ensemble.SnapshotEnsemble`,
:class:`~motorec.models.decoupled.Decoupled`): a :class:`~motorec.models.base.Recommender` made of other
recommenders, sharing their catalog and training data instead of holding copies."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

from torch import Tensor, nn

from motorec.graph import Graph
from motorec.models.base import Recommender, _drop_cache
from motorec.models.cold import ColdScorer
from motorec.models.selection import Selection

__all__ = ["Wrapper", "unwrap"]


class Wrapper(Recommender):
    """A recommender built around ``base``: the catalog, training pairs, device and model config are ``base``'s.

    The wrapper scores items itself (its own :meth:`embeddings`), so it has its own
    :class:`~motorec.models.cold.ColdScorer`, with ``base``'s config and default strength; the wrapped models'
    own scorers are not used. ``base`` is the model that scores cold items (the one a user configured).
    """

    def __init__(self, base: Recommender) -> None:
        nn.Module.__init__(self)  # not Recommender.__init__: nothing of the catalog is built twice
        if not isinstance(base, Recommender):
            raise TypeError(f"a wrapper wraps a Recommender, got {type(base).__name__}")
        self.num_users, self.num_items = base.num_users, base.num_items
        self.config, self.backend = base.config, base.backend
        self._base = (base,)  # a tuple: not registered twice as a submodule (the subclass registers it)
        self.cold: Optional[ColdScorer] = (ColdScorer(base.config, base.warm_mask, base.cold.default_calibration)
                                           if base.cold is not None else None)
        self.epoch = 0.0
        self._cache: Optional[Tuple[Tensor, Tensor]] = None
        self.register_load_state_dict_post_hook(_drop_cache)

    # the base model's data, not copies
    @property
    def base(self) -> Recommender:
        return self._base[0]

    @property
    def train_pairs(self) -> Tensor:
        return self.base.train_pairs

    @property
    def item_degree(self) -> Tensor:
        return self.base.item_degree

    @property
    def warm_mask(self) -> Tensor:
        return self.base.warm_mask

    @property
    def graph(self) -> Graph:
        return self.base.graph

    @property
    def uses_features(self) -> bool:
        return self.base.uses_features

    @property
    def has_tokenizer(self) -> bool:
        return self.base.has_tokenizer

    def _apply(self, fn, *args, **kwargs):
        out = nn.Module._apply(self, fn, *args, **kwargs)
        self.drop_caches()
        return out

    def pretrain_loss(self, items: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        return self.base.pretrain_loss(items)

    def epoch_log(self) -> Dict[str, float]:
        return self.base.epoch_log()

    def model_stats(self) -> Dict[str, float]:
        return self.base.model_stats()

    def selection(self, rule: str, score: Callable[[Dict[str, Any]], float], metric: str) -> Selection:
        """``base``'s own strategy (e.g. a published baseline's rule), run on the wrapper's scores and state."""
        return self.base.selection(rule, score, metric)


def unwrap(model: Recommender) -> Recommender:
    """The model a wrapper was built around (the one that scores cold items), through every wrapper; ``model``
    itself when it is not wrapped. E.g. ``unwrap(model).tokenize()`` for a wrapped MoToRec."""
    while isinstance(model, Wrapper):
        model = model.base
    return model
