"""``motorec.nn.RQVAE``: MoToRec's per-modality tokenizer (PAPER.md section 1): MLP encoder, residual
quantizer, MLP decoder, with reconstruction, codebook, commitment and sparsity (KL on code usage) losses."""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from motorec.nn.quantizer import ResidualQuantizer
from motorec.ops import code_usage
from motorec.ops._common import check_float_matrix

__all__ = ["RQVAE", "RQVAEOutput", "RQVAELosses", "bernoulli_kl"]

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class RQVAELosses(NamedTuple):
    """Scalar losses of one :class:`RQVAE` forward; backpropagate ``total``.

    ``total = reconstruction + codebook + commitment + sparse_weight * sparsity``. ``codebook`` and
    ``commitment`` are the quantizer's (:class:`motorec.nn.QuantizerLosses`): their sum carries the right
    gradients, each alone may not. ``sparsity`` is 0 when ``sparse_weight == 0`` (the term is then
    skipped, not computed).
    """

    total: Tensor
    reconstruction: Tensor
    codebook: Tensor
    commitment: Tensor
    sparsity: Tensor


class RQVAEOutput(NamedTuple):
    """Result of :meth:`RQVAE.forward`.

    Attributes:
        z_e: [N, latent_dim] encoder output.
        z_q: [N, latent_dim] quantized latent, straight-through (``z_e`` itself when ``continuous``).
        codes: [N, num_levels] int64 tokens (``None`` when ``continuous``).
        recon: [N, input_dim] decoder output, compared with the L2-normalized input.
        losses: :class:`RQVAELosses`.
    """

    z_e: Tensor
    z_q: Tensor
    codes: Optional[Tensor]
    recon: Tensor
    losses: RQVAELosses


def bernoulli_kl(rho: float, rho_hat: Tensor, eps: float = 1e-6) -> Tensor:
    """``KL(Bernoulli(rho) || Bernoulli(rho_hat))`` elementwise, ``rho_hat`` clamped to [eps, 1 - eps].

    Shapes:
        rho_hat: any -> same shape
    """
    q = rho_hat.clamp(eps, 1.0 - eps)
    return rho * (math.log(rho) - torch.log(q)) + (1.0 - rho) * (math.log1p(-rho) - torch.log1p(-q))


