"""Benchmark of ``motorec.ops.source_attention``: attention over M [N, d] sources (MoToRec's fusion of its
modality views, ``softmax_m(q . tanh(W h_m + b))``-weighted sum).

Providers (``torch`` is the speedup baseline):

* ``torch``: the reference's sigmoid form (:mod:`motorec.reference.source_attention`: one [N, d] x [d, d]
  product per source into an [M, N, d] buffer, saved for the backward, and [N, d] temporaries per source in
  the backward) through ``motorec.ops.source_attention(..., backend="torch")``;
* ``cpu``: the C++ OpenMP kernel (cache-sized row blocks, recomputed in the backward; no [M, N, d] buffer).

Modes: ``forward`` and ``full`` (forward, the loss ``<out, g>`` with a fixed random ``g``, and the backward to
every source and the parameters); ``backward`` on request.

Checks before timing, against float64 (the tanh form under autograd on upcast inputs): the output, the
weights and every gradient within the harness's float32 tolerances.

Rate: items/s (rows per second).

Run alone: ``python -m benchmarks.bench_source_attention --quick``.
"""
from __future__ import annotations

import math
import sys
from typing import List, Optional

import torch

from benchmarks.harness import GRAD_TOL, OUT_TOL, Case, OpBench, Skip, check_close, main, rotation_sets
from motorec import ops
from motorec.reference import source_attention as ref_sa


def _shape(m, n, d):
    return {"M": m, "N": n, "d": d}


class SourceAttentionBench(OpBench):
    op = "source_attention"
    providers = ("torch", "cpu")
    modes = ("forward", "backward", "full")
    default_modes = ("forward", "full")
    rate_unit = "items/s"

    def configs(self, size, device):
        f32 = torch.float32
        # MoToRec's two modalities at d = 64: the bench_train catalogs (15k and 100k items), then a million
        quick = [_shape(2, 15000, 64), _shape(2, 100000, 64)]
        if device.type != "cpu":
            quick = [_shape(2, 100000, 64), _shape(2, 1 << 20, 64)]
        if size == "quick":
            return [(s, f32) for s in quick]
        return [(s, f32) for s in quick + [_shape(3, 100000, 128)]]

    def shape_str(self, p):
        return f"M={p['M']},N={p['N']},d={p['d']}"

    def setup(self, params, dtype, device):
        m, n, d = params["M"], params["N"], params["d"]
        elt = torch.finfo(dtype).bits // 8
        n_sets = rotation_sets(m * n * d * elt, device)
        gen = torch.Generator(device="cpu").manual_seed(2468)
        hss = [[torch.randn(n, d, generator=gen).to(device=device, dtype=dtype) for _ in range(m)]
               for _ in range(n_sets)]
        w = ((torch.rand(d, d, generator=gen) * 2 - 1) / math.sqrt(d)).to(device=device, dtype=dtype)
        b = ((torch.rand(d, generator=gen) * 2 - 1) / math.sqrt(d)).to(device=device, dtype=dtype)
        q = torch.randn(d, generator=gen).to(device=device, dtype=dtype)
        g = torch.randn(n, d, generator=gen).to(device=device, dtype=dtype)
        return {"hss": hss, "w": w, "b": b, "q": q, "g": g, "n_sets": n_sets, "dtype": dtype, "params": params,
                "ref": None}

    def _reference(self, state):
        """float64 (out, attn, grad_hs..., grad_w, grad_b, grad_q) for the loss <out, g>."""
        if state["ref"] is None:
            leaves = [t.detach().double().requires_grad_() for t in (*state["hss"][0], state["w"], state["b"],
                                                                     state["q"])]
            m = state["params"]["M"]
            out, attn = ref_sa.source_attention_autograd(leaves[:m], *leaves[m:])
            grads = torch.autograd.grad((out * state["g"].double()).sum(), leaves)
            state["ref"] = (out.detach(), attn.detach(), *grads)
        return state["ref"]

    def prepare(self, state, provider, mode):
        if provider not in self.providers:
            raise Skip(f"unknown provider {provider!r}")
        hss, w, b, q, g, n_sets, dtype = (state[k] for k in ("hss", "w", "b", "q", "g", "n_sets", "dtype"))
        p = state["params"]
        ops.select_backend(self.op, provider, device=w.device.type, dtype=dtype, n=p["N"], dim=p["d"],
                           sources=p["M"])  # raises BackendUnavailable: recorded as a skip

        def check_out(out, attn):
            ref = self._reference(state)
            return max(check_close(out, ref[0], OUT_TOL[dtype], "out"), check_close(attn, ref[1], OUT_TOL[dtype],
                                                                                    "attn"))

        if mode == "forward":
            def run(i):
                with torch.no_grad():
                    return ops.source_attention(hss[i], w, b, q, backend=provider)

            return Case(run, n_sets, lambda: (check_out(*run(0)), ""), float(p["N"]))

        leaf_sets = [[h.detach().requires_grad_(True) for h in hs] for hs in hss]
        params = [t.detach().requires_grad_(True) for t in (w, b, q)]

        def loss_of(i):
            out, attn = ops.source_attention(leaf_sets[i], *params, backend=provider)
            return out, attn, (out * g).sum()

        def check():
            out, attn, loss = loss_of(0)
            grads = torch.autograd.grad(loss, leaf_sets[0] + params)
            ref = self._reference(state)
            errs = [check_out(out.detach(), attn.detach())]
            names = [f"grad hs[{j}]" for j in range(p["M"])] + ["grad weight", "grad bias", "grad query"]
            for got, want, name in zip(grads, ref[2:], names):
                errs.append(check_close(got, want, GRAD_TOL[dtype], name))
            return max(errs), ""

        if mode == "full":
            def run(i):
                return torch.autograd.grad(loss_of(i)[2], leaf_sets[i] + params)

            return Case(run, n_sets, check, float(p["N"]))
        if mode == "backward":
            losses: List[Optional[torch.Tensor]] = [None] * n_sets

            def run(i):
                if losses[i] is None:
                    losses[i] = loss_of(i)[2]
                return torch.autograd.grad(losses[i], leaf_sets[i] + params, retain_graph=True)

            return Case(run, n_sets, check, float(p["N"]))
        raise Skip(f"mode {mode!r} is not supported by {self.op}")


BENCHES = [SourceAttentionBench()]

if __name__ == "__main__":
    sys.exit(main(BENCHES, description=__doc__))
