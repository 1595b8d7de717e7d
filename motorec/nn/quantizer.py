"""``motorec.nn.ResidualQuantizer``: residual vector quantization with k-means init, EMA option and dead-code
re-seeding, on top of the fused op :func:`motorec.ops.residual_quantize`. k-means lives in
:mod:`motorec.nn.clustering`, the codebook maintenance (usage counts, EMA, re-seeding, their distributed
agreement) in :mod:`motorec.nn.codebook`; this module composes them.

Arguments and return order follow vector-quantize-pytorch's ``ResidualVQ`` (``forward -> (quantized, codes,
losses)``, ``decode(codes)``; ``num_quantizers`` and ``commitment_weight`` are accepted as aliases).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from motorec._dispatch import BACKENDS
from motorec.nn import codebook
from motorec.nn.clustering import kmeans
from motorec.nn.codebook import SHARDED, StatisticsSync
from motorec.ops import residual_quantize
from motorec.ops._common import check_float_matrix

__all__ = ["ResidualQuantizer", "QuantizerLosses", "StatisticsSync", "statistics_sync", "kmeans"]


class QuantizerLosses(NamedTuple):
    """Losses of one :class:`ResidualQuantizer` forward. Backpropagate ``total`` (or ``codebook + commitment``).

    One fused op gives both gradients (see :mod:`motorec.reference.residual_quantize`), so the gradient of
    the two terms cannot be carried separately. The split of values and gradients is:

    * ``ema=False``: ``codebook`` has value ``sum_k mean_i ||r_i^(k)||^2`` and carries *both* gradients
      (codewords move toward their residuals; x receives ``commitment * d/dx``); ``commitment`` is its value
      times beta with no gradient.
    * ``ema=True``: codebooks learn by EMA, so ``codebook`` is 0 and ``commitment`` (value beta times the
      same sum) carries the gradient to x.

    In both modes ``total = codebook + commitment`` equals the usual VQ-VAE loss
    ``||sg[r] - q||^2 + beta ||r - sg[q]||^2`` summed over levels, in value and gradient.

    Attributes:
        total: scalar.
        codebook: scalar.
        commitment: scalar.
        per_level: [L] detached ``mean_i ||r_i^(k)||^2`` per level (the per-level codebook loss; the
            per-level commitment loss is ``commitment_weight`` times it).
    """

    total: Tensor
    codebook: Tensor
    commitment: Tensor
    per_level: Tensor


class _ScaleGrad(torch.autograd.Function):
    """Identity forward, gradient times ``scale`` backward: weights the commitment gradient that the fused op
    sends to x without changing x's value (so codes are exactly those of x)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.scale, None


@contextlib.contextmanager
def statistics_sync(module: nn.Module, sync: StatisticsSync) -> Iterator[None]:
    """Within the block, every :class:`ResidualQuantizer` in ``module`` (itself included) makes its statistics
    agree across ranks by ``sync``, e.g. :data:`~motorec.nn.codebook.REPLICATED` where every rank quantizes
    the same, whole data; each quantizer's own strategy is restored after the block."""
    if not isinstance(sync, StatisticsSync):
        raise TypeError(f"sync must be a StatisticsSync, got {type(sync).__name__}")
    held = [(q, q.statistics_sync) for q in module.modules() if isinstance(q, ResidualQuantizer)]
    for q, _ in held:
        q.statistics_sync = sync
    try:
        yield
    finally:
        for q, saved in held:
            q.statistics_sync = saved


def _alias(name: str, value, default, alias_name: str, alias):
    """``value`` or its vector-quantize-pytorch spelling ``alias``; both given and different is an error."""
    if alias is None:
        return value
    if value != default and value != alias:
        raise ValueError(f"{name}={value} and its alias {alias_name}={alias} disagree")
    return alias


