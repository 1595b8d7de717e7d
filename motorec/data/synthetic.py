"""Synthetic multimodal recommendation data where content predicts preference, at any scale.

Generative story (all vectorized torch on CPU; chunked over interactions, so memory stays
O(num_users * num_topics + num_items * sum(d_m) + num_interactions)):

1. Each item gets one latent topic ``t_i`` (uniform over ``num_topics``) and a popularity weight ``w_i``
   drawn from a Pareto law ``P(w > x) = x^-(1 + alpha)``, ``x >= 1``: expected degrees then have a power-law
   density ``∝ d^-(2 + alpha)`` (``alpha = 1``: exponent 3, the usual 2..3 range of real interaction data;
   smaller ``alpha`` is heavier). Where a popular item would need more users than exist, removing repeated
   pairs flattens the head.
2. Each user gets an activity weight ``a_u`` from the same Pareto law (heavy-tailed user degrees) and topic
   preference logits ``s * N(0, 1)`` (``s = 2.5``: a few favourite topics per user).
3. An interaction draws a user ``u ~ a``, a topic ``z ~ softmax(logits_u)`` (Gumbel-max) and an item inside
   topic ``z`` with probability proportional to ``w_i`` (inverse CDF over the topic's items). Repeated pairs
   count once; missing draws are topped up a few times, so the count is close to ``num_interactions``.
4. Each modality ``m`` has topic centroids ``C_m ~ N(0, I / d_m)`` (rows of norm about 1);
   ``features[m][i] = C_m[t_i] + noise * N(0, I / d_m)``. Features depend on the topic only, and so do the
   user's choices: content predicts preference, so a content model can rank cold items; popularity within a
   topic is not visible in the features.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import torch
from torch import Tensor

from motorec.data.dataset import SPLITS, DataError, Dataset
from motorec.data.split import cold_start_split, per_user_labels, warm_split

__all__ = ["synthetic", "SYNTHETIC_SPEC", "parse_synthetic_spec", "load_synthetic_spec"]

_PREF_SCALE = 2.5
_CHUNK = 1 << 20


def _pareto(n: int, tail: float, g: torch.Generator) -> Tensor:
    u = torch.rand(n, generator=g, dtype=torch.float64)
    return (1.0 - u).pow(-1.0 / tail)


def _inverse_cdf(weights: Tensor, n: int, g: torch.Generator) -> Tensor:
    # searchsorted on the CDF instead of torch.multinomial: no 2^24 category limit.
    cdf = torch.cumsum(weights, 0)
    r = torch.rand(n, generator=g, dtype=torch.float64) * cdf[-1]
    return torch.searchsorted(cdf, r, right=True).clamp_(max=weights.numel() - 1)


def _draw(num: int, user_w: Tensor, pref: Tensor, topic_start: Tensor, topic_count: Tensor,
          sorted_items: Tensor, cum_pop: Tensor, g: torch.Generator) -> Tensor:
    users = _inverse_cdf(user_w, num, g)
    topics = torch.empty(num, dtype=torch.int64)
    for s in range(0, num, _CHUNK):
        u = users[s: s + _CHUNK]
        gumbel = -torch.log(-torch.log(torch.rand(u.numel(), pref.shape[1], generator=g).clamp_(min=1e-12)))
        topics[s: s + _CHUNK] = torch.argmax(pref[u] + gumbel, dim=1)
    # cum_pop is the running popularity over items sorted by topic; a topic's items are one contiguous range.
    lo = topic_start[topics]
    hi = lo + topic_count[topics]
    base = torch.where(lo > 0, cum_pop[(lo - 1).clamp(min=0)], torch.zeros((), dtype=cum_pop.dtype))
    mass = cum_pop[hi - 1] - base
    r = base + torch.rand(num, generator=g, dtype=torch.float64) * mass
    idx = torch.searchsorted(cum_pop, r, right=True)
    idx = torch.minimum(torch.maximum(idx, lo), hi - 1)
    return torch.stack([users, sorted_items[idx]], dim=1)


def _checked_args(num_users, num_items, num_interactions, num_topics, modalities, alpha, noise, split) -> int:
    """:func:`synthetic`'s argument checks (ValueError naming the argument); the number of interactions to draw
    (``num_interactions``, or its default). No generation: a spec is checked with it before any run."""
    for v, name in ((num_users, "num_users"), (num_items, "num_items"), (num_topics, "num_topics")):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not isinstance(modalities, Mapping) or not modalities:
        raise ValueError(f"modalities must be a non-empty {{name: dim}} mapping, got {modalities!r}")
    for m, d in modalities.items():
        if not isinstance(m, str) or not m or isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"modalities must map names to positive int dims, got {m!r}: {d!r}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    capacity = num_users * num_items
    if num_interactions is None:
        num_interactions = min(20 * num_users, max(1, capacity // 4))
    if isinstance(num_interactions, bool) or not isinstance(num_interactions, int) or num_interactions < 1:
        raise ValueError(f"num_interactions must be a positive int, got {num_interactions!r}")
    if num_interactions > capacity // 2:
        raise ValueError(f"num_interactions={num_interactions} is over half of all {capacity} user-item pairs")
    return num_interactions


def synthetic(num_users: int, num_items: int, *, num_interactions: Optional[int] = None, num_topics: int = 16,
              modalities: Mapping[str, int] = None, alpha: float = 1.0, noise: float = 1.0, seed: int = 0,
              split: str = "cold", cold_ratio: float = 0.2, split_seed: Optional[int] = None) -> Dataset:
    """Generate a :class:`Dataset` from latent topics (see the module docstring for the model).

    Args:
        num_users, num_items: sizes (items: up to millions).
        num_interactions: target number of distinct (user, item) pairs; default ``20 * num_users``, capped at
            a quarter of all pairs. The result has close to this many (duplicates are redrawn a few times).
        num_topics: latent topics shared by interactions and features.
        modalities: ``{name: dim}``, default ``{"image": 64, "text": 32}``.
        alpha: Pareto tail parameter of user activity and item popularity (smaller = heavier tail).
        noise: feature noise relative to the topic signal (0 = features are exactly the topic centroid).
        seed: seeds generation (and the split, unless ``split_seed`` is given). split, cold_ratio: as in
            :func:`~motorec.data.load_mmrec`.
        split_seed: seed of the split alone (the cold-item draw, or the warm split's labels), so that one catalog
            can be split several ways; ``None``: ``seed``.

    ``info["item_topic"]`` ([num_items] int64, CPU) holds each item's latent topic.

    Shapes:
        -> Dataset with features {name: [num_items, dim] float32}
    """
    if modalities is None:
        modalities = {"image": 64, "text": 32}
    num_interactions = _checked_args(num_users, num_items, num_interactions, num_topics, modalities, alpha, noise,
                                     split)

    g = torch.Generator().manual_seed(int(seed))
    tail = 1.0 + float(alpha)
    item_topic = torch.randint(num_topics, (num_items,), generator=g)
    item_pop = _pareto(num_items, tail, g)
    user_w = _pareto(num_users, tail, g)
    pref = torch.randn(num_users, num_topics, generator=g) * _PREF_SCALE
    topic_count = torch.bincount(item_topic, minlength=num_topics)
    pref[:, topic_count == 0] = float("-inf")  # fewer items than topics: never pick an empty topic
    sorted_items = torch.argsort(item_topic, stable=True)
    topic_start = torch.cumsum(topic_count, 0) - topic_count
    cum_pop = torch.cumsum(item_pop[sorted_items], 0)

    pairs = _draw(num_interactions, user_w, pref, topic_start, topic_count, sorted_items, cum_pop, g)
    key = torch.unique(pairs[:, 0] * num_items + pairs[:, 1])
    for _ in range(8):
        missing = num_interactions - key.numel()
        if missing <= 0:
            break
        more = _draw(int(missing * 1.25) + 16, user_w, pref, topic_start, topic_count, sorted_items, cum_pop, g)
        key = torch.unique(torch.cat([key, more[:, 0] * num_items + more[:, 1]]))
    if key.numel() > num_interactions:
        key = key[torch.sort(torch.randperm(key.numel(), generator=g)[:num_interactions]).values]
    pairs = torch.stack([key // num_items, key % num_items], dim=1)

    features: Dict[str, Tensor] = {}
    for m, d in modalities.items():
        centroids = torch.randn(num_topics, d, generator=g) / d ** 0.5
        f = centroids[item_topic]
        if noise > 0:
            f.add_(torch.randn(num_items, d, generator=g), alpha=float(noise) / d ** 0.5)
        features[m] = f

    sseed = int(seed if split_seed is None else split_seed)
    if split == "cold":
        res = cold_start_split(pairs, num_users, num_items, cold_ratio=cold_ratio, seed=sseed)
    else:
        labels = per_user_labels(pairs[:, 0], generator=torch.Generator().manual_seed(sseed))
        res = warm_split(pairs, labels, num_users, num_items)
    info = dict(res.info, item_topic=item_topic, num_generated=int(pairs.shape[0]))
    return Dataset(num_users=num_users, num_items=num_items, train=res.train, valid=res.valid, test=res.test,
                   features=features, name="synthetic", split=split, cold_valid_items=res.cold_valid_items,
                   cold_test_items=res.cold_test_items, info=info)


# ``synthetic[:key=value,...]`` (``motorec train --data``): key -> (type, default). ``seed`` seeds the catalog; the
# split's draw is given separately (``--split-seed``), so one catalog can be split several ways.
SYNTHETIC_SPEC = {"users": (int, 1500), "items": (int, 1200), "interactions": (int, 40000), "topics": (int, 24),
                  "noise": (float, 1.0), "alpha": (float, 1.0), "image": (int, 64), "text": (int, 32),
                  "seed": (int, 0)}


def parse_synthetic_spec(data: str) -> Optional[Dict[str, float]]:
    """``{key: value}`` (every key of :data:`SYNTHETIC_SPEC`, defaults filled in) of a data spec
    ``synthetic[:key=value,...]``, e.g. ``synthetic:noise=3,seed=1``; ``None`` when ``data`` is not one.

    Raises:
        DataError: an unknown key, a part without ``=``, a value of the wrong type, or values :func:`synthetic`
            refuses (its own checks, without generating anything).
    """
    name, _, rest = str(data).partition(":")
    if name != "synthetic":
        return None
    spec = {k: d for k, (_, d) in SYNTHETIC_SPEC.items()}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or key not in SYNTHETIC_SPEC:
            raise DataError(f"data {data!r}: expected synthetic:key=value,... with keys among "
                            f"{', '.join(SYNTHETIC_SPEC)}; got {part!r}")
        typ = SYNTHETIC_SPEC[key][0]
        try:
            spec[key] = typ(value.strip())
        except ValueError:
            raise DataError(f"data {data!r}: {key} must be {'an int' if typ is int else 'a number'}, "
                            f"got {value!r}") from None
    try:
        _checked_args(*_synthetic_args(spec), "cold")
    except ValueError as e:
        raise DataError(f"data {data!r}: {e}") from None
    return spec


def _synthetic_args(spec: Dict[str, float]):
    """(num_users, num_items, num_interactions, num_topics, modalities, alpha, noise) of a parsed spec."""
    return (spec["users"], spec["items"], spec["interactions"], spec["topics"],
            {"image": spec["image"], "text": spec["text"]}, spec["alpha"], spec["noise"])


def load_synthetic_spec(data: str, *, split: str = "cold", seed: int = 0) -> Dataset:
    """The :func:`synthetic` catalog a ``synthetic[:key=value,...]`` spec names, split with ``seed`` (the cold-item
    draw; the catalog itself comes from the spec's ``seed``).

    Raises:
        DataError: a bad spec (:func:`parse_synthetic_spec`); ValueError: a ``split`` :func:`synthetic` refuses.
    """
    spec = parse_synthetic_spec(data)  # every argument checked here
    if spec is None:
        raise DataError(f"data {data!r} is not a synthetic[:key=value,...] spec")
    users, items, interactions, topics, modalities, alpha, noise = _synthetic_args(spec)
    return synthetic(users, items, num_interactions=interactions, num_topics=topics, modalities=modalities,
                     alpha=alpha, noise=noise, seed=spec["seed"], split=split, split_seed=seed)

