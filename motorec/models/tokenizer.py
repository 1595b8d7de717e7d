"""MoToRec's multimodal tokenizer (PAPER.md section 1): one RQ-VAE per modality over the L2-normalized item
features, and the tokenizer's share of the loss."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from motorec.config import ModelConfig
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
                     sparse_mode=c.sparse_mode, temperature=c.sparse_temperature, continuous=c.continuous,
                     ema=c.ema, kmeans_init=c.kmeans_init, backend=backend)
            for m, d in features.dims().items()
        })

    def forward(self, items: Optional[Tensor] = None) -> Dict[str, RQVAEOutput]:
        return {m: self.rqvae[m](self.features.normalized(m, items)) for m in self.modalities}

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
