"""MoToRec: sparse-regularized multimodal tokenization for cold-start recommendation (PAPER.md).

Per modality m an RQ-VAE tokenizer turns item features into a quantized code ``z_q^m`` (N_q tokens); a
hierarchical graph encoder fuses content and collaborative signals:

* token level: ``h_i^m = W_m z_q^m + sum_k E_m[k, code_k] + MLP_m(f_m)`` (the token embeddings are optional;
  the feature MLP is the ``feature_residual`` option, off by default: ``h`` then depends on the codes alone);
* source level: per modality a cosine kNN item-item graph on the quantized codes (rebuilt every few epochs)
  and one propagation layer ``(h + A^m h) / 2``; attention over modalities gives ``h~_i``;
* collaborative level: LightGCN over the user-item graph, item layer-0 = ID embedding + ``h~_i``
  (cold items: no ID), final item = readout + ``h~_i`` (warm items: readout only if ``warm_content_skip`` is
  off), final user = readout.

Objectives: BPR + lambda_cl * symmetric InfoNCE(collaborative view, content view)
+ lambda_cold * rarity-weighted BPR on the content-only (cold) embeddings (``rarity_terms="all"`` weights the
first BPR term too)
+ cold_distill * ALDI's alignment of the content-only embeddings' scores to the final embeddings' (detached)
+ lambda_rq * (reconstruction + codebook + commitment) + sparse_weight * sparsity KL
+ lambda_reg * squared norm of the batch's layer-0 embeddings.

Warm items are scored by a pure-ID LightGCN branch (``warm_scorer: id``, the default): its own user and item ID
tables (columns ``[dim:]`` of the two tables, propagated in the same pass), trained by its own BPR term and L2,
nothing shared with the content path, so warm items rank as under LightGCN while cold items are scored by the
content path above; the trainer selects the two parts' epochs apart (:meth:`separable_selection`).
``warm_scorer: joint`` scores warm items by the final embeddings above instead (the paper's single model), and
``sum`` adds both scores. Objective with the branch: the terms above + BPR of the branch.

Scoring: cold items' scores go through one affine map onto the warm items' score distribution
(:class:`~motorec.models.cold.ColdScorer`), so content-only scores compete with collaborative ones on the same
scale. With ``cold_ensemble`` W > 1 (the default) the joint model's scores in eval mode are the mean of its
standardized scores under its current weights and under its weights at the ends of the W - 1 epochs before
(:class:`ScoreSnapshots`, kept in the model's state): a snapshot ensemble over epochs, which averages out the
jumps that code churn gives the content path's cold ranking from one epoch to the next. Training is unchanged.

Parts, each a module found by name: ``tokenizer`` (:class:`~motorec.models.tokenizer.MultimodalTokenizer`),
``token_level`` (:class:`~motorec.models.content.TokenEncoder`), ``item_item``
(:class:`~motorec.models.content.ItemItemEncoder`), ``fusion`` (:class:`~motorec.models.content.SourceAttention`;
None with ``fusion: mean``),
``feature_residual`` (:class:`~motorec.models.features.FeatureEncoder`, option), ``lightgcn``
(:class:`motorec.nn.LightGCN`: user/item ID tables, the ID branch's columns among them, and the collaborative
level) and ``cold``
(:class:`~motorec.models.cold.ColdScorer`).

Rarity amplification (ours, PAPER.md section 2): ``s_i = log(1 + d_max) / log(2 + d_i)``, normalized to mean
1 over the batch's positives, clipped to ``[rarity_min, rarity_max]``, ramped in from 1 over
``rarity_warmup_epochs``.
"""
from __future__ import annotations

import copy
import dataclasses
import re
import warnings
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

from motorec.models.aldi import aldi_distill_losses
from motorec.models.base import EmbeddingScorer, Recommender, bpr_loss, loss_part, row_sq_norms, sq_sum
from motorec.models.cold import gram_and_mean
from motorec.models.content import ItemItemEncoder, SourceAttention, TokenEncoder
from motorec.models.features import FeatureEncoder, ItemFeatures
from motorec.models.tokenizer import MultimodalTokenizer
from motorec.nn.lightgcn import LightGCN

__all__ = ["MoToRec", "ScoreSnapshots", "rarity_weights"]

# state the joint model's scores do not read (decoders: reconstruction loss; EMA codebook sums: codebook updates),
# left out of the snapshots of ScoreSnapshots
_NOT_SCORED = re.compile(r"\.decoder\.|\.ema_embed_sum$")
_ID_TABLES = ("lightgcn.user_embedding.weight", "lightgcn.item_embedding.weight")


