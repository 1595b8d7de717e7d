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

Checks before timing, against float64 (the shared oracles of :mod:`motorec.testing`): codes pass
:func:`~motorec.testing.check_codes` against :func:`~motorec.testing.rq_oracle` (exact float64 codes except on
rows where, at the first level that differs, the choice is a near-tie and the provider's codeword is no
farther from the float64 residual than a rounding margin ``2 D eps (|r| + |c|)^2``; the margin is computed per
row, not assumed); ``quantized`` and ``residual_sq`` equal their float64 values recomputed from the provider's
codes (:func:`~motorec.testing.rq_decode_oracle`); gradients equal the float64 reference backward at the
provider's codes.

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
from motorec.testing import RQOracle, check_codes, rq_decode_oracle, rq_oracle

CPU_TARGET = {"N": 65536, "D": 64, "K": 256, "L": 3}
GPU_TARGET = {"N": 1 << 20, "D": 64, "K": 256, "L": 3}


def _shape(n, d, k, levels):
    return {"N": n, "D": d, "K": k, "L": levels}


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

    def _oracle(self, state) -> RQOracle:
        """:func:`~motorec.testing.rq_oracle` of the first input set, computed once per shape."""
        if state["ref"] is None:
            state["ref"] = rq_oracle(state["xs"][0], state["cb"])
        return state["ref"]

    def check_codes(self, state, codes: torch.Tensor, eps: float) -> Tuple[torch.Tensor, str]:
        """Check a provider's codes of the first input set with rounding ``2 D eps``; returns the float64
        ``quantized`` they imply and a note counting the near-tie rows where they differ from the oracle."""
        x, cb = state["xs"][0], state["cb"]
        res = check_codes(codes, x, cb, rounding=2.0 * cb.shape[2] * eps, oracle=self._oracle(state))
        return rq_decode_oracle(x, cb, codes), (f"{res.differing_rows} near-tie rows" if res.differing_rows else "")

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
        eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
        if provider.endswith("_tf32") and dtype == torch.float32:
            eps = 2.0 ** -10  # TF32 keeps 10 mantissa bits of each matmul operand
        (q64, rsq64), note = self.check_codes(state, codes, eps)
        if q.dtype != dtype:
            raise CheckFailed(f"quantized: dtype {q.dtype}, expected {dtype}")
        e1 = check_close(q, q64, OUT_TOL[dtype], "quantized")
        e2 = check_close(rsq, rsq64, OUT_TOL[torch.float64 if dtype == torch.float64 else torch.float32],
                         "residual_sq")
        return max(e1, e2), note

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
