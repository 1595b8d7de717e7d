"""Benchmark of ``motorec.ops.residual_quantize``: nearest-codeword search over L residual levels.

Providers (``torch`` is the speedup baseline):

* ``torch``: the eager reference (per level matmul + argmin + gather; an N x K distance matrix per level),
  through ``motorec.ops.residual_quantize(..., backend="torch")`` and its reference backward. The reference
  has no host sync (duplicated codewords are resolved by a K x K equality map, not ``torch.unique``);
* ``torch_compile``: ``torch.compile`` of the same search: in ``forward`` mode of
  :func:`~motorec.reference.residual_quantize.residual_quantize_forward`, in ``full`` / ``backward`` mode of
  :func:`~motorec.reference.residual_quantize.residual_quantize_autograd` (the same outputs, with the op's
  gradients as plain autograd, so AOTAutograd compiles the backward too);
* ``torch_tf32`` / ``torch_compile_tf32``: the two above with float32 matmuls on TF32 tensor cores
  (``torch.set_float32_matmul_precision("high")`` around every call; CUDA only), the precision of a
  single-pass tensor-core search. Their codes are checked with TF32's rounding margin, not float32's;
* ``cpu``: the C++ OpenMP kernel; ``triton``: the fused Triton kernels (CUDA tensors).

Modes: ``forward`` (inference encoding), ``full`` (a quantizer training step: forward, the loss
``residual_sq.mean() + <quantized, w>`` with a fixed random ``w``, and backward to x and the codebooks), and
``backward`` (the backward alone) on request.

Checks before timing, against float64 (:mod:`motorec.reference.residual_quantize` on upcast inputs): codes
equal the float64 codes except on rows where, at the first level that differs, the provider's codeword is
no farther from the float64 residual than a rounding margin (``2 D eps (|r| + |c|)^2``) — the margin is
computed per row, not assumed; ``quantized`` and ``residual_sq`` equal their float64 values recomputed from
the provider's codes; gradients equal the float64 reference backward at the provider's codes.

Rate: TFLOP/s counting the search, ``2 N K D L`` flops per call (forward and full).

Run alone: ``python -m benchmarks.bench_residual_quantize --quick``.
"""
from __future__ import annotations

import sys
from typing import List, Optional, Tuple

import torch

from benchmarks.harness import GRAD_TOL, OUT_TOL, Case, CheckFailed, OpBench, Skip, check_close, main, rotation_sets
from motorec import ops
from motorec.reference import residual_quantize as ref_rq

CPU_TARGET = {"N": 65536, "D": 64, "K": 256, "L": 3}
GPU_TARGET = {"N": 1 << 20, "D": 64, "K": 256, "L": 3}


def _shape(n, d, k, levels):
    return {"N": n, "D": d, "K": k, "L": levels}