class ScoreSnapshots(nn.Module):
    """The joint model's weights at the ends of earlier epochs, oldest first, ``capacity`` at most: the members of
    MoToRec's snapshot ensemble (``model.cold_ensemble`` = capacity + 1). No parameters: the snapshots are the
    module's extra state, so they travel in ``state_dict()``, checkpoints, resume and the trainer's selected
    snapshots.

    A snapshot is ``{"epoch": int, "state": {key: value}}``, ``state`` being what a ``warm_scorer: joint``,
    ``cold_ensemble: 1`` MoToRec of the same catalog loads to score (the ID tables' joint columns, no decoders or
    EMA codebook sums). Snapshots are never modified after they are taken, so copies of a ``state_dict`` may share
    their tensors (:meth:`MoToRec.shared_state_tensors`).
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.members: List[Dict[str, Any]] = []

    def push(self, epoch: int, state: Dict[str, Any]) -> None:
        self.members = (self.members + [{"epoch": int(epoch), "state": state}])[-self.capacity:]

    def get_extra_state(self) -> Dict[str, Any]:
        return {"members": list(self.members)}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        members = state.get("members") if isinstance(state, dict) else None
        if not isinstance(members, list) or not all(
                isinstance(m, dict) and isinstance(m.get("state"), dict) and isinstance(m.get("epoch"), int)
                for m in members):
            raise ValueError("a ScoreSnapshots state must be {'members': [{'epoch': int, 'state': dict}, ...]}")
        if len(members) > self.capacity:
            raise ValueError(f"the state holds {len(members)} snapshots, this model keeps {self.capacity} "
                             "(model.cold_ensemble - 1)")
        self.members = list(members)


def rarity_weights(degree: Tensor, pos: Tensor, *, ramp: float, clip: Tuple[float, float]) -> Tensor:
    """Rarity weight of each positive in a batch.

    ``s_i = log(1 + d_max) / log(2 + d_i)``; normalized to mean 1 over ``pos``; clipped to ``clip``; then
    ``1 + ramp * (s - 1)`` with ``ramp`` in [0, 1] (0: all ones, 1: fully amplified).

    Shapes:
        degree: [num_items] float, pos: [B] int -> [B] float.
    """
    if pos.numel() == 0:
        return degree.new_ones(0)
    d_max = degree.max()
    s = torch.log1p(d_max) / torch.log(2.0 + degree[pos])
    s = s / s.mean()
    s = s.clamp(clip[0], clip[1])
    return 1.0 + float(ramp) * (s - 1.0)


class MoToRec(Recommender):
    """The MoToRec model; see the module docstring. Config: :class:`motorec.config.ModelConfig`.

    Shapes (``D`` = 2 * dim with the ID branch, ``warm_scorer`` "id" or "sum"; dim with "joint"):
        embeddings() -> (users [U, D], items [I, D]); score(users [B]) -> [B, I];
        tokenize() -> {modality: codes [I, num_levels] int64}.
    """

    uses_features = True
    has_tokenizer = True
    default_cold_calibration = 1.0  # the base class's self.cold calibrates cold scores in score()

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
        # "mean" fusion has no parameters (and makes no random draws: the later parts' initial weights differ)
        self.fusion = SourceAttention(c.dim, self.backend).to(dev) if c.fusion == "attention" else None
        self.feature_residual = (FeatureEncoder(feats.dims(), c.content_hidden, c.dim).to(dev)
                                 if c.feature_residual else None)
        # warm_scorer "id"/"sum": the ID tables are [*, 2 * dim], columns [dim:] the pure-ID branch's; LightGCN's
        # propagation acts on every column alike, so one pass gives both models exactly
        self.lightgcn = LightGCN(self.num_users, self.num_items, embedding_dim=c.dim * (2 if self.has_id_branch else 1),
                                 num_layers=c.num_layers, init_std=0.1, backend=self.backend, device=dev,
                                 init=self._id_tables(dev) if self.has_id_branch else None)
        if c.rarity and c.rarity_terms == "content" and c.lambda_cold == 0 and not c.rarity_contrastive:
            warnings.warn("model.rarity is on but weights no term: rarity_terms='content' scales only the "
                          "lambda_cold term, and lambda_cold is 0 (set lambda_cold > 0 or rarity_terms='all')",
                          stacklevel=2)
        # freeze_tokenizer: this epoch's catalog tokens (on_epoch_start); dropped with the base class's caches
        self._frozen_tokens: Optional[Tuple[Dict[str, Tensor], Dict[str, Optional[Tensor]]]] = None
        # warm_scorer "id": the joint model's own final (users, items), warm rows unmasked, from the forward pass
        # that filled the eval cache (read by cold_part_scorer); dropped with the base class's caches
        self._joint_eval: Optional[Tuple[Tensor, Tensor]] = None
        # cold_ensemble > 1: the weights of the last cold_ensemble - 1 epochs (on_epoch_start takes them); the
        # scratch model that scores them and each snapshot's scores are caches, not state
        self.snapshots = ScoreSnapshots(c.cold_ensemble - 1) if c.cold_ensemble > 1 else None
        self.__dict__["_scratch"] = None  # not a submodule: no state, not moved by .to()
        self._member_cache: Dict[int, Tuple[Tensor, Tuple[Tensor, Tensor]]] = {}
        s = torch.log1p(self.item_degree.max()) / torch.log(2.0 + self.item_degree)
        # Rarity gate (option): rare items lean on content, popular ones on their ID (gate in (0, 1]).
        self.register_buffer("id_gate", (1.0 / s).clamp(max=1.0), persistent=False)

    def drop_caches(self) -> None:
        super().drop_caches()
        self._frozen_tokens = None
        self._joint_eval = None

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        # the snapshots' scores and the scratch model live on the old device (snapshots are extra state, which
        # .to() does not move; they are loaded into a scratch model on the model's device when scored)
        self.__dict__["_scratch"] = None
        self._member_cache = {}
        return out

    # ------------------------------------------------------------------ snapshot ensemble (cold_ensemble)
    def shared_state_tensors(self) -> List[Tensor]:
        """The snapshots' tensors (:class:`ScoreSnapshots`): never modified once taken, so copies of this model's
        ``state_dict()`` may share them (the trainer keeps its selected states that way)."""
        if self.snapshots is None:
            return []
        return [t for m in self.snapshots.members for t in _tensors(m["state"])]

    def _scored_state(self) -> Dict[str, Any]:
        """What a ``warm_scorer: joint``, ``cold_ensemble: 1`` copy of this model loads to give the joint model's
        scores (:class:`ScoreSnapshots`): the state without snapshots, decoders and EMA codebook sums, the ID
        tables' joint columns, every tensor a fresh copy."""
        d, out = self.config.dim, {}
        for k, v in self.state_dict().items():
            if k.startswith("snapshots.") or _NOT_SCORED.search(k):
                continue
            if isinstance(v, Tensor):
                out[k] = (v.detach()[:, :d] if k in _ID_TABLES else v.detach()).clone()
            else:
                out[k] = copy.deepcopy(v)
        return out

    def _scratch_model(self) -> "MoToRec":
        """A ``warm_scorer: joint``, ``cold_ensemble: 1`` model of the same catalog and features, in eval mode, into
        which a snapshot is loaded to be scored (built once; its initial weights are never read)."""
        if self._scratch is None:
            cfg = dataclasses.replace(self.config, warm_scorer="joint", cold_ensemble=1, cl_target="joint")
            dev = self.device
            cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
            with warnings.catch_warnings(), torch.random.fork_rng(devices=cuda):  # not the caller's random stream
                warnings.simplefilter("ignore")
                m = type(self)(num_users=self.num_users, num_items=self.num_items, train=self.train_pairs,
                               features=self.tokenizer.features.as_dict(), config=cfg, backend=self.backend)
            for name in self.tokenizer.features.modalities:  # the very feature rows (no second normalization)
                setattr(m.tokenizer.features, f"feat_{name}", self.tokenizer.features[name])
            m.eval()
            self.__dict__["_scratch"] = m
        return self._scratch

    @torch.no_grad()
    def _member_parts(self, member: Dict[str, Any]) -> Tuple[Tensor, Tensor]:
        """One snapshot's standardized joint ``(users [U, dim], items [num_items, dim])`` (cached per snapshot)."""
        key_tensor = member["state"][_ID_TABLES[0]]
        hit = self._member_cache.get(id(key_tensor))
        if hit is not None and hit[0] is key_tensor:
            return hit[1]
        scratch = self._scratch_model()
        missing, unexpected = scratch.load_state_dict(member["state"], strict=False)
        bad = [k for k in missing if not _NOT_SCORED.search(k)] + list(unexpected)
        if bad:
            raise ValueError(f"the snapshot of epoch {member['epoch']} does not fit this model (keys {bad[:3]})")
        users, collab, content, _, _ = scratch._forward_all()
        parts = _standardized(users, scratch._final_items(collab, content))
        self._member_cache[id(key_tensor)] = (key_tensor, parts)
        return parts

    def _ensemble(self, users: Tensor, items: Tensor) -> Tuple[Tensor, Tensor]:
        """The snapshot ensemble of the joint model's ``(users [U, dim], items [num_items, dim])``: ``(users
        [U, n * dim], items [num_items, n * dim])`` whose inner products are the mean over the ``n`` states (the
        current weights and each snapshot) of the joint model's scores standardized over all (user, item) pairs."""
        members = self.snapshots.members if self.snapshots is not None else []
        if not members:
            return users, items
        parts = [_standardized(users, items)] + [self._member_parts(m) for m in members]
        live = {id(m["state"][_ID_TABLES[0]]) for m in members}
        self._member_cache = {k: v for k, v in self._member_cache.items() if k in live}
        n = len(parts)
        return torch.cat([p[0] for p in parts], dim=1) / n, torch.cat([p[1] for p in parts], dim=1)

    # the branch's tables come from a generator of their own, seeded from the process's seed and this constant
    _BRANCH_SEED_OFFSET = 0x5EED_B4A9C4

    def _id_tables(self, dev) -> Tuple[Tensor, Tensor]:
        """The initial ``(users [U, 2 * dim], items [num_items, 2 * dim])`` ID tables of a model with the ID branch.
        Columns ``[:dim]`` are drawn from the global generator exactly as a ``warm_scorer: joint`` model draws its
        tables, so the joint half starts, and (no gradient crossing between the halves, Adam acting per element)
        trains, as that model does under the same seed; the branch's columns come from a generator of their own
        (seeded from the global seed), leaving the global random stream as the joint model's."""
        d = self.config.dim
        joint = [torch.randn(n, d, device=dev) * 0.1 for n in (self.num_users, self.num_items)]
        seed = (torch.cuda.initial_seed() if torch.device(dev).type == "cuda" else torch.initial_seed())
        gen = torch.Generator(device=dev).manual_seed((seed + self._BRANCH_SEED_OFFSET) % (2 ** 63))
        branch = [torch.randn(n, d, device=dev, generator=gen) * 0.1 for n in (self.num_users, self.num_items)]
        return torch.cat([joint[0], branch[0]], dim=1), torch.cat([joint[1], branch[1]], dim=1)

    @property
    def has_id_branch(self) -> bool:
        """Whether a pure-ID LightGCN branch scores warm items (``model.warm_scorer`` "id" or "sum")."""
        return self.config.warm_scorer != "joint"

    def separable_selection(self) -> bool:
        """With ``warm_scorer: id`` warm items are scored by the ID branch's columns alone and cold items by the
        rest, so the trainer selects each part's epoch on its own setting (:meth:`Recommender.separable_selection`).
        """
        return self.config.warm_scorer == "id"

    @torch.no_grad()
    def cold_part_scorer(self) -> EmbeddingScorer:
        """The joint model's own scores of every item (final users [U, dim] . final items [num_items, dim], warm
        items' rows not masked out): the scores a ``warm_scorer: joint`` model would rank by, uncalibrated
        (calibration moves cold scores only, so the warm setting's recall is the same). In eval mode they come
        from the forward pass that fills the eval cache (no second pass after an evaluation); in training mode
        from a fresh one."""
        if not self.separable_selection():
            return super().cold_part_scorer()
        if self.training:
            users, collab, content, _, _ = self._forward_all()
            return EmbeddingScorer(users, self._final_items(collab, content), self.backend)
        if self._cache is None or self._joint_eval is None:  # eval mode: the pass that fills the eval cache
            self._cache = None
            self._eval_embeddings()
        return EmbeddingScorer(*self._joint_eval, self.backend)

    def merge_selected(self, warm_state: Dict[str, Any], cold_state: Dict[str, Any]) -> Dict[str, Any]:
        """``cold_state`` with the ID branch's columns (``[:, dim:]`` of the two ID tables) from ``warm_state``."""
        if not self.separable_selection():
            return super().merge_selected(warm_state, cold_state)
        d, state = self.config.dim, dict(cold_state)
        for key in ("lightgcn.user_embedding.weight", "lightgcn.item_embedding.weight"):
            state[key] = torch.cat([cold_state[key][:, :d], warm_state[key][:, d:]], dim=1)
        return state

    def warm_part_state(self, state: Dict[str, Any]) -> Dict[str, Any]:
        """``state`` without its snapshots (:class:`ScoreSnapshots`): :meth:`merge_selected` reads only the ID
        branch's columns of the warm part's state, and the snapshots score the joint model alone (a shallow copy;
        every other value is ``state``'s own)."""
        if self.snapshots is None or "snapshots._extra_state" not in state:
            return state
        return {**state, "snapshots._extra_state": {"members": []}}

    @property
    def item_emb(self) -> Tensor:
        """[num_items, dim] the joint model's item ID embeddings (cold items' rows are never used); with the ID
        branch, columns ``[:dim]`` of the table."""
        w = self.lightgcn.item_embedding.weight
        return w[:, : self.config.dim] if self.has_id_branch else w

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
        """Rebuild each modality's cosine kNN item-item graph on the current quantized codes (all items,
        cold ones included: they attach to the catalog by similarity); ``latents`` ({m: [num_items, latent]})
        when the caller has just computed them."""
        if latents is None:
            latents = self.tokenizer.encode_catalog()[0]
        self.item_item.rebuild(latents)

    # ------------------------------------------------------------------ embeddings
    def content_view(self, latents: Dict[str, Tensor], codes: Dict[str, Optional[Tensor]],
                     ids: Optional[Tensor] = None) -> Tensor:
        """``h~`` [num_items, dim]: token level, then (optionally) the item-item level, fused by attention.

        With ``ids`` ([num_items, dim], zero rows for cold items) the item-item layer also passes the
        neighbours' ID embeddings: ``(h_i + sum_j A_ij (h_j + e_j)) / 2``; an item's own ID is left out, so a
        warm item's view is built exactly as a cold item's (whose neighbours are found by its features)."""
        return self._fuse(self.token_level(latents, codes), ids)

    def _fuse(self, h: Dict[str, Tensor], ids: Optional[Tensor]) -> Tensor:
        """The content view from the token level's per-modality views ``h`` ({m: [num_items, dim]}): the
        feature residual, the item-item level and the fusion of :meth:`content_view`."""
        if self.feature_residual is not None:
            extra = self.feature_residual.per_modality(self.tokenizer.features.as_dict())
            h = {m: h[m] + extra[m] for m in h}
        if self.config.item_item:
            if not self.item_item.graphs:
                self.rebuild_item_graphs()
            hs = self.item_item(h, ids)
        else:
            hs = [h[m] for m in self.tokenizer.modalities]
        if self.fusion is None:  # model.fusion "mean"
            fused = hs[0]
            for view in hs[1:]:
                fused = fused + view
            return fused if len(hs) == 1 else fused / len(hs)
        fused, _ = self.fusion(hs)
        return fused

    def _forward(self):
        """``(users, collab, content, tokenizer outputs)``: final users, LightGCN item readout, ``h~``."""
        return self._forward_all()[:4]

    def _forward_all(self):
        """:meth:`_forward`'s four values and the ID branch's ``(users [U, dim], items [num_items, dim])``
        readouts (``None`` without it)."""
        c = self.config
        parts = None
        if c.freeze_tokenizer:
            # the tokens as pre-training left them: this epoch's catalog pass when training (on_epoch_start),
            # a fresh one (same weights, so the same values) otherwise; no tokenizer outputs, no tokenizer loss
            frozen = self._frozen_tokens if self.training else None
            latents, codes = frozen if frozen is not None else self.tokenizer.encode_catalog()
            outs = None
        elif self.tokenizer.sampling() and not c.continuous:
            # a sampled step: the token level reads the token cache and the sample's fresh latents directly
            # (TokenEncoder.forward_sampled), never every item's latent
            parts, outs = self.tokenizer.sampled_tokens()
        else:
            latents, codes, outs = self.tokenizer.catalog_tokens()
        # the joint model's ID rows and the branch's: split (one backward concatenation), not two slices (each of
        # whose backwards would fill a zero [num_items, 2 * dim] buffer)
        table = self.lightgcn.item_embedding.weight
        emb, branch_emb = table.split(c.dim, dim=1) if self.has_id_branch else (table, None)
        w = self.warm_mask.to(emb.dtype)  # [num_items] per-row factor of the ID embedding: 0 for cold items
        ids = emb * w.unsqueeze(1) if c.item_item_ids else None
        if parts is not None:
            content = self._fuse(self.token_level.forward_sampled(parts), ids)
        else:
            content = self.content_view(latents, codes, ids)
        if c.rarity_gate:
            w = w * self.id_gate
        if self.training and c.id_dropout > 0:
            w = w * (torch.rand(self.num_items, device=self.device) >= c.id_dropout).to(emb.dtype)
        # layer 0 = h~ + w * ID in one op: the factors are folded into [num_items] values first (0/1 masks are
        # exact), so the sum is the one the [num_items, dim] products used to give, bit for bit
        if c.warm_content_layer0:
            layer0 = torch.addcmul(content, emb, w.unsqueeze(1))
        else:  # warm rows: w * ID alone; cold rows: h~ alone
            layer0 = torch.addcmul(emb * w.unsqueeze(1), content, (~self.warm_mask).to(emb.dtype).unsqueeze(1))
        if not self.has_id_branch:
            users, collab = self.lightgcn(self.graph, layer0)
            return users, collab, content, outs, None
        # the branch's layer 0: warm items' own ID rows (no dropout, no gate), zero rows for cold items
        branch0 = branch_emb * self.warm_mask.to(emb.dtype).unsqueeze(1)
        users, collab = self.lightgcn(self.graph, torch.cat([layer0, branch0], dim=1))
        (users, branch_users), (collab, branch_items) = users.split(c.dim, dim=1), collab.split(c.dim, dim=1)
        return users, collab, content, outs, (branch_users, branch_items)

    def _final_items(self, collab: Tensor, content: Tensor) -> Tensor:
        """Final item embeddings: readout + ``h~`` (warm items: readout only when ``warm_content_skip`` is
        off, since their layer 0 already holds ``h~`` and the second copy pulls them toward pure content).

        Shapes:
            collab, content: [num_items, dim] -> [num_items, dim].
        """
        if self.config.warm_content_skip:
            return collab + content
        return torch.addcmul(collab, content, (~self.warm_mask).to(content.dtype).unsqueeze(1))

    def embeddings(self) -> Tuple[Tensor, Tensor]:
        """Final ``(users [U, D], items [num_items, D])``; ``D`` = J, or J + dim with the ID branch, whose scores
        are then ``<users[:, :J], items[:, :J]> + <users[:, J:], items[:, J:]>``: the joint model's (cold items;
        warm items too with "sum") plus the branch's (warm items; its cold rows are exactly 0). ``J`` = dim in
        training mode; in eval mode, with ``n - 1`` snapshots held (``cold_ensemble`` > 1), ``n * dim``: the
        snapshot ensemble of the joint model (:meth:`_ensemble`)."""
        users, collab, content, _, branch = self._forward_all()
        items = self._final_items(collab, content)
        if not self.training:  # eval mode: the snapshot ensemble (cold_ensemble > 1, once snapshots exist)
            users, items = self._ensemble(users, items)
        if branch is None:
            return users, items
        if self.config.warm_scorer == "id":
            if not self.training and not torch.is_grad_enabled():  # the eval cache's pass (_eval_embeddings)
                self._joint_eval = (users, items)
            items = items * (~self.warm_mask).to(items.dtype).unsqueeze(1)
        return torch.cat([users, branch[0]], dim=1), torch.cat([items, branch[1]], dim=1)

    def cold_embedding(self, content: Tensor) -> Tensor:
        """The final embedding an item gets without ID or edges: readout ``h~ / (L + 1)`` plus ``h~``.

        Shapes:
            content: [N, dim] -> [N, dim].
        """
        return content * self._cold_scale

    @property
    def _cold_scale(self) -> float:
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
        state = _grown_state(self.state_dict(), n)
        if self.snapshots is not None:  # each snapshot scores the new items through its own weights
            state["snapshots._extra_state"] = {"members": [{"epoch": m["epoch"], "state": _grown_state(m["state"], n)}
                                                           for m in self.snapshots.members]}
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
        users, collab, content, outs, branch = self._forward_all()
        items = self._final_items(collab, content)
        # Positives and negatives in one gather per table (each gather's backward fills a [num_items, dim]
        # buffer). index_select, not [] indexing: its backward (index_add_) sums repeated rows in a fixed order,
        # where [] indexing's (index_put_ with accumulate) adds them with atomics on several CPU threads.
        ue = users.index_select(0, u)
        pn, b = torch.cat([p, n]), p.shape[0]
        ip, ineg = items.index_select(0, pn).split([b, n.shape[0]])
        s = self._cold_scale  # the embedding the batch's items would get as cold items: s * h~ (cold_embedding)
        if c.cold_dropout > 0 or c.lambda_cold > 0 or c.cold_distill > 0:
            content_p, content_n = content.index_select(0, pn).split([b, n.shape[0]])
        if c.cold_dropout > 0:
            # Score some positives/negatives as if they were cold (content alone), so that content-only
            # embeddings are trained to compete with warm ones in the same ranking, as at test time.
            dp = torch.rand(p.shape, device=p.device) < c.cold_dropout
            dn = torch.rand(n.shape, device=n.device) < c.cold_dropout
            ip = torch.where(dp.unsqueeze(1), content_p * s, ip)
            ineg = torch.where(dn.unsqueeze(1), content_n * s, ineg)
        w = rarity_weights(self.item_degree, p, ramp=self.rarity_ramp(), clip=(c.rarity_min, c.rarity_max))
        rank = bpr_loss((ue * ip).sum(1), (ue * ineg).sum(1), w if c.rarity_terms == "all" else None)
        total = rank
        parts = {"bpr": loss_part(rank)}
        if c.lambda_cold > 0:
            # scores of the cold embeddings s * h~: s times h~'s scores ([B] values scaled, not [2B, d] rows)
            aux = bpr_loss(s * (ue * content_p).sum(1), s * (ue * content_n).sum(1), w)
            total = total + c.lambda_cold * aux
            parts["bpr_cold"] = loss_part(aux)
        if c.cold_distill > 0:
            # ALDI's alignment terms with this model as its own teacher: the cold embeddings s * h~ of the batch's
            # items learn to score as their final (warm) embeddings do; teacher user and items are detached, so
            # the gradient reaches the content path alone
            d = aldi_distill_losses(ue, ip, ineg, s * content_p, s * content_n)
            distill = c.aldi_gamma * d["rating"] + c.aldi_alpha * d["ranking"] + c.aldi_beta * d["identification"]
            total = total + c.cold_distill * distill
            parts["distill"] = loss_part(distill)
        if c.lambda_cl > 0:
            target = collab if c.cl_target == "joint" else branch[1].detach()
            cl = contrastive_loss(target, content, p, w if c.rarity_contrastive else None, c.tau, c.cl_items)
            total = total + c.lambda_cl * cl
            parts["cl"] = loss_part(cl)
        if branch is not None:
            # the ID branch's own BPR term (plain LightGCN's): its columns get no other gradient but the L2 below
            bu = branch[0].index_select(0, u)
            bp, bn = branch[1].index_select(0, pn).split([b, n.shape[0]])
            rank_id = bpr_loss((bu * bp).sum(1), (bu * bn).sum(1))
            total = total + rank_id
            parts["bpr_id"] = loss_part(rank_id)
        if outs is not None:  # (a frozen tokenizer has no loss in the joint stage)
            rq, rq_parts = self.tokenizer.losses(outs)
            total = total + rq
            parts.update(rq=loss_part(rq), sparse=loss_part(rq_parts["sparse"]))
        # reg_loss of the users' and the warm items' ID rows (a cold item's ID row is never trained): every
        # item row's squared norm, weighed by the 0/1 warm mask, gathered as [2B] values (no [2B, d] gather of
        # the ID table, whose backward would fill another [num_items, d] buffer)
        # (with the ID branch the whole [*, 2 * dim] rows: LightGCN's own L2 on the branch's columns)
        sq = (row_sq_norms(self.lightgcn.item_embedding.weight) * self.warm_mask).index_select(0, pn)
        ue0 = self.lightgcn.user_embedding.weight.index_select(0, u)
        reg = c.lambda_reg * (sq_sum(ue0) + sq.sum()) / max(b, 1)
        total = total + reg
        parts["reg"] = loss_part(reg)
        return total, parts

    def epoch_stats(self) -> Dict[str, float]:
        """What the last :meth:`on_epoch_start` measured, for the epoch's log row: ``churn_<modality>``, the
        fraction of items whose tokens changed (any level) since the previous epoch's refresh, and
        ``churn_<modality>_level0``, whose first-level token did (:meth:`MultimodalTokenizer.code_churn`; absent
        on the first joint epoch and when the catalog is not re-encoded that epoch)."""
        return dict(getattr(self, "_epoch_stats", {}))

    def on_epoch_start(self, epoch: int) -> None:
        """Schedules; the tokenizer's token cache (for its sampled steps) is refreshed from the whole catalog, one
        pass without gradients, and the item-item graphs are rebuilt from the same pass when due."""
        super().on_epoch_start(epoch)
        c = self.config
        if self.snapshots is not None and epoch >= 1:  # the weights at the end of joint epoch `epoch - 1`
            self.snapshots.push(epoch - 1, self._scored_state())
        rebuild = c.item_item and (not self.item_item.graphs or epoch % c.knn_rebuild_every == 0)
        sampling = self.tokenizer.sampling() and not c.freeze_tokenizer
        self._epoch_stats = {}
        self._frozen_tokens = None
        if not (rebuild or sampling or c.freeze_tokenizer):
            return
        latents, codes = self.tokenizer.encode_catalog()
        self._epoch_stats = {f"churn_{m}": v for m, v in self.tokenizer.code_churn(codes).items()}
        if c.freeze_tokenizer:
            self._frozen_tokens = (latents, codes)
        if sampling:
            self.tokenizer.set_cache(latents, codes)
        if rebuild:
            self.rebuild_item_graphs(latents)


