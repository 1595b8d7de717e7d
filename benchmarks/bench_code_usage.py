"""Benchmark of ``motorec.ops.code_usage``: the per-level, per-codeword mean soft assignment (the RQ-VAE sparsity
term's ``rho_hat``) over the residual inputs rebuilt from the tokens.

Providers (``torch`` is the speedup baseline):

* ``torch``: the reference (:mod:`motorec.reference.code_usage`: per level a matmul, an [N, K] softmax or
  sigmoid table and its mean; the explicit backward builds the same tables again) through
  ``motorec.ops.code_usage(..., backend="torch")``; this is what ``RQVAE.soft_assignments(...).mean(1)`` costs;
* ``cpu``: the C++ OpenMP kernel ([rows, K] tiles, never [N, K]); ``triton``: the fused Triton kernels (CUDA).

Modes: ``forward`` and ``full`` (forward, the loss ``<rho, w>`` with a fixed random ``w``, and the backward to
``z_e`` and the codebooks); ``backward`` on request.

Checks before timing, against float64 (:func:`motorec.testing.code_usage_oracle`: the reference on upcast
inputs, over row chunks so that its [rows, K] tables stay small): ``rho`` and both gradients within the
harness's float32 tolerances.

Rate: items/s (rows of ``z_e`` per second).

Run alone: ``python -m benchmarks.bench_code_usage --quick``.
"""
from __future__ import annotations

import sys
from typing import List, Optional

import torch

from benchmarks.harness import GRAD_TOL, OUT_TOL, Case, OpBench, Skip, check_close, main, rotation_sets
from motorec import ops
from motorec.testing import code_usage_oracle


def _shape(n, d, k, levels, mode="softmax"):
    return {"N": n, "D": d, "K": k, "L": levels, "mode": mode}


class CodeUsageBench(OpBench):
    op = "code_usage"
    providers = ("torch", "cpu", "triton")
    modes = ("forward", "backward", "full")
    default_modes = ("forward", "full")
    rate_unit = "items/s"
    temperature = 1.0

    def configs(self, size, device):
        f32 = torch.float32
        if device.type == "cpu":
            quick = [_shape(15000, 64, 256, 3), _shape(100000, 64, 256, 3), _shape(15000, 64, 256, 3, "sigmoid")]
            if size == "quick":
                return [(s, f32) for s in quick]
            return [(s, f32) for s in quick + [_shape(100000, 64, 256, 3, "sigmoid"), _shape(100000, 128, 1024, 3)]]
        quick = [_shape(100000, 64, 256, 3), _shape(1 << 20, 64, 256, 3)]
        if size == "quick":
            return [(s, f32) for s in quick]
        return [(s, f32) for s in quick + [_shape(1 << 20, 64, 256, 3, "sigmoid"), _shape(1 << 20, 128, 1024, 4)]]

    def shape_str(self, p):
        return f"N={p['N']},D={p['D']},K={p['K']},L={p['L']},{p['mode']}"

    def setup(self, params, dtype, device):
        n, d, k, levels = params["N"], params["D"], params["K"], params["L"]
        elt = torch.finfo(dtype).bits // 8
        n_sets = rotation_sets(n * d * elt, device)
        gen = torch.Generator(device="cpu").manual_seed(4321)
        zs = [torch.randn(n, d, generator=gen).to(device=device, dtype=dtype) for _ in range(n_sets)]
        scale = torch.tensor([0.7 ** j for j in range(levels)]).view(levels, 1, 1)
        cb = (torch.randn(levels, k, d, generator=gen) * scale).to(device=device, dtype=dtype)
        # Tokens as the quantizer would give them (the op's cost does not depend on which they are).
        codes = [ops.residual_quantize(z, cb).codes for z in zs]
        w = torch.randn(levels, k, generator=gen).to(device=device)
        return {"zs": zs, "codes": codes, "cb": cb, "w": w, "n_sets": n_sets, "dtype": dtype, "params": params,
                "ref": None}

    def _reference(self, state):
        if state["ref"] is None:
            p = state["params"]
            state["ref"] = code_usage_oracle(state["zs"][0], state["codes"][0], state["cb"], self.temperature,
                                             p["mode"], state["w"])
        return state["ref"]

    def prepare(self, state, provider, mode):
        if provider not in self.providers:
            raise Skip(f"unknown provider {provider!r}")
        zs, codes, cb, w, n_sets, dtype = (state[k] for k in ("zs", "codes", "cb", "w", "n_sets", "dtype"))
        cmode, t = state["params"]["mode"], self.temperature
        n = state["params"]["N"]
        ops.select_backend(self.op, provider, device=cb.device.type, dtype=dtype, n=n, dim=cb.shape[2],
                           k=cb.shape[1], levels=cb.shape[0])  # raises BackendUnavailable: recorded as a skip

        def fwd(z, c, cbk):
            return ops.code_usage(z, c, cbk, t, cmode, backend=provider)

        def check_rho(rho):
            return check_close(rho, self._reference(state)[0], OUT_TOL[dtype], "rho")

        if mode == "forward":
            def run(i):
                with torch.no_grad():
                    return fwd(zs[i], codes[i], cb)

            return Case(run, n_sets, lambda: (check_rho(run(0)), ""), float(n))

        leaves = [z.detach().requires_grad_(True) for z in zs]
        cb_leaf = cb.detach().requires_grad_(True)

        def loss_of(i):
            rho = fwd(leaves[i], codes[i], cb_leaf)
            return rho, (rho * w).sum()

        def check():
            rho, loss = loss_of(0)
            gz, gc = torch.autograd.grad(loss, [leaves[0], cb_leaf])
            _, rgz, rgc = self._reference(state)
            e0 = check_rho(rho.detach())
            e1 = check_close(gz, rgz, GRAD_TOL[dtype], "grad z_e")
            e2 = check_close(gc, rgc, GRAD_TOL[dtype], "grad codebooks")
            return max(e0, e1, e2), ""

        if mode == "full":
            def run(i):
                _, loss = loss_of(i)
                return torch.autograd.grad(loss, [leaves[i], cb_leaf])

            return Case(run, n_sets, check, float(n))
        if mode == "backward":
            losses: List[Optional[torch.Tensor]] = [None] * n_sets

            def run(i):
                if losses[i] is None:
                    losses[i] = loss_of(i)[1]
                return torch.autograd.grad(losses[i], [leaves[i], cb_leaf], retain_graph=True)

            return Case(run, n_sets, check, float(n))
        raise Skip(f"mode {mode!r} is not supported by {self.op}")


BENCHES = [CodeUsageBench()]

if __name__ == "__main__":
    sys.exit(main(BENCHES, description=__doc__))
