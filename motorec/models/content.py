"""The parts of MoToRec's hierarchical content encoder (PAPER.md section 3), bottom to top:

* :class:`TokenEncoder` (token level): ``h_i^m = W_m z^m + sum_k E_m[k, code_k]`` per modality;
* :class:`ItemItemEncoder` (source level): a cosine kNN item-item graph per modality and one propagation
  layer over it; the graphs are the part's state (``get_extra_state``), not parameters;
* :class:`SourceAttention`: attention over the modalities, giving the content view ``h~``.
"""
from __future__ import annotations

import math
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from motorec import ops
from motorec.config import ModelConfig
from motorec.graph import Graph

__all__ = ["TokenEncoder", "ItemItemEncoder", "SourceAttention", "SampledTokens"]


class SampledTokens(NamedTuple):
    """One modality's tokenizer state in a sampled training step (:meth:`MultimodalTokenizer.sampled_tokens`):
    what the token level needs, without an [num_items, latent] tensor of every item's latent.

    Attributes:
        codes: [N, L] int64, every item's tokens (the cache, with the sampled rows fresh).
        items: [M] int64, the sampled items (distinct).
        fresh: [M, latent], their straight-through quantized latents (carry the tokenizer's gradient).
        codebooks: [L, K, latent], detached: every other item's latent is the sum of its tokens' codewords.
    """

    codes: Tensor
    items: Tensor
    fresh: Tensor
    codebooks: Tensor

    def token_index(self) -> Tensor:
        """[N, L] rows of the flattened [L * K, ...] tables: ``codes[:, l] + l * K``."""
        num_levels, k = self.codebooks.shape[0], self.codebooks.shape[1]
        return self.codes + torch.arange(num_levels, device=self.codes.device) * k

    def latents(self) -> Tensor:
        """[N, latent]: the codewords' sum for every item, the fresh latent for the sampled ones."""
        flat = self.codebooks.reshape(-1, self.codebooks.shape[2])
        return token_sum(flat, self.token_index()).index_copy_(0, self.items, self.fresh)


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

    def forward_sampled(self, parts: Dict[str, SampledTokens], scale: float = 1.0) -> Dict[str, Tensor]:
        """The token level of a sampled step, times ``scale``: the same function as ``scale * forward(latents,
        codes)`` on ``{m: parts[m].latents()}`` and ``{m: parts[m].codes}``, computed without the [N, latent]
        latents and with one pass over [N, dim] per modality.

        An item outside the sample has ``z = sum_l C_l[code_l]``, so ``W z + b + sum_l E[l, code_l] =
        sum_l T[l, code_l]`` with the [L * K, d] table ``T = C W^T + E`` whose level-0 rows also hold ``b``
        (every item has exactly one level-0 token): one lookup per item into a table built once per step, where
        the direct form projects all N latents and, in the backward, multiplies two [N, d] products to hand the
        [N, latent] gradient to the 64 sampled rows. The sampled rows look up an appended zero row instead and
        get their value from their fresh latents (the tokenizer's gradient path) added in: no [N, d] copy in the
        backward, as overwriting the rows would take. ``scale`` is folded into the small tables (the mean fusion
        of ``M`` modalities passes ``1 / M``). Equal up to float rounding; the same gradients reach ``W``, ``b``
        and ``E``, none reaches the codebooks through the cached rows (they are detached, as in the direct form).

        Shapes:
            parts: {m: SampledTokens over N items, M sampled} -> {m: [N, dim]}.
        """
        h = {}
        for m, proj in self.token_proj.items():
            s = parts[m]
            idx = s.token_index()
            k = s.codebooks.shape[1]
            table = s.codebooks.reshape(-1, s.codebooks.shape[2]) @ proj.weight.t()
            if self.use_tokens:
                table = table + self.token_emb[m].weight
            table = torch.cat([table[:k] + proj.bias, table[k:], table.new_zeros(1, table.shape[1])])
            hs = proj(s.fresh)
            if self.use_tokens:
                hs = hs + token_sum(self.token_emb[m].weight, idx.index_select(0, s.items))
            if scale != 1.0:
                table, hs = table * scale, hs * scale
            # the sampled rows read the zero row; their value is added from the fresh latents
            idx.index_fill_(0, s.items, table.shape[0] - 1)
            h[m] = token_sum(table, idx).index_add_(0, s.items, hs)
        return h

    def forward(self, latents: Dict[str, Tensor], codes: Dict[str, Optional[Tensor]]) -> Dict[str, Tensor]:
        h = {}
        for m, proj in self.token_proj.items():
            z = latents[m]
            hm = proj(z)
            if self.use_tokens:
                offset = torch.arange(self.num_levels, device=z.device) * self.codebook_size
                # in place: the projection's backward does not read its output, and at catalog scale every
                # [N, d] temporary is a fresh allocation the OS faults in (same values as hm + token_sum)
                hm = hm.add_(token_sum(self.token_emb[m].weight, codes[m].long() + offset))
            h[m] = hm
        return h