def _tensors(obj: Any) -> Iterator[Tensor]:
    """Every tensor in a nest of dicts and lists."""
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _standardized(users: Tensor, items: Tensor) -> Tuple[Tensor, Tensor]:
    """``(users / sd, items)``, ``sd`` the standard deviation of ``users @ items.T`` over all pairs, from the two
    Gram matrices as :meth:`ColdScorer.moments` takes them (:func:`~motorec.models.cold.gram_and_mean`: never the
    score matrix, float64 moments; 1 where the scores are constant; no host read).

    Shapes:
        users [U, d], items [I, d] -> the same."""
    gu, mu = gram_and_mean(users.detach())
    gi, mi = gram_and_mean(items.detach())
    mean = mu @ mi
    sd = ((gu * gi).sum() - mean * mean).clamp_min(0.0).sqrt()
    return users / torch.where(sd > 0, sd, torch.ones_like(sd)).to(users.dtype), items


def _grown_state(state: Dict[str, Any], n: int) -> Dict[str, Any]:
    """A MoToRec state (or a snapshot's) for a catalog grown by ``n`` items: ``n`` zero rows appended to the item
    ID table, the item-item graphs emptied (rebuilt over the grown catalog when next needed)."""
    state = dict(state)
    key = "lightgcn.item_embedding.weight"
    state[key] = torch.cat([state[key], state[key].new_zeros(n, state[key].shape[1])])
    state["item_item._extra_state"] = {}
    return state


