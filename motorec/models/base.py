"""The interface every motorec recommender implements, and what they share.

A recommender is built from a dataset's sizes, training interactions and item features; the trainer only
calls :meth:`Recommender.loss`, :meth:`Recommender.score`, :meth:`Recommender.on_epoch_start`,
:meth:`Recommender.epoch_log`, :meth:`Recommender.selection` and, for models with a tokenizer,
:meth:`Recommender.pretrain_loss`. A model's whole state (parameters, buffers, and non-tensor
state of its parts through ``nn.Module.get_extra_state``) is its ``state_dict()``.

Batches are dicts of equal-length LongTensors ``users``, ``pos``, ``neg`` (one sampled negative per positive)
plus the float ``epoch`` (for schedules such as the rarity ramp).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

from motorec.config import PROPAGATIONS, ConfigError, ModelConfig
from motorec.graph import Graph
from motorec.models.cold import ColdScorer
from motorec.models.losses import sq_sum
from motorec.models.selection import Selection

__all__ = ["EmbeddingScorer", "Recommender", "item_degrees", "loss_part", "weights_key"]


def item_degrees(train: Tensor, num_items: int) -> Tensor:
    """[num_items] float training degree of every item (repeated pairs counted once).

    Shapes:
        train: [E, 2] int (user, item) -> [num_items] float32.
    """
    if train.numel() == 0:
        return torch.zeros(num_items, device=train.device)
    key = torch.unique(train[:, 0].long() * num_items + train[:, 1].long())
    return torch.bincount(key % num_items, minlength=num_items).float()


def loss_part(x) -> Tensor:
    """A loss part for logging: detached and left where it is (a 0-dim tensor on the model's device). The
    trainer sums the parts on the device and reads them once per epoch, so logging costs no host sync per step.
    """
    return x.detach() if isinstance(x, Tensor) else torch.tensor(float(x))


class Recommender(nn.Module):
    """Base class: user and item embeddings scored by inner product.

    Subclasses implement :meth:`embeddings` (``(users [U, d], items [I, d])``) and :meth:`loss`.
    In eval mode :meth:`score` caches the embeddings until the next :meth:`train` call.

    Every model that scores cold items from features (``uses_features``) has ``self.cold``, a
    :class:`~motorec.models.cold.ColdScorer` that :meth:`score` applies: the same ``model.cold_calibration`` key
    for every model; with ``cold_calibration: null`` each class's ``default_cold_calibration`` (0: off for the
    baselines, 1 for MoToRec).

    Args:
        num_users, num_items: catalog sizes.
        train: [E, 2] LongTensor of training (user, item) pairs (on the model's device).
        features: {modality: [num_items, d_m] float} item features (ignored by ID-only models).
        config: the :class:`~motorec.config.ModelConfig`.
        backend: backend for ``motorec.ops`` (``auto``, ``torch``, ``cpu``, ``cuda``).
    """

    uses_features = False
    has_tokenizer = False
    # cold-score calibration strength while model.cold_calibration is null (ColdScorer)
    default_cold_calibration = 0.0
    # whether the model trains with train.propagation: history (read from the class itself, never inherited: a
    # subclass that changes the loss declares it anew)
    history_propagation = False

    def __init__(self, *, num_users: int, num_items: int, train: Tensor, features: Dict[str, Tensor],
                 config: ModelConfig, backend: str = "auto", propagation: str = "full", fanout: int = 0) -> None:
        super().__init__()
        if train.dim() != 2 or train.shape[1] != 2:
            raise ValueError(f"train must be an [E, 2] tensor of (user, item) pairs, got {tuple(train.shape)}")
        self.num_users = int(num_users)
        self.num_items = int(num_items)
        self.config = config
        self.backend = backend
        if propagation not in PROPAGATIONS:
            raise ConfigError(f"train.propagation must be one of {', '.join(PROPAGATIONS)}, got {propagation!r}")
        if propagation != "full" and not type(self).__dict__.get("history_propagation", False):
            from motorec.models import MODELS

            supported = sorted(n for n, (cls, _) in MODELS.items() if cls.__dict__.get("history_propagation", False))
            raise ConfigError(f"train.propagation: {propagation!r} is not supported by model {config.name!r} "
                              f"(supported: {', '.join(supported)}); use 'full'")
        self.propagation = propagation
        if isinstance(fanout, bool) or not isinstance(fanout, int) or fanout < 0:
            raise ConfigError(f"train.fanout must be an int >= 0 (0: every neighbour), got {fanout!r}")
        if fanout and propagation != "history":
            raise ConfigError(f"train.fanout caps a history step's neighbours: it needs train.propagation: history, "
                              f"got {propagation!r} with fanout {fanout}")
        self.fanout = fanout
        train = train.long()
        self.register_buffer("train_pairs", train, persistent=False)
        deg = item_degrees(train, self.num_items)
        # distinct training users per item (Dataset.item_interaction_counts counts repeated pairs too)
        self.register_buffer("item_degree", deg, persistent=False)
        # Items with at least one training interaction; the others are cold: no trained ID embedding.
        self.register_buffer("warm_mask", deg > 0, persistent=False)
        self.graph = Graph.from_interactions(train[:, 0], train[:, 1], self.num_users, self.num_items,
                                             device=train.device)
        # no parameters and no persistent state: checkpoints do not change
        self.cold: Optional[ColdScorer] = (ColdScorer(config, self.warm_mask, type(self).default_cold_calibration)
                                           if self.uses_features else None)
        self.epoch = 0.0
        self._cache: Optional[Tuple[Tensor, Tensor]] = None
        # cached eval embeddings belong to the weights they came from
        self.register_load_state_dict_post_hook(_drop_cache)

    # ------------------------------------------------------------------ device handling
    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self.graph = self.graph.to(self.train_pairs.device)
        self.drop_caches()
        return out

    @property
    def device(self) -> torch.device:
        return self.train_pairs.device

    def warm_or_cold(self, warm: Tensor, cold: Tensor) -> Tensor:
        """Per item, the row of ``warm`` for a warm item and of ``cold`` for a cold one.

        Shapes:
            warm, cold: [num_items, d] -> [num_items, d].
        """
        return torch.where(self.warm_mask.unsqueeze(1), warm, cold)

    # ------------------------------------------------------------------ interface
    def embeddings(self) -> Tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, batch: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def pretrain_loss(self, items: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        raise NotImplementedError(f"{type(self).__name__} has no tokenizer to pre-train")

    def selection(self, rule: str, score: Callable[[Dict[str, Any]], float], metric: str) -> Selection:
        """The checkpoint-selection strategy the trainer runs for this model under ``train.select`` ``rule``: by
        default one state kept at the best ``score`` of the validation metrics
        (:class:`~motorec.models.selection.Selection`). A model made of parts scored apart
        (:class:`~motorec.models.decoupled.Decoupled`) brings its own; ``metric`` names the metric it reads."""
        return Selection(score)

    def epoch_log(self) -> Dict[str, float]:
        """Values for the epoch's log row that the model measured in its last :meth:`on_epoch_start` (e.g.
        MoToRec's code churn); none by default."""
        return {}

    def model_stats(self) -> Dict[str, float]:
        """Statistics of the trained model for the run's record (e.g. MoToRec's codebook usage); none by default."""
        return {}

    def with_new_items(self, features: Dict[str, Tensor]) -> "Recommender":
        """A copy of this trained model whose catalog also holds brand-new items given by their features alone
        (a model that can embed them implements it)."""
        raise NotImplementedError(f"{type(self).__name__} cannot embed brand-new items from their features")

    def on_epoch_start(self, epoch: int) -> None:
        """Called by the trainer before each training epoch (schedules, graph rebuilds)."""
        self.epoch = float(epoch)

    def sparse_parameters(self) -> List[nn.Parameter]:
        """The parameters this model's training steps give sparse (row) gradients, for a row-sparse optimizer
        (:func:`motorec.train.make_optimizer`): the ID tables of a history step; none by default."""
        return []

    @property
    def history_steps(self) -> bool:
        """Whether a training step propagates over the batch's neighbourhoods with historical embeddings
        (``train.propagation: history``, in training mode)."""
        return self.training and self.propagation == "history"

    def train(self, mode: bool = True):
        self.drop_caches()
        if not mode:
            self.drop_history()
        return super().train(mode)

    def drop_history(self) -> None:
        """Forget the tables of ``train.propagation: history`` (called on ``eval()``: scoring never reads them,
        and each training epoch's start refreshes them); a model with such tables extends it."""

    def drop_caches(self) -> None:
        """Forget what was computed from the current weights, device or mode (called on ``train()``/``eval()``,
        device moves and ``load_state_dict``); a subclass with caches of its own extends it."""
        self._cache = None

    @contextlib.contextmanager
    def eval_mode(self) -> Iterator[None]:
        """Eval mode within the block (no codebook statistics updates, no dropout), the previous mode after."""
        was = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was)

    def _eval_embeddings(self) -> Tuple[Tensor, Tensor]:
        if self.training:
            return self.embeddings()
        if self._cache is None:
            with torch.no_grad():
                self._cache = tuple(t.detach() for t in self.embeddings())
        return self._cache

    def user_embeddings(self) -> Tensor:
        """[num_users, d] final user embeddings."""
        return self._eval_embeddings()[0]

    def item_embeddings(self) -> Tensor:
        """[num_items, d] final item embeddings (cold items from their features where the model can)."""
        return self._eval_embeddings()[1]

    def score(self, users: Tensor) -> Tensor:
        """Scores of every item for some users, cold items' scores calibrated by ``self.cold`` (where the model
        has one and its strength or shift is non-zero).

        Shapes:
            users: [B] int -> [B, num_items] float.
        """
        u, i = self._eval_embeddings()
        s = u[users.to(u.device).long()] @ i.t()
        return s if self.cold is None else self.cold(s, self._eval_embeddings)

    def ranking_parts(self) -> Optional[Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]]:
        """:meth:`score` as parts a fused ranking takes (:func:`motorec.ops.rank_topk`, used by
        :func:`motorec.eval.evaluate`): ``(users [U, d], items [I, d], item_scale, item_shift)`` with
        ``score(b)[:, i] == (users[b] . items[i]) * item_scale[i] + item_shift[i]`` (up to the matmul's
        rounding), from the cached eval embeddings. The scale and shift are ``self.cold``'s global affine map on
        the cold items (1 and 0 on warm items), both ``None`` when no calibration applies. ``None`` when the
        scores are not of that form (calibration in the ``"user"`` scope).

        A subclass that overrides :meth:`score` must override this too (``return None`` opts out), else
        :func:`motorec.eval.evaluate` does not trust it and ranks from :meth:`score` (the dense path).

        Shapes:
            -> users [U, d], items [I, d], item_scale [I] or None, item_shift [I] or None
        """
        u, i = self._eval_embeddings()
        if self.cold is None:
            return u, i, None, None
        ab = self.cold.affine(self._eval_embeddings)
        if ab is None:
            return u, i, None, None
        alpha, beta = (t.to(device=i.device, dtype=i.dtype) for t in ab)
        cold = ~self.cold.warm_mask.to(i.device)
        scale = torch.where(cold, alpha, torch.ones((), dtype=i.dtype, device=i.device))
        shift = torch.where(cold, beta, torch.zeros((), dtype=i.dtype, device=i.device))
        return u, i, scale, shift

    def reg_loss(self, *tensors: Tensor) -> Tensor:
        """``lambda_reg`` times the mean over the batch of the squared norms of layer-0 embeddings."""
        b = max(tensors[0].shape[0], 1)
        return self.config.lambda_reg * sum(sq_sum(t) for t in tensors) / b