def _mlp(dims: Sequence[int], activation: str, dropout: float) -> nn.Sequential:
    layers = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(_ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    r"""Residual-quantized autoencoder over one modality's item features.

    ``x`` is L2-normalized per row, encoded by an MLP to ``z_e`` [N, latent_dim], quantized by a
    :class:`motorec.nn.ResidualQuantizer` (straight-through ``z_q``, tokens ``codes``), and decoded by the
    mirrored MLP.

    Losses (:class:`RQVAELosses`):

    * ``reconstruction``: ``||normalize(x) - decoder(z_q)||^2`` summed over features, averaged over rows
      (``recon_reduction="sum"``, PAPER.md's L_rec), or the element-wise mean (``"mean"``).
    * ``codebook``, ``commitment``: the quantizer's (commitment weight beta = ``commitment``).
    * ``sparsity``: ``sum_levels sum_j KL(rho || rho_hat_j)`` with ``rho_hat_j`` the batch mean of a soft
      assignment of the level's residual input ``r^(k-1)`` to code j (PAPER.md section 1; the exact form is
      not public, these are our choices):

      - ``sparse_mode="softmax"``: ``p_ij = softmax_j(-||r_i - c_j||^2 / T)``. These sum to one over j, so
        ``rho_hat`` is a distribution over codes and the KL is smallest when every code gets mass ``rho``:
        with the default ``rho = 1/K`` this is *usage balancing* (anti-collapse), not sparsity of each item's
        assignment, which a hard nearest-code assignment already is.
      - ``sparse_mode="sigmoid"``: independent activations ``p_ij = sigmoid((mean_j' d_ij' - d_ij) / T)``
        with ``d_ij = ||r_i - c_j||^2``: code j is "on" for item i when it is closer than the item's average
        code; the KL pulls each code's firing rate toward a small ``rho`` (default 0.05), as in a sparse
        autoencoder.

    ``continuous=True`` skips quantization (``z_q = z_e``, ``codes = None``, quantizer losses and sparsity 0):
    the "continuous instead of discrete" ablation.

    Args:
        input_dim: feature width (e.g. 4096 visual, 384 text).
        latent_dim: width of z_e / z_q.
        hidden_dims: encoder hidden widths (decoder mirrors them).
        num_levels, codebook_size, commitment, ema, backend, and ``**quantizer_kwargs``: passed to
            :class:`motorec.nn.ResidualQuantizer`.
        sparse_weight: weight of ``sparsity`` in ``total`` (0 turns it off: the "without sparsity" ablation).
        sparse_rho: the prior's mean, in (0, 1); ``None``: ``1 / codebook_size`` (softmax) or 0.05 (sigmoid).
        sparse_mode: ``"softmax"`` or ``"sigmoid"``.
        temperature: T > 0 of the soft assignment.
        dropout: dropout after each hidden activation.
        activation: ``relu | gelu | silu | tanh``.
        recon_reduction: ``"sum"`` (over features, mean over rows) or ``"mean"`` (over all elements).
        continuous: skip quantization.

    Shapes:
        forward: x [N, input_dim] -> :class:`RQVAEOutput`
        encode: x [N, input_dim] -> codes [N, L];  decode_codes: codes [N, L] -> z_q [N, latent_dim]
        quantize: x [N, input_dim] -> (z_q [N, latent_dim], codes [N, L])
        reconstruct: z [N, latent_dim] -> [N, input_dim] (the decoder MLP on a latent)
    """

    def __init__(
        self,
        *,
        input_dim: int,
        latent_dim: int = 64,
        hidden_dims: Sequence[int] = (256,),
        num_levels: int = 3,
        codebook_size: int = 256,
        commitment: float = 0.25,
        sparse_weight: float = 1e-3,
        sparse_rho: Optional[float] = None,
        sparse_mode: str = "softmax",
        temperature: float = 1.0,
        ema: bool = False,
        dropout: float = 0.0,
        activation: str = "relu",
        recon_reduction: str = "sum",
        continuous: bool = False,
        backend: str = "auto",
        **quantizer_kwargs,
    ) -> None:
        super().__init__()
        for name, v in (("input_dim", input_dim), ("latent_dim", latent_dim)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        hidden_dims = tuple(hidden_dims)
        if any(not isinstance(h, int) or h < 1 for h in hidden_dims):
            raise ValueError(f"hidden_dims must be ints >= 1, got {hidden_dims!r}")
        if sparse_mode not in ("softmax", "sigmoid"):
            raise ValueError(f"sparse_mode must be 'softmax' or 'sigmoid', got {sparse_mode!r}")
        if sparse_rho is None:
            sparse_rho = 1.0 / codebook_size if sparse_mode == "softmax" else 0.05
        if not 0.0 < sparse_rho < 1.0:
            raise ValueError(f"sparse_rho must lie in (0, 1), got {sparse_rho!r}")
        if not sparse_weight >= 0:
            raise ValueError(f"sparse_weight must be >= 0, got {sparse_weight!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(_ACTIVATIONS)}, got {activation!r}")
        if recon_reduction not in ("sum", "mean"):
            raise ValueError(f"recon_reduction must be 'sum' or 'mean', got {recon_reduction!r}")
        self.input_dim, self.latent_dim, self.hidden_dims = input_dim, latent_dim, hidden_dims
        self.sparse_weight, self.sparse_rho, self.sparse_mode = float(sparse_weight), float(sparse_rho), sparse_mode
        self.temperature, self.recon_reduction, self.continuous = float(temperature), recon_reduction, bool(continuous)
        self.encoder = _mlp((input_dim, *hidden_dims, latent_dim), activation, dropout)
        self.decoder = _mlp((latent_dim, *reversed(hidden_dims), input_dim), activation, dropout)
        self.quantizer = ResidualQuantizer(dim=latent_dim, num_levels=num_levels, codebook_size=codebook_size,
                                           commitment=commitment, ema=ema, backend=backend, **quantizer_kwargs)

    def _check_x(self, x: Tensor) -> None:
        check_float_matrix(x, "x")
        if x.shape[1] != self.input_dim:
            raise ValueError(f"x must have input_dim={self.input_dim} columns, got shape {tuple(x.shape)}")

    def _encode(self, x: Tensor, normalized: bool = False) -> Tuple[Tensor, Tensor]:
        self._check_x(x)
        xn = x if normalized else F.normalize(x, dim=-1)
        return xn, self.encoder(xn)

    def forward(self, x: Tensor, *, normalized: bool = False) -> RQVAEOutput:
        """Encode, quantize, decode; see the class docstring for the losses.

        Args:
            x: item features.
            normalized: ``x``'s rows are already L2-normalized (a caller that keeps normalized features skips
                the second normalization).

        Shapes:
            x: [N, input_dim] -> RQVAEOutput(z_e [N, latent], z_q [N, latent], codes [N, L], recon [N, input_dim])
        """
        xn, z_e = self._encode(x, normalized)
        zero = z_e.new_zeros(())
        if self.continuous:
            z_q, codes = z_e, None
            codebook = commitment = sparsity = zero
        else:
            z_q, codes, ql = self.quantizer(z_e)
            codebook, commitment = ql.codebook, ql.commitment
            # With weight 0 the term is not computed at all (it would cost a pass over [N, K] per level).
            sparsity = self.sparsity_loss(z_e, codes) if self.sparse_weight > 0 else zero
        recon = self.decoder(z_q)
        err = (recon - xn).pow(2)
        if x.shape[0] == 0:
            reconstruction = err.sum()
        elif self.recon_reduction == "sum":
            reconstruction = err.sum(1).mean()
        else:
            reconstruction = err.mean()
        total = reconstruction + codebook + commitment + self.sparse_weight * sparsity
        return RQVAEOutput(z_e, z_q, codes, recon, RQVAELosses(total, reconstruction, codebook, commitment, sparsity))

    def soft_assignments(self, z_e: Tensor, codes: Tensor) -> Tensor:
        """Soft assignment of each level's residual input ``r^(k-1)`` (rebuilt from ``codes``) to every code.

        Shapes:
            z_e: [N, latent_dim], codes: [N, L] -> p [L, N, K] (softmax: each [N, K] row sums to 1)
        """
        cb = self.quantizer.codebooks.to(z_e.dtype)
        r = z_e
        out = []
        for k in range(cb.shape[0]):
            c = cb[k]
            d = (r.pow(2).sum(1, keepdim=True) - 2.0 * (r @ c.t()) + c.pow(2).sum(1)).clamp_min(0.0)
            if self.sparse_mode == "softmax":
                p = torch.softmax(-d / self.temperature, dim=1)
            else:
                p = torch.sigmoid((d.mean(1, keepdim=True) - d) / self.temperature)
            out.append(p)
            r = r - c.index_select(0, codes[:, k])
        return torch.stack(out)

    def sparsity_loss(self, z_e: Tensor, codes: Tensor) -> Tensor:
        """``sum_levels sum_j KL(rho || rho_hat_j)``, ``rho_hat = soft_assignments(...).mean(rows)`` computed by
        the fused :func:`motorec.ops.code_usage` (no [N, K] table in forward or backward); 0 for an empty batch.

        Shapes:
            z_e [N, latent_dim], codes [N, L] -> scalar."""
        if z_e.shape[0] == 0:
            return z_e.new_zeros(())
        rho_hat = code_usage(z_e, codes, self.quantizer.codebooks.to(z_e.dtype), self.temperature, self.sparse_mode,
                             backend=self.quantizer.backend)
        return bernoulli_kl(self.sparse_rho, rho_hat).sum()

    def latent(self, x: Tensor, *, normalized: bool = False) -> Tensor:
        """The encoder output ``z_e`` (``normalized``: ``x``'s rows are already L2-normalized).

        Shapes:
            x: [N, input_dim] -> [N, latent_dim]
        """
        return self._encode(x, normalized)[1]

    @torch.no_grad()
    def quantize(self, x: Tensor, *, normalized: bool = False) -> Tuple[Tensor, Tensor]:
        """``(z_q, codes)`` without gradients or quantizer statistics updates (``normalized``: ``x``'s rows are
        already L2-normalized).

        Shapes:
            x: [N, input_dim] -> (z_q [N, latent_dim], codes [N, L] int64)
        """
        if self.continuous:
            raise RuntimeError("quantize() needs the quantizer; this RQVAE was built with continuous=True")
        return self.quantizer.quantize(self.latent(x, normalized=normalized))

    def encode(self, x: Tensor) -> Tensor:
        """Tokens of ``x``. Shapes: x [N, input_dim] -> codes [N, L] int64."""
        return self.quantize(x)[1]

    def decode_codes(self, codes: Tensor) -> Tensor:
        """Quantized latent of tokens. Shapes: codes [N, l] (l <= L) -> z_q [N, latent_dim]."""
        return self.quantizer.decode(codes)

    def reconstruct(self, z: Tensor) -> Tensor:
        """Decoder MLP on a latent (``z_q``, or ``decode_codes(codes)``). Shapes: z [N, latent_dim] -> [N, input_dim].

        Named apart from :meth:`encode` / :meth:`decode_codes`, which go between features and codes."""
        return self.decoder(z)

    @torch.no_grad()
    def init_codebooks(self, features: Tensor, **kwargs) -> None:
        """k-means init of the quantizer on the encoded catalog (``features`` [N, input_dim]); kwargs go to
        :meth:`ResidualQuantizer.init_codebooks`."""
        _, z_e = self._encode(features)
        self.quantizer.init_codebooks(z_e, **kwargs)
