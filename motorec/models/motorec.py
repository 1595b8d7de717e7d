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
+ lambda_rq * (reconstruction + codebook + commitment) + sparse_weight * sparsity KL
+ lambda_reg * squared norm of the batch's layer-0 embeddings.

Scoring: cold items' scores go through one affine map onto the warm items' score distribution (see
:meth:`MoToRec.score`), so content-only scores compete with collaborative ones on the same scale.

Rarity amplification (ours, PAPER.md section 2): ``s_i = log(1 + d_max) / log(2 + d_i)``, normalized to mean
1 over the batch's positives, clipped to ``[rarity_min, rarity_max]``, ramped in from 1 over
``rarity_warmup_epochs``.
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from motorec import ops
from motorec.graph import Graph
from motorec.models.base import Recommender, _f, bpr_loss, info_nce
from motorec.models.baselines import _FeatureMixin

__all__ = ["MoToRec", "rarity_weights"]


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


class _Attention(nn.Module):
    """Attention over sources: ``a_m = softmax_m(q . tanh(W h^m + b))``; ``h~ = sum_m a_m h^m``.

    Shapes:
        hs: [M, N, d] -> ([N, d], weights [N, M]).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.query = nn.Parameter(torch.randn(dim) / math.sqrt(dim))

    def forward(self, hs: Tensor) -> Tuple[Tensor, Tensor]:
        logits = torch.tanh(self.proj(hs)) @ self.query  # [M, N]
        w = torch.softmax(logits, dim=0)
        return (w.unsqueeze(-1) * hs).sum(0), w.t()


class MoToRec(_FeatureMixin, Recommender):
    """The MoToRec model; see the module docstring. Config: :class:`motorec.config.ModelConfig`.

    Shapes:
        embeddings() -> (users [U, dim], items [I, dim]); score(users [B]) -> [B, I];
        tokenize() -> {modality: codes [I, num_levels] int64}.
    """

    uses_features = True
    has_tokenizer = True

    def __init__(self, *, features: Dict[str, Tensor], **kw) -> None:
        super().__init__(features=features, **kw)
        from motorec.nn.rqvae import RQVAE

        self._register_features(features)
        if not self._modalities:
            raise ValueError("MoToRec needs at least one feature modality; the dataset has none")
        c = self.config
        dev = self.device
        self.tokenizers = nn.ModuleDict({
            m: RQVAE(input_dim=features[m].shape[1], latent_dim=c.latent_dim, hidden_dims=list(c.hidden_dims),
                     num_levels=c.num_levels, codebook_size=c.codebook_size, commitment=c.commitment,
                     sparse_weight=c.sparse_weight, sparse_mode=c.sparse_mode, temperature=c.sparse_temperature,
                     continuous=c.continuous, ema=c.ema, kmeans_init=c.kmeans_init, backend=self.backend)
            for m in self._modalities
        }).to(dev)
        self.token_proj = nn.ModuleDict({m: nn.Linear(c.latent_dim, c.dim) for m in self._modalities}).to(dev)
        self.use_tokens = c.token_embeddings and not c.continuous
        if self.use_tokens:
            self.token_emb = nn.ModuleDict({
                m: nn.Embedding(c.num_levels * c.codebook_size, c.dim) for m in self._modalities}).to(dev)
            for e in self.token_emb.values():
                nn.init.normal_(e.weight, std=0.01)
        self.fusion = _Attention(c.dim).to(dev)
        if c.feature_residual:
            self.feature_mlp = nn.ModuleDict({
                m: nn.Sequential(nn.Linear(features[m].shape[1], c.content_hidden), nn.LeakyReLU(0.1),
                                 nn.Linear(c.content_hidden, c.dim)) for m in self._modalities}).to(dev)
        self.user_emb = nn.Parameter(torch.randn(self.num_users, c.dim, device=dev) * 0.1)
        self.item_emb = nn.Parameter(torch.randn(self.num_items, c.dim, device=dev) * 0.1)
        self.item_graphs: Dict[str, Graph] = {}
        # (eval user embeddings it was computed from, global score moments): see _global_score_moments
        self._moments: Optional[Tuple[Tensor, tuple]] = None
        # fixed by the training data; counted once here, not per score() call (a device sync on GPU)
        self._num_cold = int((~self.warm_mask).sum())
        if c.rarity and c.rarity_terms == "content" and c.lambda_cold == 0 and not c.rarity_contrastive:
            warnings.warn("model.rarity is on but weights no term: rarity_terms='content' scales only the "
                          "lambda_cold term, and lambda_cold is 0 (set lambda_cold > 0 or rarity_terms='all')",
                          stacklevel=2)
        s = torch.log1p(self.item_degree.max()) / torch.log(2.0 + self.item_degree)
        # Rarity gate (option): rare items lean on content, popular ones on their ID (gate in (0, 1]).
        self.register_buffer("id_gate", (1.0 / s).clamp(max=1.0), persistent=False)

    # ------------------------------------------------------------------ tokenizer
    def _normalized(self, m: str, items: Optional[Tensor] = None) -> Tensor:
        f = getattr(self, f"feat_{m}")
        if items is not None:
            f = f[items]
        return nn.functional.normalize(f, dim=1)

    def rq_losses(self, items: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, float], Dict[str, object]]:
        """Tokenizer losses (summed over modalities) and each modality's RQ-VAE output, on ``items``
        (default: all items). Returns ``(lambda_rq * (rec + codebook + commitment) + sparse_weight * sparsity,
        parts, outputs)``."""
        c = self.config
        rec = cb = com = sp = 0.0
        outs = {}
        for m in self._modalities:
            out = self.tokenizers[m](self._normalized(m, items))
            outs[m] = out
            rec = rec + out.losses.reconstruction
            cb = cb + out.losses.codebook
            com = com + out.losses.commitment
            sp = sp + out.losses.sparsity
        total = c.lambda_rq * (rec + cb + com) + c.sparse_weight * sp
        parts = {"rec": _f(rec), "codebook": _f(cb), "commit": _f(com), "sparse": _f(sp)}
        return total, parts, outs

    def pretrain_loss(self, items: Tensor) -> Tuple[Tensor, Dict[str, float]]:
        """Tokenizer-only loss on a batch of items (the pre-training stage)."""
        total, parts, _ = self.rq_losses(items)
        return total, parts

    @torch.no_grad()
    def tokenize(self) -> Dict[str, Tensor]:
        """Every item's semantic IDs per modality.

        Shapes:
            -> {modality: [num_items, num_levels] int64}. Raises ValueError for a continuous model.
        """
        if self.config.continuous:
            raise ValueError("a continuous MoToRec (model.continuous=true) has no tokens to export")
        was = self.training
        self.eval()
        try:
            return {m: self.tokenizers[m](self._normalized(m)).codes.long() for m in self._modalities}
        finally:
            self.train(was)

    # ------------------------------------------------------------------ graph encoder
    def _token_level(self, outs) -> Dict[str, Tensor]:
        h = {}
        c = self.config
        for m in self._modalities:
            z = outs[m].z_e if c.continuous else outs[m].z_q
            hm = self.token_proj[m](z)
            if self.use_tokens:
                offset = torch.arange(c.num_levels, device=z.device) * c.codebook_size
                hm = hm + self.token_emb[m](outs[m].codes.long() + offset).sum(1)
            if c.feature_residual:
                hm = hm + self.feature_mlp[m](self._normalized(m))
            h[m] = hm
        return h

    @torch.no_grad()
    def rebuild_item_graphs(self) -> None:
        """Rebuild each modality's cosine kNN item-item graph on the current quantized codes (all items,
        cold ones included: they attach to the catalog by similarity)."""
        from motorec.nn.knn import knn_graph

        was = self.training
        self.eval()
        try:
            for m in self._modalities:
                out = self.tokenizers[m](self._normalized(m))
                z = out.z_e if self.config.continuous else out.z_q
                self.item_graphs[m] = knn_graph(z.float(), k=min(self.config.knn_k, max(self.num_items - 1, 1)))
        finally:
            self.train(was)

    def content_view(self, outs, ids: Optional[Tensor] = None) -> Tensor:
        """``h~`` [num_items, dim]: token level, then (optionally) the item-item level, fused by attention.

        With ``ids`` ([num_items, dim], zero rows for cold items) the item-item layer also passes the
        neighbours' ID embeddings: ``(h_i + sum_j A_ij (h_j + e_j)) / 2``; an item's own ID is left out, so a
        warm item's view is built exactly as a cold item's (whose neighbours are found by its features)."""
        h = self._token_level(outs)
        if self.config.item_item:
            if not self.item_graphs:
                self.rebuild_item_graphs()
            if ids is None:
                hs = [ops.propagate(self.item_graphs[m], h[m], 1, backend=self.backend) for m in self._modalities]
            else:
                hs = [0.5 * (h[m] + ops.spmm(self.item_graphs[m], h[m] + ids, backend=self.backend))
                      for m in self._modalities]
        else:
            hs = [h[m] for m in self._modalities]
        fused, _ = self.fusion(torch.stack(hs))
        return fused

    def _forward(self, items_for_rq: Optional[Tensor] = None):
        c = self.config
        outs = {m: self.tokenizers[m](self._normalized(m)) for m in self._modalities}
        id_part = self.item_emb * self.warm_mask.unsqueeze(1)
        content = self.content_view(outs, id_part if c.item_item_ids else None)
        if c.rarity_gate:
            id_part = id_part * self.id_gate.unsqueeze(1)
        if self.training and c.id_dropout > 0:
            keep = (torch.rand(self.num_items, device=self.device) >= c.id_dropout).float()
            id_part = id_part * keep.unsqueeze(1)
        x = torch.cat([self.user_emb, id_part + content])
        out = ops.propagate(self.graph, x, c.num_layers, backend=self.backend)
        users, collab = out[: self.num_users], out[self.num_users:]
        return users, collab, content, outs

    def _final_items(self, collab: Tensor, content: Tensor) -> Tensor:
        """Final item embeddings: readout + ``h~`` (warm items: readout only when ``warm_content_skip`` is
        off, since their layer 0 already holds ``h~`` and the second copy pulls them toward pure content).

        Shapes:
            collab, content: [num_items, dim] -> [num_items, dim].
        """
        if self.config.warm_content_skip:
            return collab + content
        return collab + content * (~self.warm_mask).unsqueeze(1).to(content.dtype)

    def embeddings(self) -> Tuple[Tensor, Tensor]:
        users, collab, content, _ = self._forward()
        return users, self._final_items(collab, content)

    def score(self, users: Tensor) -> Tensor:
        """Scores of every item, cold items' scores calibrated onto the warm items' scale.

        With ``a = cold_calibration`` (in [0, 1]), ``d = cold_score_shift`` and mean/std taken over
        ``cold_calibration_scope``:

        * ``"global"`` (default): over every (user, item) pair of the catalog, warm items and cold items
          separately, so one affine map is applied to all cold scores and each user's cold scores keep
          their level relative to other users';
        * ``"user"``: over each user's own scores (every user's cold scores get the warm spread);

        ``s_c <- (1 - a) s_c + a ((s_c - mean_c) / std_c * std_w + mean_w) - d * std_w``.

        Why: a warm item's embedding carries a collaborative part (largely popularity) that a cold item's
        content-only embedding cannot have, so raw cold scores live on another scale than warm ones and
        whether cold items reach a top-K list would depend on that scale, not on their content. ``a = 1,
        d = 0`` scores cold items as a random warm item is scored in distribution; ``d > 0`` lowers them
        (a content-only score is a noisier guess). Only which items have training interactions is used,
        never validation or test data.

        Shapes:
            users: [B] int -> [B, num_items] float.
        """
        s = super().score(users)
        c = self.config
        a, shift = c.cold_calibration, c.cold_score_shift
        cold = ~self.warm_mask
        n_cold = self._num_cold
        if (a <= 0 and shift == 0) or n_cold < 2 or self.num_items - n_cold < 2:
            return s
        sc = s[:, cold]
        if c.cold_calibration_scope == "global":
            (mw, sw), (mc, sdc) = self._global_score_moments()
        else:
            w = s[:, ~cold]
            mw, sw = w.mean(1, keepdim=True), w.std(1, keepdim=True)
            mc, sdc = sc.mean(1, keepdim=True), sc.std(1, keepdim=True)
        if a > 0:
            sc = (1.0 - a) * sc + a * ((sc - mc) / sdc.clamp_min(1e-12) * sw + mw)
        s[:, cold] = sc - shift * sw
        return s

    def _global_score_moments(self) -> Tuple[Tuple[Tensor, Tensor], Tuple[Tensor, Tensor]]:
        """Mean and std of ``u . i`` over all users and the warm items, and over all users and the cold items,
        without forming the score matrix: ``E[s] = mean(u) . mean(i)``, ``E[s^2] = <U^T U, I^T I> / (|U||I|)``
        in float64 (O((|U| + |I|) d^2)). Cached with the eval-mode embeddings."""
        u, items = self._eval_embeddings()
        if self._moments is not None and self._moments[0] is u:
            return self._moments[1]
        gu, mu = _gram_and_mean(u)
        out = []
        for sel in (self.warm_mask, ~self.warm_mask):
            gi, mi = _gram_and_mean(items, sel)
            mean = mu @ mi
            var = ((gu * gi).sum() - mean * mean).clamp_min(0.0)
            out.append((mean.to(items.dtype), var.sqrt().to(items.dtype)))
        result = (out[0], out[1])
        if not self.training:
            self._moments = (u, result)
        return result

    def cold_embedding(self, content: Tensor) -> Tensor:
        """The final embedding an item gets without ID or edges: readout ``h~ / (L + 1)`` plus ``h~``.

        Shapes:
            content: [N, dim] -> [N, dim].
        """
        return content * (1.0 + 1.0 / (self.config.num_layers + 1))

    # ------------------------------------------------------------------ brand-new items
    @torch.no_grad()
    def with_new_items(self, features: Dict[str, Tensor]) -> "MoToRec":
        """A copy of this trained model whose catalog also holds ``N`` brand-new items, given by their features
        alone; ``self`` is left as it is.

        The new items get ids ``num_items .. num_items + N - 1`` and are cold items in every sense: no
        interactions, no ID embedding; each is embedded through its tokens (the trained tokenizers) and its
        item-item neighbours, and scored with the same cold-score calibration. This is exactly the model
        one would have had with these rows in the feature files from the start (trained weights, same user-item
        graph), except that each modality's item-item kNN graph is rebuilt over the grown catalog on the
        current codes (as training does every ``knn_rebuild_every`` epochs): existing items can gain new
        neighbours, so their scores may move slightly too. The copy is in eval mode, on ``self``'s device.

        Args:
            features: ``{modality: [N, d_m]}`` for every modality the model was trained on, with the trained
                widths (raw features, as in the dataset's ``*_feat.npy``: the model L2-normalizes them).

        Shapes:
            features: {m: [N, d_m]} -> model with num_items + N items; score(users [B]) -> [B, num_items + N].
        """
        if not isinstance(features, dict) or sorted(features) != self._modalities:
            got = sorted(features) if isinstance(features, dict) else type(features).__name__
            raise ValueError(f"features must map each trained modality {self._modalities} to a tensor, got {got}")
        n = None
        new_feats = {}
        for m in self._modalities:
            f = features[m]
            if not isinstance(f, Tensor):
                f = torch.as_tensor(f)
            old = getattr(self, f"feat_{m}")
            if f.dim() != 2 or f.shape[1] != old.shape[1]:
                raise ValueError(f"features[{m!r}] must be [N, {old.shape[1]}] (the trained width), got "
                                 f"{tuple(f.shape)}")
            if n is None:
                n = f.shape[0]
            elif f.shape[0] != n:
                raise ValueError(f"every modality must have the same number of new items: features[{m!r}] has "
                                 f"{f.shape[0]} rows, the first modality {n}")
            if not f.is_floating_point():
                f = f.float()
            if not bool(torch.isfinite(f).all()):
                raise ValueError(f"features[{m!r}] holds NaN or Inf values")
            new_feats[m] = torch.cat([old, f.to(device=old.device, dtype=old.dtype)])
        if not n:
            raise ValueError("features hold no new items (0 rows)")
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):  # init draws: not the caller's RNG
            warnings.simplefilter("ignore")  # config warnings were given when this model was built
            grown = type(self)(num_users=self.num_users, num_items=self.num_items + n, train=self.train_pairs,
                               features=new_feats, config=self.config, backend=self.backend)
        state = self.state_dict()
        state["item_emb"] = torch.cat([state["item_emb"], state["item_emb"].new_zeros(n, state["item_emb"].shape[1])])
        grown.load_state_dict(state)
        grown.epoch = self.epoch
        grown.eval()
        grown.rebuild_item_graphs()
        return grown

    # ------------------------------------------------------------------ training
    def rarity_ramp(self) -> float:
        c = self.config
        if not c.rarity:
            return 0.0
        if c.rarity_warmup_epochs == 0:
            return 1.0
        return min(1.0, self.epoch / c.rarity_warmup_epochs)

    def loss(self, batch: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, float]]:
        c = self.config
        u, p, n = batch["users"], batch["pos"], batch["neg"]
        users, collab, content, outs = self._forward()
        items = self._final_items(collab, content)
        ue = users[u]
        ip, ineg = items[p], items[n]
        if c.cold_dropout > 0 or c.lambda_cold > 0:
            # the embeddings the batch's items would get as cold items (content alone)
            cold_p, cold_n = self.cold_embedding(content[p]), self.cold_embedding(content[n])
        if c.cold_dropout > 0:
            # Score some positives/negatives as if they were cold (content alone), so that content-only
            # embeddings are trained to compete with warm ones in the same ranking, as at test time.
            dp = torch.rand(p.shape, device=p.device) < c.cold_dropout
            dn = torch.rand(n.shape, device=n.device) < c.cold_dropout
            ip = torch.where(dp.unsqueeze(1), cold_p, ip)
            ineg = torch.where(dn.unsqueeze(1), cold_n, ineg)
        w = rarity_weights(self.item_degree, p, ramp=self.rarity_ramp(), clip=(c.rarity_min, c.rarity_max))
        rank = bpr_loss((ue * ip).sum(1), (ue * ineg).sum(1), w if c.rarity_terms == "all" else None)
        total = rank
        parts = {"bpr": _f(rank)}
        if c.lambda_cold > 0:
            aux = bpr_loss((ue * cold_p).sum(1), (ue * cold_n).sum(1), w)
            total = total + c.lambda_cold * aux
            parts["bpr_cold"] = _f(aux)
        if c.lambda_cl > 0:
            uniq, first = _unique_first(p)
            cw = None
            if c.rarity_contrastive:
                cw = w[first]
                cw = cw / cw.mean()
            cl = info_nce(collab[uniq], content[uniq], c.tau, cw)
            total = total + c.lambda_cl * cl
            parts["cl"] = _f(cl)
        rq = cb = com = sp = rec = 0.0
        for m in self._modalities:
            lo = outs[m].losses
            rec = rec + lo.reconstruction
            cb = cb + lo.codebook
            com = com + lo.commitment
            sp = sp + lo.sparsity
        rq = c.lambda_rq * (rec + cb + com) + c.sparse_weight * sp
        total = total + rq
        parts.update(rq=_f(rq), sparse=_f(sp))
        reg = self.reg_loss(self.user_emb[u], self.item_emb[p] * self.warm_mask[p].unsqueeze(1),
                            self.item_emb[n] * self.warm_mask[n].unsqueeze(1))
        total = total + reg
        parts["reg"] = _f(reg)
        return total, parts

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        if self.config.item_item and (not self.item_graphs or epoch % self.config.knn_rebuild_every == 0):
            self.rebuild_item_graphs()

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self.item_graphs = {m: g.to(self.device) for m, g in self.item_graphs.items()}
        return out

    # ------------------------------------------------------------------ checkpoint state
    def extra_state(self) -> Dict[str, Tensor]:
        st = {}
        for m, g in self.item_graphs.items():
            st[f"knn.{m}.rowptr"] = g.rowptr
            st[f"knn.{m}.col"] = g.col
            st[f"knn.{m}.val"] = g.val
        return st

    def load_extra_state(self, state: Dict[str, Tensor]) -> None:
        self.item_graphs = {}
        for m in self._modalities:
            if f"knn.{m}.rowptr" in state:
                self.item_graphs[m] = Graph.from_csr(state[f"knn.{m}.rowptr"].to(self.device),
                                                     state[f"knn.{m}.col"].to(self.device),
                                                     state[f"knn.{m}.val"].to(self.device), self.num_items)
        self._cache = None


def _gram_and_mean(x: Tensor, rows: Optional[Tensor] = None, chunk: int = 65536) -> Tuple[Tensor, Tensor]:
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


def _unique_first(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Unique values of ``x`` and, for each, the index of one occurrence (the first)."""
    uniq, inv = torch.unique(x, return_inverse=True)
    idx = torch.arange(x.numel(), device=x.device)
    first = torch.full((uniq.numel(),), x.numel(), dtype=torch.long, device=x.device).scatter_reduce(
        0, inv, idx, reduce="amin")
    return uniq, first
