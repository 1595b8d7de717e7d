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

import warnings
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from motorec.models.base import Recommender, loss_part
from motorec.models.content import ItemItemEncoder, SourceAttention, TokenEncoder
from motorec.models.features import ItemFeatures
from motorec.models.losses import (
    bpr_loss,
    contrastive_items,
    contrastive_rows_loss,
    rarity_weights,
    row_sq_norms,
    sq_sum,
)
from motorec.models.motorec_config import MoToRecConfig
from motorec.models.motorec_steps import MoToRecSteps
from motorec.models.tokenizer import MultimodalTokenizer
from motorec.nn.lightgcn import LightGCN, id_rows

__all__ = ["MoToRec", "MoToRecConfig"]


class MoToRec(MoToRecSteps, Recommender):
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
        else:
            # scoring (eval, no gradients): the same tokens without the decoder and the tokenizer losses, a chunk at
            # a time (the full forward's decoder outputs were a 1M-item validation's peak memory)
            scoring = not (self.training or torch.is_grad_enabled())
            latents, codes, outs = (*self.tokenizer.encode_catalog(), {}) if scoring else self.tokenizer.catalog_tokens()
            content = self.content_view(latents, codes)
        emb = self.lightgcn.item_embedding.weight
        # layer 0 = h~ + ID (warm rows only) in one op; the 0/1 mask is exact
        layer0 = torch.addcmul(content, emb, self.warm_mask.to(emb.dtype).unsqueeze(1))
        users, collab = self.lightgcn(self.graph, layer0)
        return users, collab, content, outs

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
            ue, collab_rows, content_rows, outs, cl_valid = self._history_rows(u, p, pn, use_cl)
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
        cold = (~warm).to(content_rows.dtype).unsqueeze(1)
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
                  else collab_rows.sum() * 0.0)
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
