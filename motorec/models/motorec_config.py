"""MoToRec's hyper-parameters (config section ``motorec:``; docs/MODEL.md lists them), beside the model in
:mod:`motorec.models.motorec`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Tuple

from motorec.config import ConfigError, ModelConfig

__all__ = ["MoToRecConfig"]


@dataclass
class MoToRecConfig(ModelConfig):
    """MoToRec's own hyper-parameters (config section ``motorec:``); the shared ``model:`` keys are inherited.

    Ablation switches (PAPER.md): ``sparse_weight: 0``, ``rarity: false``, ``item_item: false``,
    ``continuous: true``.
    """

    # tokenizer (PAPER.md section 1)
    latent_dim: int = 64
    hidden_dims: Tuple[int, ...] = (256,)
    num_levels: int = 3
    codebook_size: int = 256
    commitment: float = 0.25
    sparse_weight: float = 1e-3
    sparse_temperature: float = 1.0
    continuous: bool = False
    ema: bool = False
    kmeans_init: bool = True
    token_embeddings: bool = True
    lambda_rq: float = 1.0
    # items whose tokenizer losses and fresh tokens a joint step computes (0: the whole catalog every step)
    tokenizer_sample: int = 64
    # rarity amplification (section 2)
    rarity: bool = True
    rarity_clip: Tuple[float, float] = (0.5, 5.0)
    rarity_warmup_epochs: int = 5
    # which BPR terms the rarity weights scale: "content" (the content-only term) or "all" (both, as the paper)
    rarity_terms: str = "content"
    # graph encoder (section 3)
    item_item: bool = True
    # how the modality views are fused: "mean" (no parameters) or "attention" (the paper's)
    fusion: str = "mean"
    knn_k: int = 10
    knn_rebuild_every: int = 5
    # objectives (section 4)
    lambda_cl: float = 0.05
    tau: float = 0.2
    # the contrastive term uses at most this many of the batch's distinct positive items
    cl_items: int = 256
    # weight of the BPR term on the content-only (cold) embeddings of the batch's items
    lambda_cold: float = 1.0

    def check(self) -> None:
        for k in ("latent_dim", "num_levels", "codebook_size", "knn_k", "knn_rebuild_every", "cl_items"):
            _check(isinstance(getattr(self, k), int) and not isinstance(getattr(self, k), bool)
                   and getattr(self, k) > 0, self, k, "an integer > 0")
        for k in ("rarity_warmup_epochs", "tokenizer_sample"):
            _check(isinstance(getattr(self, k), int) and not isinstance(getattr(self, k), bool)
                   and getattr(self, k) >= 0, self, k, "an integer >= 0")
        for k in ("commitment", "sparse_weight", "lambda_cl", "lambda_rq", "lambda_cold"):
            _check(_number(getattr(self, k)) and 0 <= getattr(self, k) < float("inf"), self, k, "a finite number >= 0")
        for k in ("tau", "sparse_temperature"):
            _check(_number(getattr(self, k)) and getattr(self, k) > 0, self, k, "a number > 0")
        clip = self.rarity_clip
        _check(isinstance(clip, (tuple, list)) and len(clip) == 2 and all(_number(x) for x in clip)
               and 0 < clip[0] <= 1.0 <= clip[1], self, "rarity_clip", "[min, max] with 0 < min <= 1 <= max")
        self.rarity_clip = (float(clip[0]), float(clip[1]))
        _check(self.rarity_terms in ("all", "content"), self, "rarity_terms", "'all' or 'content'")
        _check(self.fusion in ("attention", "mean"), self, "fusion", "'attention' or 'mean'")
        _check(isinstance(self.hidden_dims, (tuple, list)) and all(
            isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in self.hidden_dims), self, "hidden_dims",
            "a list of positive integers")
        self.hidden_dims = tuple(self.hidden_dims)
        for k in ("continuous", "ema", "kmeans_init", "token_embeddings", "rarity", "item_item"):
            _check(isinstance(getattr(self, k), bool), self, k, "true or false")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check(ok: bool, cfg: ModelConfig, key: str, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{cfg.name}.{key} must be {expected}, got {getattr(cfg, key)!r}")
