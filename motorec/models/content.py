"""The parts of MoToRec's hierarchical content encoder (PAPER.md section 3), bottom to top:

* :class:`TokenEncoder` (token level): ``h_i^m = W_m z^m + sum_k E_m[k, code_k]`` per modality;
* :class:`ItemItemEncoder` (source level): a cosine kNN item-item graph per modality and one propagation
  layer over it; the graphs are the part's state (``get_extra_state``), not parameters;
* :class:`SourceAttention`: attention over the modalities, giving the content view ``h~``.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from motorec import ops
from motorec.config import ModelConfig
from motorec.graph import Graph

__all__ = ["TokenEncoder", "ItemItemEncoder", "SourceAttention"]


class TokenEncoder(nn.Module):
    """Token level: ``h^m = W_m z^m (+ sum_k E_m[k, code_k])``, the token embeddings unless
    ``token_embeddings`` is off or the model is continuous (no codes).

    Shapes:
        latents: {m: [N, latent_dim]} (``z_q``, or ``z_e`` when continuous), codes: {m: [N, L] int or None}
        -> {m: [N, dim]}.
    """

    def __init__(self, modalities: Sequence[str], config: ModelConfig, device=None) -> None:
        super().__init__()
        c = config
        self.num_levels, self.codebook_size, self.continuous = c.num_levels, c.codebook_size, c.continuous
        self.token_proj = nn.ModuleDict({m: nn.Linear(c.latent_dim, c.dim) for m in modalities}).to(device)
        self.use_tokens = c.token_embeddings and not c.continuous
        if self.use_tokens:
            self.token_emb = nn.ModuleDict({
                m: nn.Embedding(c.num_levels * c.codebook_size, c.dim) for m in modalities}).to(device)
            for e in self.token_emb.values():
                nn.init.normal_(e.weight, std=0.01)

    def forward(self, latents: Dict[str, Tensor], codes: Dict[str, Optional[Tensor]]) -> Dict[str, Tensor]:
        h = {}
        for m, proj in self.token_proj.items():
            z = latents[m]
            hm = proj(z)
            if self.use_tokens:
                offset = torch.arange(self.num_levels, device=z.device) * self.codebook_size
                hm = hm + self.token_emb[m](codes[m].long() + offset).sum(1)
            h[m] = hm
        return h


class ItemItemEncoder(nn.Module):
    """Source level: one layer over each modality's item-item kNN graph.

    :meth:`rebuild` makes the graphs from the items' latents (the model calls it every ``knn_rebuild_every``
    epochs); they travel in ``state_dict()`` through :meth:`get_extra_state`, so a resumed run continues with
    the graphs it had. Without ``ids``: ``(h + A h) / 2`` (:func:`motorec.ops.propagate`, one layer); with
    ``ids``: ``(h + A (h + ids)) / 2``, the neighbours' ID embeddings passed along.

    Shapes:
        rebuild: {m: [num_items, latent]}; forward: h {m: [num_items, d]}, ids [num_items, d] -> [[num_items, d]] per m.
    """

    def __init__(self, modalities: Sequence[str], num_items: int, k: int, backend: str = "auto") -> None:
        super().__init__()
        self.modalities = list(modalities)
        self.num_items, self.k, self.backend = int(num_items), int(k), backend
        self.graphs: Dict[str, Graph] = {}
        # follows the module's device, so that graphs loaded from a CPU state land where the model is
        self.register_buffer("_device_probe", torch.empty(0), persistent=False)

    @torch.no_grad()
    def rebuild(self, latents: Dict[str, Tensor]) -> None:
        from motorec.nn.knn import knn_graph

        for m in self.modalities:
            self.graphs[m] = knn_graph(latents[m].float(), k=min(self.k, max(self.num_items - 1, 1)))

    def forward(self, h: Dict[str, Tensor], ids: Optional[Tensor] = None) -> List[Tensor]:
        if ids is None:
            return [ops.propagate(self.graphs[m], h[m], 1, backend=self.backend) for m in self.modalities]
        return [0.5 * (h[m] + ops.spmm(self.graphs[m], h[m] + ids, backend=self.backend)) for m in self.modalities]

    def get_extra_state(self) -> Dict[str, Dict[str, Tensor]]:
        return {m: {"rowptr": g.rowptr, "col": g.col, "val": g.val} for m, g in self.graphs.items()}

    def set_extra_state(self, state: Dict[str, Dict[str, Tensor]]) -> None:
        dev = self._device_probe.device
        graphs = {}
        for m in self.modalities:
            if m not in state:
                continue
            rows = state[m]["rowptr"].numel() - 1
            if rows != self.num_items:
                raise ValueError(f"the item-item graph of modality {m!r} has {rows} items, this model "
                                 f"{self.num_items}")
            graphs[m] = Graph.from_csr(state[m]["rowptr"].to(dev), state[m]["col"].to(dev), state[m]["val"].to(dev),
                                       self.num_items)
        self.graphs = graphs

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self.graphs = {m: g.to(self._device_probe.device) for m, g in self.graphs.items()}
        return out


class SourceAttention(nn.Module):
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
