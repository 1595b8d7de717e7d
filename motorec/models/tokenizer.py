"""MoToRec's multimodal tokenizer (PAPER.md section 1): one RQ-VAE per modality over the L2-normalized item
features, and the tokenizer's share of the loss."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from motorec.config import ModelConfig
from motorec.models.base import weights_key
from motorec.models.content import SampledTokens, token_sum
from motorec.models.features import ItemFeatures
from motorec.nn.rqvae import RQVAE, RQVAEOutput

__all__ = ["MultimodalTokenizer"]


class MultimodalTokenizer(nn.Module):
    """Per-modality :class:`motorec.nn.RQVAE` tokenizers over an :class:`ItemFeatures` part.

    Args:
        features: the item features (modalities in sorted order).
        config: the model config (tokenizer fields: ``latent_dim``, ``hidden_dims``, ``num_levels``,
            ``codebook_size``, ``commitment``, ``sparse_*``, ``continuous``, ``ema``, ``kmeans_init``,
            ``lambda_rq``).
        backend: backend of the quantizer op.

    Shapes:
        forward(items [B] or None) -> {m: RQVAEOutput over B (or all) items};
        latents(outs) -> {m: [B, latent_dim]}; tokenize() -> {m: [num_items, num_levels] int64}.
    """

    def __init__(self, features: ItemFeatures, config: ModelConfig, backend: str = "auto") -> None:
        super().__init__()
        c = config
        self.config = config
        self.features = features
        self.modalities = features.modalities
        self.rqvae = nn.ModuleDict({
            m: RQVAE(input_dim=d, latent_dim=c.latent_dim, hidden_dims=list(c.hidden_dims), num_levels=c.num_levels,
                     codebook_size=c.codebook_size, commitment=c.commitment, sparse_weight=c.sparse_weight,
                     temperature=c.sparse_temperature, continuous=c.continuous,
                     ema=c.ema, kmeans_init=c.kmeans_init, backend=backend)
            for m, d in features.dims().items()
        })
        self.sample_size = int(c.tokenizer_sample)
        # tokens (or continuous latents) of the items outside a sampled step's sample; None until training needs it
        self._cache: Optional[Dict[str, Tensor]] = None
        # every item's tokens at the last code_churn() call, to count what changed since (not saved in checkpoints)
        self._last_codes: Optional[Dict[str, Tensor]] = None
        # the last encode_catalog result and what it was computed from, reused while nothing changed
        self._encoded: Optional[Tuple[tuple, Dict[str, Tensor], Dict[str, Optional[Tensor]], tuple]] = None

    def forward(self, items: Optional[Tensor] = None) -> Dict[str, RQVAEOutput]:
        if self.training:  # EMA and reseeding move the codebooks through .data, unseen by version counters
            self._encoded = None
        normalized = self.features.is_normalized
        return {m: self.rqvae[m](self.features.normalized(m, items), normalized=normalized) for m in self.modalities}

    @torch.no_grad()
    def encode_catalog(self, chunk: int = 65536) -> Tuple[Dict[str, Tensor], Dict[str, Optional[Tensor]]]:
        """Every item's latent and tokens from the current weights, without gradients, decoder or quantizer
        statistics updates, ``chunk`` items at a time.

        While the parameters and buffers (storage and version counter), ``chunk``, the autocast state and the last
        result are unchanged, the last result's tensors are returned again: validation, the snapshot ensemble and
        the epoch's catalog pass ask at the same weights. A training :meth:`forward` forgets it (EMA codebooks move
        through ``.data``, which no version counter sees); callers must not modify the result in place.

        Shapes:
            -> ({m: [num_items, latent_dim]}, {m: [num_items, num_levels] int64, or None when continuous}).
        """
        was = self.training
        self.eval()  # no dropout in the encoder (and, as every call does, the token cache is dropped)
        try:
            key = (chunk, weights_key(self))
            if self._encoded is not None and self._encoded[0] == key and all(
                    t._version == v for t, v in self._encoded[3]):
                return dict(self._encoded[1]), dict(self._encoded[2])
            self._encoded = None  # not held while the new result is computed
            lat: Dict[str, Tensor] = {}
            codes: Dict[str, Optional[Tensor]] = {}
            n = self.features.num_items
            for m in self.modalities:
                self._encode_modality(m, n, chunk, lat, codes)
        finally:
            self.train(was)
        out = [t for t in (*lat.values(), *codes.values()) if t is not None]
        # tensors made under torch.inference_mode track no version: such a result is not kept
        if not any(t.is_inference() for t in out):
            self._encoded = (key, lat, codes, tuple((t, t._version) for t in out))
        return dict(lat), dict(codes)

    def _encode_modality(self, m: str, n: int, chunk: int, lat: Dict[str, Tensor],
                         codes: Dict[str, Optional[Tensor]]) -> None:
        rq, norm = self.rqvae[m], self.features.is_normalized
        parts_z, parts_c = [], []
        for s in range(0, n, chunk):
            x = self.features.normalized(m, torch.arange(s, min(s + chunk, n), device=self.features[m].device))
            if self.config.continuous:
                parts_z.append(rq.latent(x, normalized=norm))
            else:
                z_q, c = rq.quantize(x, normalized=norm)
                parts_z.append(z_q)
                parts_c.append(c.long())
        lat[m] = torch.cat(parts_z)
        codes[m] = torch.cat(parts_c) if parts_c else None

    @torch.no_grad()
    def code_churn(self, codes: Dict[str, Optional[Tensor]]) -> Dict[str, float]:
        """Fraction of items whose token tuple differs from the one they had at the previous call (key ``m``), and
        whose first-level (coarsest) token does (key ``m + "_level0"``), per modality (``{}`` on the first call,
        for a continuous model, or after a catalog-size change); ``codes`` is an :meth:`encode_catalog` result.
        The trainer logs it once per epoch (``churn_<key>``): how settled the codes are that the graph encoder
        builds on. One host read per modality.

        Shapes:
            codes: {m: [num_items, num_levels] int64 or None} -> {key: float in [0, 1]}.
        """
        out: Dict[str, float] = {}
        prev = self._last_codes
        if all(codes.get(m) is not None for m in self.modalities):
            if prev is not None:
                for m in self.modalities:
                    if prev[m].shape == codes[m].shape:
                        changed = prev[m] != codes[m]
                        both = torch.stack([changed.any(1), changed[:, 0]]).float().mean(1).tolist()
                        out[m], out[m + "_level0"] = both
            self._last_codes = {m: codes[m].clone() for m in self.modalities}
        return out

    def sampling(self) -> bool:
        """Whether a training step runs the tokenizer on a sample (``0 < tokenizer_sample < num_items``)."""
        return self.training and 0 < self.sample_size < self.features.num_items

    def catalog_tokens(self) -> Tuple[Dict[str, Tensor], Dict[str, Optional[Tensor]], Dict[str, RQVAEOutput]]:
        """``(latents, codes, tokenizer outputs that carry the tokenizer losses)`` for the whole catalog.

        When :meth:`sampling`, the tokenizer runs on ``tokenizer_sample`` items drawn uniformly without repeats
        and every other item keeps its cached tokens (:meth:`sampled`); otherwise on the whole catalog.

        Shapes:
            -> ({m: [num_items, latent]}, {m: [num_items, L] int64 or None}, {m: RQVAEOutput}).
        """
        if self.sampling():
            return self.sampled(*self._draw_sample())
        outs = self()
        return self.latents(outs), {m: o.codes for m, o in outs.items()}, outs

    def sampled_tokens(self) -> Tuple[Dict[str, SampledTokens], Dict[str, RQVAEOutput]]:
        """A sampled step's tokenizer pass (:meth:`sampling` must hold, discrete tokens only): the tokenizer
        runs on ``tokenizer_sample`` items drawn uniformly without repeats, their fresh tokens are written to the
        cache, and each modality's state is handed on as :class:`SampledTokens` (what
        :meth:`TokenEncoder.forward_sampled` reads), with the outputs that carry the tokenizer losses.
        :meth:`catalog_tokens` is the same step with every item's latent materialized.

        Shapes:
            -> ({m: SampledTokens(codes [N, L], items [M], fresh [M, latent], codebooks [L, K, latent])},
            {m: RQVAEOutput over the M items}).
        """
        if not self.sampling() or self.config.continuous:
            raise RuntimeError("sampled_tokens() needs a sampling step (training, 0 < tokenizer_sample < num_items) "
                               "of a discrete (not continuous) tokenizer")
        return self._sampled_parts(*self._draw_sample())

    def rows_tokens(self, rows: Tensor
                    ) -> Tuple[Dict[str, Tensor], Dict[str, Optional[Tensor]], Dict[str, RQVAEOutput]]:
        """The latents and tokens of the items ``rows`` only, for a step over the batch's neighbourhoods
        (``train.propagation: history``): :meth:`catalog_tokens`' rows ``rows``, without any per-item work
        on the rest of the catalog.

        When :meth:`sampling`, the tokenizer runs on its uniform sample as in :meth:`sampled` (its outputs carry
        the tokenizer losses; the cache takes its fresh tokens); a row in the sample gets its fresh latent, the
        others the codewords of their cached tokens (detached; ``z_e`` from the cache when continuous).
        Otherwise the tokenizer runs on ``rows``.

        Shapes:
            rows: [R] int64 distinct -> ({m: [R, latent]}, {m: [R, L] int64 or None}, {m: RQVAEOutput}).
        """
        cont = self.config.continuous
        if not self.sampling():
            outs = self(rows)
            return self.latents(outs), {m: None if cont else outs[m].codes.long() for m in self.modalities}, outs
        items, cache = self._draw_sample(catalog_free=True)
        outs = self(items)
        fresh = self.latents(outs)
        ordered, order = items.sort()
        at = torch.searchsorted(ordered, rows).clamp_(max=max(items.numel() - 1, 0))
        hit = (ordered.index_select(0, at) == rows).unsqueeze(1)
        src = order.index_select(0, at)
        lat: Dict[str, Tensor] = {}
        codes: Dict[str, Optional[Tensor]] = {}
        for m in self.modalities:
            if cont:
                z = cache[m].index_select(0, rows).to(fresh[m].dtype)
                cache[m].index_copy_(0, items, fresh[m].detach())
                codes[m] = None
            else:
                cache[m].index_copy_(0, items, outs[m].codes.long())
                codes[m] = cache[m].index_select(0, rows)
                cb = self.rqvae[m].quantizer.codebooks.detach().to(fresh[m].dtype)
                offset = torch.arange(cb.shape[0], device=rows.device) * cb.shape[1]
                z = token_sum(cb.reshape(-1, cb.shape[2]), codes[m] + offset)
            lat[m] = torch.where(hit, fresh[m].index_select(0, src), z)
        return lat, codes, outs

    def _draw_sample(self, catalog_free: bool = False) -> Tuple[Tensor, Dict[str, Tensor]]:
        """``(items, cache)`` for a sampled step: ``tokenizer_sample`` items drawn uniformly without repeats, and
        the token cache (refreshed from the whole catalog when there is none). ``catalog_free``: the draw costs
        the sample, not the catalog (rejection of repeats among uniform draws; the items come sorted)."""
        if self._cache is None:
            self._cache = self.refresh_cache()  # (encode_catalog's train/eval switch clears self._cache)
        dev = self.features[self.modalities[0]].device
        n, m = self.features.num_items, self.sample_size
        if catalog_free and n >= 16 * m:
            # with n >= 16 m, 2 m draws hold m distinct ones but with a vanishing probability (then draw again)
            while True:
                items = torch.unique(torch.randint(n, (2 * m,), device=dev))
                if items.numel() >= m:
                    return items[torch.randperm(items.numel(), device=dev)[:m]].sort().values, self._cache
        return torch.randperm(n, device=dev)[:m], self._cache

    def _sampled_parts(self, items: Tensor, cache: Dict[str, Tensor]
                       ) -> Tuple[Dict[str, SampledTokens], Dict[str, RQVAEOutput]]:
        """The tokenizer on ``items``; their fresh tokens written into ``cache`` (discrete tokens only)."""
        outs = self(items)
        fresh = self.latents(outs)
        parts = {}
        for m in self.modalities:
            cache[m].index_copy_(0, items, outs[m].codes.long())
            cb = self.rqvae[m].quantizer.codebooks.detach().to(fresh[m].dtype)
            parts[m] = SampledTokens(cache[m], items, fresh[m], cb)
        return parts, outs

    def set_cache(self, latents: Dict[str, Tensor], codes: Dict[str, Optional[Tensor]]) -> None:
        """Use an :meth:`encode_catalog` result the caller already has as the token cache."""
        self._cache = {m: latents[m] if codes[m] is None else codes[m] for m in self.modalities}

    def train(self, mode: bool = True):
        self._cache = None  # refreshed from the current weights when training (re)starts
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._cache = None  # it would stay on the old device
        self._encoded = None
        return super()._apply(fn, *args, **kwargs)

    def refresh_cache(self) -> Dict[str, Tensor]:
        """The per-item state :meth:`sampled` reads for items outside its sample: each modality's tokens
        ([num_items, num_levels] int64), or its latent ``z_e`` ([num_items, latent_dim]) when continuous."""
        lat, codes = self.encode_catalog()
        return {m: lat[m] if codes[m] is None else codes[m] for m in self.modalities}

    def sampled(self, items: Tensor, cache: Dict[str, Tensor]
                ) -> Tuple[Dict[str, Tensor], Dict[str, Optional[Tensor]], Dict[str, RQVAEOutput]]:
        """The catalog's latents and tokens with fresh rows for ``items`` (a sample without repeats).

        The tokenizer runs on those items only: its outputs carry the tokenizer losses and, through the
        straight-through latent, the encoder's share of the ranking gradient. Every other item's latent is a
        constant: the current codebooks' codewords of its cached tokens (``z_e`` from the cache when
        continuous). ``cache`` (from :meth:`refresh_cache`) is updated in place with the fresh rows.

        Shapes:
            items: [M] int64 distinct; cache: {m: [N, L] int64 or [N, latent]}
            -> ({m: [N, latent]}, {m: [N, L] int64 or None}, {m: RQVAEOutput over the M items}).
        """
        if not self.config.continuous:
            parts, outs = self._sampled_parts(items, cache)
            # every item's latent: its tokens' codewords (SampledTokens.latents, one embedding_bag, no [N, K] work,
            # no code range read-back), the fresh rows copied over
            return {m: p.latents() for m, p in parts.items()}, {m: p.codes for m, p in parts.items()}, outs
        outs = self(items)
        fresh = self.latents(outs)
        lat: Dict[str, Tensor] = {}
        for m in self.modalities:
            lat[m] = cache[m].index_copy(0, items, fresh[m])
            cache[m].index_copy_(0, items, fresh[m].detach())
        return lat, {m: None for m in self.modalities}, outs

    def latents(self, outs: Dict[str, RQVAEOutput]) -> Dict[str, Tensor]:
        """Each modality's item representation: the quantized latent ``z_q`` (``z_e`` when continuous)."""
        return {m: outs[m].z_e if self.config.continuous else outs[m].z_q for m in self.modalities}

    def losses(self, outs: Dict[str, RQVAEOutput]) -> Tuple[Tensor, Dict[str, Tensor]]:
        """``lambda_rq * (reconstruction + codebook + commitment) + sparse_weight * sparsity``, each term summed
        over modalities, and the summed terms ``{"rec", "codebook", "commit", "sparse"}`` (tensors: the caller
        reads the ones it logs)."""
        c = self.config
        rec = cb = com = sp = 0.0
        for m in self.modalities:
            lo = outs[m].losses
            rec = rec + lo.reconstruction
            cb = cb + lo.codebook
            com = com + lo.commitment
            sp = sp + lo.sparsity
        total = c.lambda_rq * (rec + cb + com) + c.sparse_weight * sp
        return total, {"rec": rec, "codebook": cb, "commit": com, "sparse": sp}

    @torch.no_grad()
    def tokenize(self) -> Dict[str, Tensor]:
        """Every item's semantic IDs per modality (call in eval mode: no codebook statistics updates).

        Shapes:
            -> {modality: [num_items, num_levels] int64}. Raises ValueError for a continuous model.
        """
        if self.config.continuous:
            raise ValueError("a continuous MoToRec (model.continuous=true) has no tokens to export")
        return {m: out.codes.long() for m, out in self().items()}