def reference_forward_f64(x: torch.Tensor, codebooks: torch.Tensor, *, chunk_bytes: int) -> Tuple[torch.Tensor, ...]:
    """The float64 reference forward on upcast inputs, over row chunks so that the [rows, K] float64 distance
    matrices stay within ``chunk_bytes``. Rows are independent, so chunking changes nothing.

    Shapes:
        x: [N, D], codebooks: [L, K, D] -> codes [N, L] int64, quantized [N, D] f64, residual_sq [N, L] f64.
    """
    x64, cb64 = x.double(), codebooks.double()
    n, k = x.shape[0], codebooks.shape[1]
    rows = max(1, chunk_bytes // (k * 8 * 4))
    parts = [ref_rq.residual_quantize_forward(x64[s:s + rows], cb64) for s in range(0, n, rows)]
    if not parts:
        return ref_rq.residual_quantize_forward(x64, cb64)
    return tuple(torch.cat(p) for p in zip(*parts))


def decode_f64(x64: torch.Tensor, cb64: torch.Tensor, codes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """float64 ``(quantized, residual_sq)`` implied by ``codes``: the sum of the chosen codewords, and
    ``||x - sum_{j<=k} C_j[codes[:, j]]||^2`` per level k."""
    r = x64.clone()
    rsq = torch.empty(codes.shape, dtype=torch.float64, device=x64.device)
    for k in range(cb64.shape[0]):
        r -= cb64[k].index_select(0, codes[:, k])
        rsq[:, k] = (r * r).sum(1)
    return x64 - r, rsq


def check_codes(codes: torch.Tensor, ref_codes: torch.Tensor, x64: torch.Tensor, cb64: torch.Tensor,
                eps: float) -> int:
    """Raise :class:`CheckFailed` unless ``codes`` equal ``ref_codes`` wherever the choice is not a near tie.

    For each row that differs, take the first level ``k`` where it does (earlier levels agree, so the float64
    residual ``r`` entering level k is the provider's too, up to rounding), and compute the margin
    ``||r - C_k[codes]||^2 - ||r - C_k[ref]||^2`` in float64. It must be at most the rounding bound of a
    squared distance computed in the kernel's precision, ``2 D eps (||r|| + max ||c||)^2``.
    Returns the number of near-tie rows (rows that differ within that margin).
    """
    num_levels, k_size, dim = cb64.shape
    if codes.shape != ref_codes.shape:
        raise CheckFailed(f"codes: shape {tuple(codes.shape)} != reference {tuple(ref_codes.shape)}")
    if codes.dtype != torch.int64:
        raise CheckFailed(f"codes: dtype {codes.dtype}, expected torch.int64")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= k_size):
        raise CheckFailed(f"codes: out of range [0, {k_size}): min {int(codes.min())}, max {int(codes.max())}")
    diff = codes != ref_codes
    rows = diff.any(1).nonzero().squeeze(1)
    if rows.numel() == 0:
        return 0
    first = diff[rows].int().argmax(1)  # first differing level per row
    r = x64.index_select(0, rows).clone()
    rc = ref_codes.index_select(0, rows)
    pc = codes.index_select(0, rows)
    for k in range(num_levels):
        before = (first > k).unsqueeze(1)
        r -= torch.where(before, cb64[k].index_select(0, rc[:, k]), torch.zeros_like(r))
    c_ref = cb64[first, rc.gather(1, first.unsqueeze(1)).squeeze(1)]
    c_prov = cb64[first, pc.gather(1, first.unsqueeze(1)).squeeze(1)]
    gap = ((r - c_prov) ** 2).sum(1) - ((r - c_ref) ** 2).sum(1)
    scale = r.norm(dim=1) + torch.maximum(c_ref.norm(dim=1), c_prov.norm(dim=1))
    bound = 2.0 * dim * eps * scale * scale
    bad = gap > bound
    if bool(bad.any()):
        j = int(bad.nonzero()[0, 0])
        raise CheckFailed(
            f"codes: {int(bad.sum())} of {codes.shape[0]} rows pick a codeword farther than the float64 best "
            f"beyond rounding (e.g. row {int(rows[j])} level {int(first[j])}: code {int(pc[j, first[j]])} vs "
            f"{int(rc[j, first[j]])}, distance gap {float(gap[j]):.3g} > margin {float(bound[j]):.3g})")
    return int(rows.numel())


class ResidualQuantizeBench(OpBench):
    op = "residual_quantize"
    providers = ("torch", "torch_tf32", "torch_compile", "torch_compile_tf32", "cpu", "triton")
    modes = ("forward", "backward", "full")
    default_modes = ("forward", "full")
    rate_unit = "TFLOP/s"

    def configs(self, size, device):
        f32 = torch.float32
        if device.type == "cpu":
            if size == "quick":
                return [(dict(CPU_TARGET), f32)]
            grid = [_shape(65536, d, k, lv) for d in (64, 128) for k in (256, 1024) for lv in (3, 4)]
            return [(s, f32) for s in grid] + [(dict(GPU_TARGET), f32)]
        if size == "quick":  # the target shape only: torch.compile takes tens of seconds per shape
            return [(dict(GPU_TARGET), f32)]
        grid = [_shape(n, d, k, lv) for n in (65536, 1 << 20, 1 << 22) for d in (64, 128) for k in (256, 1024)
                for lv in (3, 4)]
        return [(s, f32) for s in grid] + [(dict(GPU_TARGET), torch.bfloat16)]

    def shape_str(self, p):
        return f"N={p['N']},D={p['D']},K={p['K']},L={p['L']}"

    def setup(self, params, dtype, device):
        n, d, k, levels = params["N"], params["D"], params["K"], params["L"]
        elt = torch.finfo(dtype).bits // 8
        n_sets = rotation_sets(n * d * elt, device)
        gen = torch.Generator(device="cpu").manual_seed(4321)
        xs = [torch.randn(n, d, generator=gen).to(device=device, dtype=dtype) for _ in range(n_sets)]
        # Later levels quantize smaller residuals: shrink their codebooks, as a trained RQ's are.
        scale = torch.tensor([0.7 ** j for j in range(levels)]).view(levels, 1, 1)
        cb = (torch.randn(levels, k, d, generator=gen) * scale).to(device=device, dtype=dtype)
        w = (torch.randn(n, d, generator=gen) / n).to(device=device)
        return {"xs": xs, "cb": cb, "w": w, "n_sets": n_sets, "dtype": dtype, "params": params, "ref": None,
                "flops": 2.0 * n * k * d * levels, "compiled": {}}

    def _reference(self, state):
        if state["ref"] is None:
            chunk = (1 << 30) if state["cb"].is_cuda else (256 << 20)
            state["ref"] = reference_forward_f64(state["xs"][0], state["cb"], chunk_bytes=chunk)
        return state["ref"]

    def _forward_fn(self, state, provider, mode="forward"):
        tf32 = provider.endswith("_tf32")
        if tf32 and state["cb"].device.type != "cuda":
            raise Skip("TF32 is a CUDA tensor-core mode; on the CPU the float32 rows are the baseline")
        base = provider[:-len("_tf32")] if tf32 else provider
        if base == "torch_compile":
            fn = ref_rq.residual_quantize_forward if mode == "forward" else ref_rq.residual_quantize_autograd
            key = (provider, mode)
            if key not in state["compiled"]:
                torch._dynamo.reset()  # a fresh compile per shape, not a recompile limit hit mid-run
                state["compiled"] = {key: torch.compile(fn, dynamic=False)}
            compiled = state["compiled"][key]
            call = lambda x, cb: compiled(x, cb)  # noqa: E731
        elif provider in ("torch", "torch_tf32", "cpu", "triton", "cuda"):
            call = lambda x, cb: tuple(ops.residual_quantize(x, cb, backend=base))  # noqa: E731
        else:
            raise Skip(f"unknown provider {provider!r}")
        if not tf32:
            return call

        def with_tf32(x, cb):
            prev = torch.get_float32_matmul_precision()
            torch.set_float32_matmul_precision("high")
            try:
                return call(x, cb)
            finally:
                torch.set_float32_matmul_precision(prev)

        return with_tf32

    def _check_forward(self, state, out, provider="") -> Tuple[float, str]:
        codes, q, rsq = out
        dtype = state["dtype"]
        x64, cb64 = state["xs"][0].double(), state["cb"].double()
        ref_codes = self._reference(state)[0]
        eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
        if provider.endswith("_tf32") and dtype == torch.float32:
            eps = 2.0 ** -10  # TF32 keeps 10 mantissa bits of each matmul operand
        ties = check_codes(codes, ref_codes, x64, cb64, eps)
        q64, rsq64 = decode_f64(x64, cb64, codes)
        if q.dtype != dtype:
            raise CheckFailed(f"quantized: dtype {q.dtype}, expected {dtype}")
        e1 = check_close(q, q64, OUT_TOL[dtype], "quantized")
        e2 = check_close(rsq, rsq64, OUT_TOL[torch.float64 if dtype == torch.float64 else torch.float32],
                         "residual_sq")
        return max(e1, e2), (f"{ties} near-tie rows" if ties else "")

    def prepare(self, state, provider, mode):
        xs, cb, w, n_sets, dtype = state["xs"], state["cb"], state["w"], state["n_sets"], state["dtype"]
        fwd = self._forward_fn(state, provider, mode)
        flops = state["flops"]

        if mode == "forward":
            def run(i):
                with torch.no_grad():
                    return fwd(xs[i], cb)

            return Case(run, n_sets, lambda: self._check_forward(state, run(0), provider), flops)

        leaves = [x.detach().requires_grad_(True) for x in xs]
        cb_leaf = cb.detach().requires_grad_(True)

        def loss_of(i):
            codes, q, rsq = fwd(leaves[i], cb_leaf)
            return (codes, q, rsq), rsq.mean() + (q.float() * w).sum()

        def check():
            out, loss = loss_of(0)
            gx, gc = torch.autograd.grad(loss, [leaves[0], cb_leaf])
            err, note = self._check_forward(state, tuple(t.detach() for t in out), provider)
            codes = out[0]
            n, levels = codes.shape
            x64, cb64 = xs[0].double(), cb.double()
            gr = torch.full((n, levels), 1.0 / max(n * levels, 1), dtype=torch.float64, device=x64.device)
            rgx, rgc = ref_rq.residual_quantize_backward(w.double(), gr, x64, cb64, codes)
            e1 = check_close(gx, rgx, GRAD_TOL[dtype], "grad x")
            e2 = check_close(gc, rgc, GRAD_TOL[dtype], "grad codebooks")
            return max(err, e1, e2), note

        if mode == "full":
            def run(i):
                _, loss = loss_of(i)
                return torch.autograd.grad(loss, [leaves[i], cb_leaf])

            return Case(run, n_sets, check, flops)
        if mode == "backward":
            losses: List[Optional[torch.Tensor]] = [None] * n_sets

            def run(i):
                if losses[i] is None:
                    losses[i] = loss_of(i)[1]
                return torch.autograd.grad(losses[i], [leaves[i], cb_leaf], retain_graph=True)

            return Case(run, n_sets, check, None)
        raise Skip(f"mode {mode!r} is not supported by {self.op}")


BENCHES = [ResidualQuantizeBench()]

if __name__ == "__main__":
    sys.exit(main(BENCHES, description=__doc__))