class ResidualQuantizer(nn.Module):
    r"""Residual vector quantizer over ``num_levels`` codebooks (RQ-VAE, TIGER; ``ResidualVQ``-compatible).

    Per level k (``r^(-1) = x``): ``codes[:, k] = argmin_j ||r^(k-1) - C_k[j]||^2`` (ties: lowest j),
    ``r^(k) = r^(k-1) - C_k[codes[:, k]]``; ``quantized = sum_k C_k[codes[:, k]]``. All levels run in one call
    of :func:`motorec.ops.residual_quantize`; its ``residual_sq`` output gives the codebook loss (gradient to
    the codebooks) and the commitment loss (gradient to x, weighted by ``commitment`` through a gradient-scaling
    identity on x). The output is straight-through: ``x + (quantized - x).detach()``.

    Training-mode side effects of ``forward`` (under ``no_grad``; all but the first after the op, through
    :mod:`motorec.nn.codebook`):

    * k-means init: before the op, on the first training batch when ``kmeans_init`` and the codebooks are not
      initialized yet (or call :meth:`init_codebooks` on the whole catalog first).
    * usage counts per code (:meth:`usage`, :meth:`dead_code_fraction`, :meth:`perplexity`).
    * ``ema=True``: ``C_k[j] <- EMA of the mean of the residuals r^(k-1) assigned to j`` (Laplace-smoothed
      counts, as in VQ-VAE-2); the codebooks then get no gradient.
    * dead-code re-seeding: at the end of every window of ``dead_code_window`` training steps, each code used
      fewer than ``dead_code_threshold`` times in it becomes a random residual r^(k-1) of the current batch
      (``dead_code_threshold=0``: never). The window position lives on the host and travels as extra state.

    The op saves its own copy of the codebooks while training, so these in-place updates never change the
    gradient of the step that triggered them (a re-seeded row keeps its optimizer state: it is not the module's).

    Distributed: the attribute ``statistics_sync`` (a :class:`~motorec.nn.codebook.StatisticsSync`, by default
    :data:`~motorec.nn.codebook.SHARDED`) sums counts and EMA sums over ranks and broadcasts k-means results
    and re-seeded codewords from rank 0; :func:`statistics_sync` swaps it for a block.

    Args:
        dim: D, width of the vectors.
        num_levels: L >= 1 (alias ``num_quantizers``).
        codebook_size: K >= 1.
        commitment: beta >= 0, weight of the commitment loss (alias ``commitment_weight``).
        ema: learn codebooks by EMA instead of gradients.
        decay: EMA decay in [0, 1).
        eps: Laplace smoothing of the EMA counts (> 0).
        kmeans_init: initialize by k-means on the first training batch.
        kmeans_iters: Lloyd iterations of that init.
        dead_code_threshold: a code with fewer assignments than this over a window is re-seeded (0: never).
        dead_code_window: window length in training steps (>= 1).
        backend: backend of the op (``auto | torch | cpu | triton``).

    Shapes:
        forward: x [N, D] -> (quantized [N, D], codes [N, L] int64, :class:`QuantizerLosses`)
        decode: codes [N, l] (l <= L, leading levels) -> [N, D]
    """

    def __init__(
        self,
        *,
        dim: int,
        num_levels: int = 3,
        codebook_size: int = 256,
        commitment: float = 0.25,
        ema: bool = False,
        decay: float = 0.99,
        eps: float = 1e-5,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 1.0,
        dead_code_window: int = 20,
        backend: str = "auto",
        num_quantizers: Optional[int] = None,
        commitment_weight: Optional[float] = None,
    ) -> None:
        super().__init__()
        num_levels = _alias("num_levels", num_levels, 3, "num_quantizers", num_quantizers)
        commitment = _alias("commitment", commitment, 0.25, "commitment_weight", commitment_weight)
        for name, v in (("dim", dim), ("num_levels", num_levels), ("codebook_size", codebook_size),
                        ("dead_code_window", dead_code_window)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if not isinstance(kmeans_iters, int) or kmeans_iters < 0:
            raise ValueError(f"kmeans_iters must be an int >= 0, got {kmeans_iters!r}")
        for name, v, ok, rule in (("commitment", commitment, commitment >= 0, "be >= 0"),
                                  ("decay", decay, 0.0 <= decay < 1.0, "lie in [0, 1)"),
                                  ("eps", eps, eps > 0, "be > 0"),
                                  ("dead_code_threshold", dead_code_threshold, dead_code_threshold >= 0, "be >= 0")):
            if not ok:
                raise ValueError(f"{name} must {rule}, got {v!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        self.dim, self.num_levels, self.codebook_size = dim, num_levels, codebook_size
        self.commitment = float(commitment)
        self.ema, self.decay, self.eps = bool(ema), float(decay), float(eps)
        self.kmeans_init, self.kmeans_iters = bool(kmeans_init), kmeans_iters
        self.dead_code_threshold, self.dead_code_window = float(dead_code_threshold), dead_code_window
        self.backend = backend

        cb = torch.empty(num_levels, codebook_size, dim)
        for k in range(num_levels):
            nn.init.kaiming_uniform_(cb[k])
        self.codebooks = nn.Parameter(cb, requires_grad=not self.ema)
        self.register_buffer("initialized", torch.tensor(not self.kmeans_init))
        # Integer counts: exact at any scale, and untouched by module.half().
        self.register_buffer("code_counts", torch.zeros(num_levels, codebook_size, dtype=torch.int64))
        self.register_buffer("window_counts", torch.zeros(num_levels, codebook_size, dtype=torch.int64))
        self.register_buffer("ema_cluster_size", torch.ones(num_levels, codebook_size))
        self.register_buffer("ema_embed_sum", cb.clone())
        # Host-side state, so that a training step never waits on the device: the steps into the current
        # dead-code window (saved as extra state, see get_extra_state) and whether `initialized` was seen True.
        self._window_step = 0
        self._init_seen = False
        self.statistics_sync: StatisticsSync = SHARDED

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._init_seen = False

    def get_extra_state(self):
        # The dead-code window position lives on the host but must travel with a checkpoint: a resumed run
        # re-seeds at the same steps as an uninterrupted one.
        return {"window_step": int(self._window_step)}

    def set_extra_state(self, state) -> None:
        self._window_step = int(state["window_step"])

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_levels={self.num_levels}, codebook_size={self.codebook_size}, "
                f"commitment={self.commitment}, ema={self.ema}, kmeans_init={self.kmeans_init}, "
                f"dead_code_threshold={self.dead_code_threshold}, dead_code_window={self.dead_code_window}, "
                f"backend={self.backend!r}")

    # ------------------------------------------------------------------ checks
    def _check_x(self, x: Tensor, name: str = "x") -> None:
        check_float_matrix(x, name)
        if x.shape[1] != self.dim:
            raise ValueError(f"{name} must have dim={self.dim} columns, got shape {tuple(x.shape)}")

    def _check_codes(self, codes: Tensor) -> None:
        if not isinstance(codes, Tensor) or codes.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"codes must be an integer tensor, got "
                            f"{codes.dtype if isinstance(codes, Tensor) else type(codes).__name__}")
        if codes.dim() != 2 or not 1 <= codes.shape[1] <= self.num_levels:
            raise ValueError(f"codes must be [N, l] with 1 <= l <= num_levels={self.num_levels}, "
                             f"got shape {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, codebook_size={self.codebook_size}), got values in "
                             f"[{int(codes.min())}, {int(codes.max())}]")

    # ------------------------------------------------------------------ main API
    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, QuantizerLosses]:
        """Quantize ``x``; see the class docstring for losses and training-mode side effects.

        Shapes:
            x: [N, D] -> (quantized [N, D] straight-through, codes [N, L] int64, :class:`QuantizerLosses`)
        """
        self._check_x(x)
        if x.dtype in (torch.float16, torch.bfloat16) or torch.is_autocast_enabled(x.device.type):
            with torch.autocast(device_type=x.device.type, enabled=False):  # distances, codes, losses: >= fp32
                return self(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x)
        if self.training and not self._init_seen:
            if bool(self.initialized):
                self._init_seen = True
            elif x.shape[0] > 0:
                self.init_codebooks(x)
        cb = self.codebooks.to(x.dtype)
        if self.training and cb is self.codebooks:
            cb = cb.clone()
        x_in = _ScaleGrad.apply(x, self.commitment) if x.requires_grad else x
        out = residual_quantize(x_in, cb, backend=self.backend)

        per_level = out.residual_sq.sum(0) / max(x.shape[0], 1)
        vq = per_level.sum()
        value = vq.detach()
        if self.ema:
            codebook = torch.zeros_like(value)
            commitment = vq + (self.commitment - 1.0) * value
        else:
            codebook = vq
            commitment = self.commitment * value
        losses = QuantizerLosses(codebook + commitment, codebook, commitment, per_level.detach())

        quantized = x + (out.quantized - x).detach()
        if self.training:
            with torch.no_grad():
                self._update(x.detach(), out.codes, cb.detach())
        return quantized, out.codes, losses

    @torch.no_grad()
    def quantize(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Codes and quantized vectors without gradients or statistics updates.

        Shapes:
            x: [N, D] -> (quantized [N, D], codes [N, L] int64)
        """
        self._check_x(x)
        out = residual_quantize(x.detach(), self.codebooks.detach().to(x.dtype), backend=self.backend)
        return out.quantized, out.codes

    def encode(self, x: Tensor) -> Tensor:
        """Codes only (no gradient, no statistics). Shapes: x [N, D] -> codes [N, L] int64."""
        return self.quantize(x)[1]

    def decode(self, codes: Tensor) -> Tensor:
        """Sum of the codewords of ``codes`` (differentiable in the codebooks). Leading levels only when
        ``codes`` has l < L columns (coarse reconstruction).

        Shapes:
            codes: [N, l] integer, 1 <= l <= L -> [N, D]
        """
        self._check_codes(codes)
        num = codes.shape[1]
        flat = self.codebooks[:num].reshape(num * self.codebook_size, self.dim)
        offsets = torch.arange(num, device=codes.device, dtype=torch.int64) * self.codebook_size
        return F.embedding(codes.long() + offsets, flat).sum(1)

    get_output_from_indices = decode  # vector-quantize-pytorch name

    # ------------------------------------------------------------------ initialization
    @torch.no_grad()
    def init_codebooks(self, data: Tensor, *, iters: Optional[int] = None,
                       generator: Optional[torch.Generator] = None) -> None:
        """k-means initialization, level by level on the residuals of ``data`` (e.g. the whole catalog).

        Resets the EMA state (counts = cluster sizes, sums = centroid * size) and the usage statistics, and
        marks the quantizer initialized (the first-batch init is then skipped).

        Shapes:
            data: [N, D], N >= 1
        """
        self._check_x(data, "data")
        if data.shape[0] < 1:
            raise ValueError("data must have at least one row to initialize the codebooks")
        iters = self.kmeans_iters if iters is None else iters
        r = data.detach().to(device=self.codebooks.device, dtype=torch.float32)
        for k in range(self.num_levels):
            centroids, assign = kmeans(r, self.codebook_size, iters, backend=self.backend, generator=generator)
            self.codebooks[k].copy_(centroids)
            self.ema_cluster_size[k].copy_(torch.bincount(assign, minlength=self.codebook_size).float())
            r = r - centroids[assign]
        self.statistics_sync.broadcast(self.codebooks.data)
        self.statistics_sync.broadcast(self.ema_cluster_size)
        # An unused centre keeps a unit count so its EMA codeword stays put rather than decaying to zero.
        self.ema_cluster_size.clamp_(min=1.0)
        self.ema_embed_sum.copy_(self.codebooks.detach() * self.ema_cluster_size.unsqueeze(-1))
        self.reset_usage()
        self.initialized.fill_(True)
        self._init_seen = True  # the next training forward need not read `initialized` back

    @torch.no_grad()
    def reset_ema(self) -> None:
        """Restart the EMA state from the current codebooks (count 1 per code). Call it after setting the
        codebooks by hand with ``ema=True``; otherwise the next EMA step pulls them back toward the old sums."""
        self.ema_cluster_size.fill_(1.0)
        self.ema_embed_sum.copy_(self.codebooks.detach())

    def reset_usage(self) -> None:
        """Zero the usage counts and restart the dead-code window."""
        self.code_counts.zero_()
        self.window_counts.zero_()
        self._window_step = 0

    # ------------------------------------------------------------------ training-time updates
    def _update(self, x: Tensor, codes: Tensor, cb: Tensor) -> None:
        # Runs every training step: no host reads here except in reseed_dead_codes, which runs only at the end
        # of a dead-code window (every `dead_code_window` steps; the window position lives on the host).
        sync = self.statistics_sync
        counts = sync.reduce(codebook.code_counts(codes, self.codebook_size).to(self.code_counts.dtype))
        self.code_counts += counts
        self.window_counts += counts
        self._window_step += 1
        reseed = self.dead_code_threshold > 0 and self._window_step >= self.dead_code_window
        if not (self.ema or reseed):
            return
        r = x.to(torch.float32)
        cbf = cb.to(torch.float32)
        for k in range(self.num_levels):
            idx = codes[:, k]
            state = (self.codebooks.data[k], self.ema_cluster_size[k], self.ema_embed_sum[k])
            if self.ema:
                codebook.ema_update(*state, counts[k], r, idx, decay=self.decay, eps=self.eps, sync=sync)
            if reseed:
                codebook.reseed_dead_codes(*state, self.code_counts[k], self.window_counts[k], r,
                                           threshold=self.dead_code_threshold, sync=sync)
            r = r - cbf[k].index_select(0, idx)
        if reseed:
            self.window_counts.zero_()
            self._window_step = 0

    # ------------------------------------------------------------------ statistics
    def _counts(self, x: Optional[Tensor]) -> Tensor:
        return self.code_counts if x is None else codebook.code_counts(self.encode(x), self.codebook_size)

    @torch.no_grad()
    def usage(self, x: Optional[Tensor] = None) -> Tensor:
        """Fraction of assignments per code: over the training steps since the last reset (or init), or over
        ``x`` when given. Shapes: -> [L, K], rows summing to 1 (0 when nothing was counted)."""
        return codebook.usage(self._counts(x))

    @torch.no_grad()
    def dead_code_fraction(self, x: Optional[Tensor] = None) -> Tensor:
        """Fraction of codes never assigned (since the last reset, or over ``x``). Shapes: -> [L]."""
        return (self._counts(x) == 0).float().mean(1)

    @torch.no_grad()
    def perplexity(self, x: Optional[Tensor] = None) -> Tensor:
        """``exp(entropy)`` of the code distribution per level (K when usage is uniform, 1 when one code takes
        everything). Shapes: -> [L]."""
        return codebook.perplexity(self._counts(x))