class _TokenSumCPU(torch.autograd.Function):
    """``weight[idx].sum(1)`` on CPU without the [N, L, d] gather: ``embedding_bag`` forward, and a backward of
    one ``index_add_`` per level (the embedding and embedding_bag backwards sort or count N * L indices into a
    table of only L * K rows, several times slower at catalog scale)."""

    @staticmethod
    def forward(ctx, weight: Tensor, idx: Tensor) -> Tensor:
        ctx.save_for_backward(idx)
        ctx.rows = weight.shape[0]
        return torch.nn.functional.embedding_bag(idx, weight, mode="sum")

    @staticmethod
    def backward(ctx, grad: Tensor):
        (idx,) = ctx.saved_tensors
        grad = grad.contiguous()
        gw = grad.new_zeros(ctx.rows, grad.shape[1])
        for col in idx.t().contiguous():
            gw.index_add_(0, col, grad)
        return gw, None


def token_sum(weight: Tensor, idx: Tensor) -> Tensor:
    """Sum of each item's token embeddings: ``weight[idx].sum(1)`` (same values and gradient).

    CPU: :class:`_TokenSumCPU`; elsewhere ``embedding_bag`` (sum mode), whose CUDA backward sorts the indices
    instead of contending on atomics over the few table rows.

    Shapes:
        weight: [L * K, d], idx: [N, L] int64 (level offsets added) -> [N, d].
    """
    if idx.shape[0] == 0 or idx.shape[1] == 0:
        return weight.new_zeros(idx.shape[0], weight.shape[1]) + 0.0 * weight.sum()
    if weight.device.type == "cpu":
        return _TokenSumCPU.apply(weight, idx)
    return torch.nn.functional.embedding_bag(idx, weight, mode="sum")


class ItemItemEncoder(nn.Module):
    """Source level: one layer over each modality's item-item kNN graph.

    :meth:`rebuild` makes the graphs from the items' latents (the model calls it every ``knn_rebuild_every``
    epochs); they travel in ``state_dict()`` through :meth:`get_extra_state`, so a resumed run continues with
    the graphs it had. Each view is ``(h + A h) / 2`` (:func:`motorec.ops.propagate`, one layer).

    Shapes:
        rebuild: {m: [num_items, latent]}; forward: h {m: [num_items, d]} -> [[num_items, d]] per m.
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

    def forward(self, h: Dict[str, Tensor]) -> List[Tensor]:
        return [ops.propagate(self.graphs[m], h[m], 1, backend=self.backend) for m in self.modalities]

    def view_rows(self, m: str, h: Tensor, start: int, stop: int) -> Tensor:
        """Rows ``start .. stop - 1`` of modality ``m``'s view, ``(h + A h) / 2`` (:meth:`forward`'s, up to float
        rounding), reading only those rows' neighbours: a catalog pass in row blocks.

        Shapes:
            h: [num_items, d] -> [stop - start, d].
        """
        return (h[start:stop] + ops.spmm(self.graphs[m].rows(start, stop), h, backend=self.backend)) * 0.5

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

    :func:`motorec.ops.source_attention` (``backend`` as every op: the C++ kernel on CPU, the torch path
    elsewhere), which computes it in the sigmoid form ``softmax_m((2q) . sigmoid(2(W h^m + b)))``: the same
    weights up to float rounding, at a quarter of the cost on CPU, where ATen's ``tanh`` is about 4x its
    ``sigmoid``.

    Shapes:
        hs: M tensors [N, d] (a list, or one [M, N, d] tensor) -> ([N, d], weights [N, M]).
    """

    def __init__(self, dim: int, backend: str = "auto") -> None:
        super().__init__()
        self.backend = backend
        self.proj = nn.Linear(dim, dim)
        self.query = nn.Parameter(torch.randn(dim) / math.sqrt(dim))

    def forward(self, hs) -> Tuple[Tensor, Tensor]:
        hs = list(hs.unbind(0)) if isinstance(hs, Tensor) else list(hs)
        return ops.source_attention(hs, self.proj.weight, self.proj.bias, self.query, backend=self.backend)
