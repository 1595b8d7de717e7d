"""How :class:`~motorec.models.motorec.MoToRec` trains at catalog scale (docs/MODEL.md section 4): the catalog
pass at each epoch's start (token cache, item-item graph rebuilds, history refresh) and the history steps
(``train.propagation: history``), which compute a step on its batch's neighbourhood from tables refreshed each
epoch. A mixin of MoToRec only: it reads MoToRec's parts (``tokenizer``, ``token_level``, ``item_item``,
``fusion``, ``lightgcn``)."""
from __future__ import annotations

import time
from typing import Dict, List, Optional

import torch
from torch import Tensor

from motorec.models.losses import batch_contrastive_items
from motorec.nn.lightgcn import csr_rows

__all__ = ["MoToRecSteps"]


class MoToRecSteps:
    """The epoch start and the history steps of :class:`~motorec.models.motorec.MoToRec`."""

    # every item's token-level view per modality, detached ({m: [num_items, dim]}), refreshed each epoch
    _token_history: Optional[Dict[str, Tensor]] = None

    def _history_rows(self, u: Tensor, p: Tensor, pn: Tensor, use_cl: bool):
        """A history step's rows for the loss: ``(users [B, dim], collab and content rows of pn and then of the
        InfoNCE items, tokenizer outputs, InfoNCE validity or None)``; each distinct node computed once."""
        rows, cl_valid = pn, None
        if use_cl:  # (contrastive_items costs the catalog: a random key per item)
            cl_items, cl_valid = batch_contrastive_items(p, self.config.cl_items, self.item_emb.dtype)
            rows = torch.cat([pn, cl_items])
        uu, uinv = torch.unique(u, return_inverse=True)
        ii, iinv = torch.unique(rows, return_inverse=True)
        users, collab, content, outs = self._forward_nodes(uu, ii)
        return (users.index_select(0, uinv), collab.index_select(0, iinv), content.index_select(0, iinv), outs,
                cl_valid)

    def _timed(self, fn) -> float:
        """Seconds ``fn()`` takes, the device's queued work waited for on both sides."""
        t0 = _clock(self.device)
        fn()
        return _clock(self.device) - t0

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
        users_b, collab = self.lightgcn.forward_nodes(self.graph, users, items, content, sparse_grad=True,
                                                      fanout=self.fanout)
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
                        codes: Optional[Dict[str, Optional[Tensor]]] = None, chunk: int = 32768) -> None:
        """The history of ``train.propagation: history``, from the current weights: every item's
        token-level views and content view, and LightGCN's (:meth:`LightGCN.refresh_history`); ``latents`` and
        ``codes`` (:meth:`MultimodalTokenizer.encode_catalog`) when the caller has just computed them.

        The token level, the item-item views and the fusion run ``chunk`` items at a time (the item-item views
        once every token-level row is in), into the two outputs: the [chunk, dim] temporaries stay in the cache
        and the allocator's pool, where whole-catalog ones were each a fresh mapping the OS faults in (the pass
        grew 25x from 100k to 1M items). Equal to the whole-catalog pass up to float rounding.

        Shapes:
            latents: {m: [num_items, latent_dim]}, codes: {m: [num_items, num_levels] or None}.
        """
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be a positive int (items per row block), got {chunk!r}")
        if latents is None or codes is None:
            latents, codes = self.tokenizer.encode_catalog()
        mods, n, dim = self.tokenizer.modalities, self.num_items, self.config.dim
        hist = {m: torch.empty(n, dim, device=self.device) for m in mods}
        for s in range(0, n, chunk):
            h = self.token_level({m: latents[m][s:s + chunk] for m in mods},
                                 {m: None if codes[m] is None else codes[m][s:s + chunk] for m in mods})
            for m in mods:
                hist[m][s:s + chunk] = h[m]
        if self.config.item_item and not self.item_item.graphs:
            self.rebuild_item_graphs()
        content = torch.empty(n, dim, device=self.device)
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            if self.config.item_item:
                hs = [self.item_item.view_rows(m, hist[m], s, e) for m in mods]
            else:
                hs = [hist[m][s:e] for m in mods]
            content[s:e] = self.fusion(hs)[0] if self.fusion is not None else sum(hs[1:], hs[0]) / len(hs)
        self._token_history = hist
        self.lightgcn.refresh_history(self.graph, content, self.warm_mask, copy_extra=False)

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
            self._epoch_log["seconds_catalog"] += self._timed(lambda: self.refresh_history(latents, codes))


def _clock(device: torch.device) -> float:
    """A stage boundary's clock: waits for the device's queued work first."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