class EmbeddingScorer:
    """Scores ``users[b] . items[i]`` of fixed embeddings, with :meth:`score` and :meth:`ranking_parts` as a
    :class:`Recommender` has them (so :func:`motorec.eval.evaluate` ranks it through the fused op where one
    serves).

    Shapes:
        users [U, d], items [I, d]; score(user_ids [B]) -> [B, I].
    """

    def __init__(self, users: Tensor, items: Tensor, backend: str = "auto") -> None:
        if users.dim() != 2 or items.dim() != 2 or users.shape[1] != items.shape[1]:
            raise ValueError(f"users and items must be [U, d] and [I, d] with the same d, got "
                             f"{tuple(users.shape)} and {tuple(items.shape)}")
        self.users, self.items, self.backend = users.detach(), items.detach(), backend

    def score(self, users: Tensor) -> Tensor:
        return self.users[users.to(self.users.device).long()] @ self.items.t()

    def ranking_parts(self) -> Tuple[Tensor, Tensor, None, None]:
        return self.users, self.items, None, None


def weights_key(module: nn.Module) -> Tuple:
    """A value that changes when a parameter or buffer of ``module`` is replaced, moved, cast or changed in place
    (each one's storage, version counter, dtype and device), or when autocast is switched: the key of a result
    computed from the weights and reused while they stay put. Writes through ``.data`` move no version counter
    (EMA codebooks are updated so, in a training forward): a holder forgets its result on those itself."""
    return (torch.is_autocast_enabled("cpu"), torch.is_autocast_enabled("cuda"),
            *((t.data_ptr(), t._version, t.dtype, t.device) for t in (*module.parameters(), *module.buffers())))


def _drop_cache(module: Recommender, incompatible_keys) -> None:
    module.drop_caches()