def contrastive_loss(collab: Tensor, content: Tensor, pos: Tensor, weights: Optional[Tensor], tau: float,
                     max_items: int) -> Tensor:
    """Symmetric InfoNCE between the collaborative and content views of the batch's distinct positive items,
    in-batch negatives; ``weights`` (the positives' rarity weights, a function of the item) renormalized to
    mean 1 over the items used.

    Fixed shapes, no ``unique`` (a host read): ``max_items`` rows are taken by ``topk`` of a random key that
    ranks every positive item above every other item, so with at most ``max_items`` distinct positives this is
    exactly InfoNCE over all of them (the padding rows and columns are switched off by a weight of 0 and a
    -1e4 logit, whose exponential is exactly 0), and with more it is over a uniform random subset of them.

    Shapes:
        collab, content: [num_items, d], pos: [B], weights: optional [B] -> scalar.
    """
    n = collab.shape[0]
    if pos.numel() == 0:
        return collab.sum() * 0.0
    present = torch.zeros(n, dtype=collab.dtype, device=pos.device).index_fill_(0, pos, 1.0)
    key = torch.rand(n, device=pos.device, dtype=collab.dtype) + 2.0 * present
    top, items = torch.topk(key, min(max_items, n))
    valid = (top >= 2.0).to(collab.dtype)  # [C]: a positive item, not padding
    a = torch.nn.functional.normalize(collab.index_select(0, items), dim=1)
    c = torch.nn.functional.normalize(content.index_select(0, items), dim=1)
    logits = a @ c.t() / tau
    pad = ((valid - 1.0) * 1e4).unsqueeze(0)  # added to every row: a padding column is never a negative
    target = torch.arange(items.numel(), device=pos.device)
    la = torch.nn.functional.cross_entropy(logits + pad, target, reduction="none")
    lb = torch.nn.functional.cross_entropy(logits.t() + pad, target, reduction="none")
    w = valid
    if weights is not None:
        per_item = torch.zeros(n, dtype=weights.dtype, device=pos.device).index_copy_(0, pos, weights)
        w = valid * per_item[items].to(valid.dtype)
        w = w * (valid.sum() / w.sum())  # mean 1 over the items used
    return (0.5 * (la + lb) * w).sum() / valid.sum()
