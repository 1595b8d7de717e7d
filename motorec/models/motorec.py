"""MoToRec: sparse-regularized multimodal tokenization for cold-start recommendation (PAPER.md).

Per modality m an RQ-VAE tokenizer turns item features into a quantized code ``z_q^m`` (N_q tokens); a
hierarchical graph encoder fuses content and collaborative signals:

* token level: ``h_i^m = W_m z_q^m + sum_k E_m[k, code_k]`` (the token embeddings are optional);
* source level: per modality a cosine kNN item-item graph on the quantized codes (rebuilt every few epochs)
  and one propagation layer ``(h + A^m h) / 2``; the modalities' views are fused (their mean, or attention) into
  the content view ``h~_i``;
* collaborative level: LightGCN over the user-item graph, item layer-0 = ID embedding + ``h~_i`` (cold items: no
  ID), final item = readout (warm items) or readout + ``h~_i`` (cold items), final user = readout.

A cold item has no edges and no trained ID: its final embedding is ``h~_i (1 + 1 / (L + 1))``, from its
features alone, through tokens drawn from trained codebooks.

Objective: rarity-weighted BPR (``rarity_terms: all``; by default the weights scale only the content-only term)
+ ``lambda_cold`` * rarity-weighted BPR of the content-only (cold) embeddings
+ ``lambda_cl`` * symmetric InfoNCE(collaborative view, content view)
+ ``lambda_rq`` * (reconstruction + codebook + commitment) + ``sparse_weight`` * sparsity KL
+ ``lambda_reg`` * squared norm of the batch's layer-0 embeddings.

Rarity amplification (ours, PAPER.md section 2): ``s_i = log(1 + d_max) / log(2 + d_i)``, normalized to mean 1
over the batch's positives, clipped to ``rarity_clip``, ramped in from 1 over ``rarity_warmup_epochs``.

Cold items' scores go through one affine map onto the warm items' score distribution
(:class:`~motorec.models.cold.ColdScorer`). The generic cold-start machinery (snapshot ensemble, a decoupled
warm scorer) is not part of the model: any model takes it through :func:`motorec.models.wrap`.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from motorec.config import ConfigError, ModelConfig
from motorec.models.base import Recommender, loss_part
from motorec.models.content import ItemItemEncoder, SourceAttention, TokenEncoder
from motorec.models.features import ItemFeatures
from motorec.models.losses import (
    batch_contrastive_items,
    bpr_loss,
    contrastive_items,
    contrastive_rows_loss,
    rarity_weights,
    row_sq_norms,
    sq_sum,
)
from motorec.models.tokenizer import MultimodalTokenizer
from motorec.nn.lightgcn import LightGCN, csr_rows, id_rows

__all__ = ["MoToRec", "MoToRecConfig"]


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


class MoToRec(Recommender):
    """The MoToRec model; see the module docstring. Config: :class:`MoToRecConfig`.

    Parts, each a module found by name: ``tokenizer`` (:class:`~motorec.models.tokenizer.MultimodalTokenizer`),
    ``token_level`` (:class:`~motorec.models.content.TokenEncoder`), ``item_item``
    (:class:`~motorec.models.content.ItemItemEncoder`), ``fusion``
    (:class:`~motorec.models.content.SourceAttention`; ``None`` with ``fusion: mean``), ``lightgcn``
    (:class:`motorec.nn.LightGCN`: the ID tables and the collaborative level) and ``cold``
    (:class:`~motorec.models.cold.ColdScorer`).

    Shapes:
        embeddings() -> (users [U, dim], items [I, dim]); tokenize() -> {modality: codes [I, num_levels] int64}.
    """

    uses_features = True
    has_tokenizer = True
    default_cold_calibration = 1.0  # the base class's self.cold calibrates cold scores in score()
    history_propagation = True  # train.propagation: history (_forward_nodes)

    def __init__(self, *, features: Dict[str, Tensor], **kw) -> None:
        super().__init__(features=features, **kw)
        feats = ItemFeatures(features, self.num_items, normalize=True)
        if not feats.modalities:
            raise ValueError("MoToRec needs at least one feature modality; the dataset has none")
        c, dev, mods = self.config, self.device, feats.modalities
        # The parts are built in this order because it fixes which random draws initialize which weights.
        self.tokenizer = MultimodalTokenizer(feats, c, self.backend).to(dev)
        self.token_level = TokenEncoder(mods, c, device=dev)
        self.item_item = ItemItemEncoder(mods, self.num_items, c.knn_k, self.backend).to(dev)
        self.fusion = SourceAttention(c.dim, self.backend).to(dev) if c.fusion == "attention" else None
        self.lightgcn = LightGCN(self.num_users, self.num_items, embedding_dim=c.dim, num_layers=c.num_layers,
                                 init_std=0.1, backend=self.backend, device=dev)
        if c.rarity and c.rarity_terms == "content" and c.lambda_cold == 0:
            warnings.warn("motorec.rarity is on but weights no term: rarity_terms='content' scales only the "
                          "lambda_cold term, and lambda_cold is 0 (set lambda_cold > 0 or rarity_terms='all')",
                          stacklevel=2)
        self._epoch_log: Dict[str, float] = {}
        # history steps: every item's token-level view per modality, detached ({m: [num_items, dim]})
        self._token_history: Optional[Dict[str, Tensor]] = None

    @property
    def item_emb(self) -> Tensor:
        """[num_items, dim] item ID embeddings (cold items' rows are never used)."""
        return self.lightgcn.item_embedding.weight

    # ------------------------------------------------------------------ tokenizer
    def pretrain_loss(self, items: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Tokenizer-only loss on a batch of items (the pre-training stage)."""
        total, parts = self.tokenizer.losses(self.tokenizer(items))
        return total, {k: loss_part(v) for k, v in parts.items()}

    @torch.no_grad()
    def tokenize(self) -> Dict[str, Tensor]:
        """Every item's semantic IDs per modality (:meth:`MultimodalTokenizer.tokenize`, in eval mode).

        Shapes:
            -> {modality: [num_items, num_levels] int64}. Raises ValueError for a continuous model.
        """
        with self.eval_mode():
            return self.tokenizer.tokenize()

    @torch.no_grad()
    def rebuild_item_graphs(self, latents: Optional[Dict[str, Tensor]] = None) -> None:
        """Rebuild each modality's cosine kNN item-item graph on the current quantized codes (all items, cold ones
        included: they attach to the catalog by similarity); ``latents`` ({m: [num_items, latent]}) when the
        caller has just computed them."""
        if latents is None:
            latents = self.tokenizer.encode_catalog()[0]
        self.item_item.rebuild(latents)

    @torch.no_grad()
    def model_stats(self) -> Dict[str, float]:
        """The catalog's token usage under the current weights, per modality and level: ``perplexity_<m>_level<l>``
        (exp of the entropy of the codes' distribution: K when every code is used evenly, 1 for a single code) and
        ``unused_codes_<m>_level<l>`` (the fraction of the K codes no item has). None for a continuous model."""
        if self.config.continuous:
            return {}
        out = {}
        for m, codes in self.tokenize().items():
            for level in range(codes.shape[1]):
                counts = torch.bincount(codes[:, level], minlength=self.config.codebook_size).double()
                p = counts[counts > 0] / counts.sum()
                out[f"perplexity_{m}_level{level}"] = float(torch.exp(-(p * p.log()).sum()))
                out[f"unused_codes_{m}_level{level}"] = float((counts == 0).double().mean())
        return out

    # ------------------------------------------------------------------ embeddings
    def content_view(self, latents: Dict[str, Tensor], codes: Dict[str, Optional[Tensor]]) -> Tensor:
        """``h~`` [num_items, dim]: token level, then (optionally) the item-item level, then the fusion."""
        return self._fuse(self.token_level(latents, codes))

    def _fuse(self, h: Dict[str, Tensor], prescaled: bool = False) -> Tensor:
        """The content view from the token level's per-modality views ``h`` ({m: [num_items, dim]});
        ``prescaled``: the views already carry the mean fusion's ``1 / M`` (the propagation is linear), so the
        mean is their sum."""
        if self.config.item_item:
            if not self.item_item.graphs:
                self.rebuild_item_graphs()
            hs: List[Tensor] = self.item_item(h)
        else:
            hs = [h[m] for m in self.tokenizer.modalities]
        if self.fusion is not None:
            return self.fusion(hs)[0]
        fused = hs[0]
        for view in hs[1:]:
            fused = fused + view
        return fused if len(hs) == 1 or prescaled else fused / len(hs)

    def _forward(self):
        """``(users, collab, content, tokenizer outputs)``: final users [U, dim], LightGCN item readout and ``h~``
        [num_items, dim]."""
        if self.tokenizer.sampling() and not self.config.continuous:
            # a sampled step: the token level reads the token cache and the sample's fresh latents directly
            # (TokenEncoder.forward_sampled), never every item's latent
            parts, outs = self.tokenizer.sampled_tokens()
            mean = self.fusion is None
            scale = 1.0 / len(parts) if mean else 1.0
            content = self._fuse(self.token_level.forward_sampled(parts, scale), prescaled=mean)
        elif not (self.training or torch.is_grad_enabled()):
            # scoring: the catalog's tokens without the decoder and the tokenizer losses, a chunk at a time (the
            # same latents and codes; the full forward's decoder outputs were the peak memory at 1M items)
            latents, codes = self.tokenizer.encode_catalog()
            outs = {}
            content = self.content_view(latents, codes)
        else:
            latents, codes, outs = self.tokenizer.catalog_tokens()
            content = self.content_view(latents, codes)
        emb = self.lightgcn.item_embedding.weight
        # layer 0 = h~ + ID (warm rows only) in one op; the 0/1 mask is exact
        layer0 = torch.addcmul(content, emb, self.warm_mask.to(emb.dtype).unsqueeze(1))
        users, collab = self.lightgcn(self.graph, layer0)
        return users, collab, content, outs

    def _forward_nodes(self, users: Tensor, items: Tensor):
        """A history step's ``(users, collab, content, tokenizer outputs)`` on the distinct ``users`` [Bu] and
        ``items`` [Bi] (``train.propagation: history``): every level computed for the batch's rows, their
        neighbours read from the epoch's history (:meth:`refresh_history`).

        The token level runs on ``items`` (:meth:`MultimodalTokenizer.rows_tokens`); each item-item view is
        ``(h_i + sum_j A_ij H_j) / 2`` with the neighbours' token-level views ``H`` from the history; the
        collaborative level is :meth:`LightGCN.forward_nodes` with ``h~`` as the items' non-ID layer 0. The
        batch's fresh views are written back to the history.

        Shapes:
            -> (users [Bu, dim], collab [Bi, dim], content [Bi, dim], {m: RQVAEOutput}).
        """
        if self._token_history is None or not self.lightgcn.has_history:
            self.refresh_history()
        latents, codes, outs = self.tokenizer.rows_tokens(items)
        h = self.token_level(latents, codes)
        if self.config.item_item:
            if not self.item_item.graphs:
                self.rebuild_item_graphs()
            hs = []
            for m in self.tokenizer.modalities:
                seg, col, val = csr_rows(self.item_item.graphs[m], items)
                hist = self._token_history[m]
                nb = h[m].new_zeros(h[m].shape).index_add_(
                    0, seg, hist.index_select(0, col).to(h[m].dtype) * val.to(h[m].dtype).unsqueeze(1))
                hs.append((h[m] + nb) / 2)
                hist.index_copy_(0, items, h[m].detach().to(hist.dtype))
        else:
            hs = [h[m] for m in self.tokenizer.modalities]
        content = self.fusion(hs)[0] if self.fusion is not None else sum(hs[1:], hs[0]) / len(hs)
        users_b, collab = self.lightgcn.forward_nodes(self.graph, users, items, content, sparse_grad=True)
        return users_b, collab, content, outs

    def drop_history(self) -> None:
        self._token_history = None
        self.lightgcn.drop_history()

    def sparse_parameters(self) -> List[torch.nn.Parameter]:
        """The ID tables under ``train.propagation: history`` (whose steps gather them sparsely)."""
        if self.propagation == "history":
            return [self.lightgcn.user_embedding.weight, self.lightgcn.item_embedding.weight]
        return []

    @torch.no_grad()
    def refresh_history(self, latents: Optional[Dict[str, Tensor]] = None,
                        codes: Optional[Dict[str, Optional[Tensor]]] = None) -> None:
        """The history of ``train.propagation: history``, from the current weights: every item's
        token-level views and content view, and LightGCN's (:meth:`LightGCN.refresh_history`); ``latents`` and
        ``codes`` (:meth:`MultimodalTokenizer.encode_catalog`) when the caller has just computed them."""
        if latents is None or codes is None:
            latents, codes = self.tokenizer.encode_catalog()
        h = self.token_level(latents, codes)
        self._token_history = {m: v.detach().float() for m, v in h.items()}
        self.lightgcn.refresh_history(self.graph, self._fuse(h).float(), self.warm_mask)

    def _final_items(self, collab: Tensor, content: Tensor) -> Tensor:
        """Final item embeddings: the readout, plus ``h~`` for cold items (a warm item's layer 0 already holds it).

        Shapes:
            collab, content: [num_items, dim] -> [num_items, dim].
        """
        return torch.addcmul(collab, content, (~self.warm_mask).to(content.dtype).unsqueeze(1))

    def embeddings(self) -> Tuple[Tensor, Tensor]:
        users, collab, content, _ = self._forward()
        return users, self._final_items(collab, content)

    @property
    def _cold_scale(self) -> float:
        """A cold item's final embedding is ``h~`` times this (its readout ``h~ / (L + 1)``, plus ``h~``)."""
        return 1.0 + 1.0 / (self.config.num_layers + 1)

    # ------------------------------------------------------------------ brand-new items
    @torch.no_grad()
    def with_new_items(self, features: Dict[str, Tensor]) -> "MoToRec":
        """A copy of this trained model (eval mode, same device) whose catalog also holds ``N`` brand-new items
        given by their features alone, ids ``num_items .. num_items + N - 1``; ``self`` is left as it is.

        The new items are cold (no interactions, no ID embedding), embedded and scored like any cold item. The
        copy equals the model one would have had with these rows in the feature files from the start, except
        that the item-item kNN graphs are rebuilt over the grown catalog (existing items can gain neighbours).

        Args:
            features: ``{modality: [N, d_m]}`` raw features for every trained modality, with the trained widths
                (:meth:`ItemFeatures.extended` says what it refuses).
        """
        grown_feats, n = self.tokenizer.features.extended(features)
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):  # init draws: not the caller's RNG
            warnings.simplefilter("ignore")  # config warnings were given when this model was built
            grown = type(self)(num_users=self.num_users, num_items=self.num_items + n, train=self.train_pairs,
                               features=grown_feats, config=self.config, backend=self.backend)
        state = dict(self.state_dict())
        key = "lightgcn.item_embedding.weight"
        state[key] = torch.cat([state[key], state[key].new_zeros(n, state[key].shape[1])])
        state["item_item._extra_state"] = {}  # rebuilt over the grown catalog below
        grown.load_state_dict(state)
        grown.epoch = self.epoch
        grown.eval()
        grown.rebuild_item_graphs()
        return grown

    # ------------------------------------------------------------------ training
    def rarity_ramp(self) -> float:
        """How far the rarity weights are ramped in at the current epoch, in [0, 1] (0 with rarity off)."""
        c = self.config
        if not c.rarity:
            return 0.0
        return 1.0 if c.rarity_warmup_epochs == 0 else min(1.0, self.epoch / c.rarity_warmup_epochs)

    def loss(self, batch: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        c = self.config
        u, p, n = batch["users"], batch["pos"], batch["neg"]
        pn, b, nb = torch.cat([p, n]), p.shape[0], n.shape[0]
        rows, use_cl = pn, c.lambda_cl > 0 and b > 0
        if self.history_steps:
            if use_cl:  # (contrastive_items costs the catalog: a random key per item)
                cl_items, cl_valid = batch_contrastive_items(p, c.cl_items, self.item_emb.dtype)
                rows = torch.cat([pn, cl_items])
            uu, uinv = torch.unique(u, return_inverse=True)
            ii, iinv = torch.unique(rows, return_inverse=True)
            users, collab, content, outs = self._forward_nodes(uu, ii)
            ue, collab_rows, content_rows = (users.index_select(0, uinv), collab.index_select(0, iinv),
                                             content.index_select(0, iinv))
        else:
            users, collab, content, outs = self._forward()
            ue = users.index_select(0, u)
            if use_cl:
                cl_items, cl_valid = contrastive_items(collab.shape[0], p, c.cl_items, collab.dtype)
                rows = torch.cat([pn, cl_items])
            # One gather per [num_items, d] tensor for every term (each gather's backward is a dense
            # [num_items, d] buffer). index_select, not [] indexing: its backward (index_add_) sums repeated rows
            # in a fixed order, where [] indexing's adds them with atomics.
            collab_rows, content_rows = collab.index_select(0, rows), content.index_select(0, rows)
        # the final item rows (_final_items on the batch's rows only): the readout, plus h~ for a cold item
        warm = self.warm_mask.index_select(0, pn)
        cold = (~warm).to(content.dtype).unsqueeze(1)
        ip, ineg = torch.addcmul(collab_rows[:b + nb], content_rows[:b + nb], cold).split([b, nb])
        w = rarity_weights(self.item_degree, p, ramp=self.rarity_ramp(), clip=c.rarity_clip)
        rank = bpr_loss((ue * ip).sum(1), (ue * ineg).sum(1), w if c.rarity_terms == "all" else None)
        total, parts = rank, {"bpr": loss_part(rank)}
        if c.lambda_cold > 0:
            # the batch's items scored as cold items (s * h~): s times h~'s scores ([B] values, not [2B, d] rows)
            s = self._cold_scale
            content_p, content_n = content_rows[:b + nb].split([b, nb])
            aux = bpr_loss(s * (ue * content_p).sum(1), s * (ue * content_n).sum(1), w)
            total = total + c.lambda_cold * aux
            parts["bpr_cold"] = loss_part(aux)
        if c.lambda_cl > 0:
            cl = (contrastive_rows_loss(collab_rows[b + nb:], content_rows[b + nb:], cl_valid, c.tau) if b > 0
                  else collab.sum() * 0.0)
            total = total + c.lambda_cl * cl
            parts["cl"] = loss_part(cl)
        rq, rq_parts = self.tokenizer.losses(outs)
        total = total + rq
        parts.update(rq=loss_part(rq), sparse=loss_part(rq_parts["sparse"]))
        # L2 of the users' and the warm items' ID rows (a cold item's row is never trained)
        sparse = self.history_steps  # the ID tables take sparse gradients in a history step (sparse_parameters)
        sq = row_sq_norms(id_rows(self.lightgcn.item_embedding.weight, pn, sparse)) * warm
        ue0 = id_rows(self.lightgcn.user_embedding.weight, u, sparse)
        reg = c.lambda_reg * (sq_sum(ue0) + sq.sum()) / max(b, 1)
        parts["reg"] = loss_part(reg)
        return total + reg, parts

    def epoch_log(self) -> Dict[str, float]:
        """``churn_<modality>``: the fraction of items whose tokens changed (any level) since the previous
        epoch's catalog pass, and ``churn_<modality>_level0``, whose first-level token did
        (:meth:`MultimodalTokenizer.code_churn`; absent on the first joint epoch and when the catalog is not
        re-encoded that epoch); ``seconds_catalog`` and ``seconds_knn``: that epoch start's catalog pass and
        item-item graph rebuild (0.0 when not done)."""
        return dict(self._epoch_log)

    def on_epoch_start(self, epoch: int) -> None:
        """Schedules; the tokenizer's token cache (for its sampled steps) is refreshed from the whole catalog, one
        pass without gradients, and the item-item graphs are rebuilt from the same pass when due."""
        super().on_epoch_start(epoch)
        c = self.config
        rebuild = c.item_item and (not self.item_item.graphs or epoch % c.knn_rebuild_every == 0)
        sampling = self.tokenizer.sampling()
        history = self.propagation == "history"
        self._epoch_log = {"seconds_catalog": 0.0, "seconds_knn": 0.0}
        if not (rebuild or sampling or history):
            return
        t0 = _clock(self.device)
        latents, codes = self.tokenizer.encode_catalog()
        self._epoch_log["seconds_catalog"] = _clock(self.device) - t0
        self._epoch_log.update({f"churn_{m}": v for m, v in self.tokenizer.code_churn(codes).items()})
        if sampling:
            self.tokenizer.set_cache(latents, codes)
        if rebuild:
            t0 = _clock(self.device)
            self.rebuild_item_graphs(latents)
            self._epoch_log["seconds_knn"] = _clock(self.device) - t0
        if history:
            t0 = _clock(self.device)
            self.refresh_history(latents, codes)
            self._epoch_log["seconds_catalog"] += _clock(self.device) - t0


def _clock(device: torch.device) -> float:
    """A stage boundary's clock: waits for the device's queued work first."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
