"""Benchmark of ``motorec.ops.propagate``: the L-layer LightGCN readout ``mean(x, Ax, ..., A^L x)``.

Providers (``torch`` is the speedup baseline):

* ``torch``: torch CSR sparse matmul per layer (MKL / cuSPARSE), differentiated by torch autograd, i.e. what
  a user writes without motorec (its backward builds ``A^T`` on every call);
* ``torch-coo``: COO ``torch.sparse.mm`` per layer, as MMRec and RecBole run LightGCN (the COO tensor is built
  and coalesced once, outside the timed call, as those projects do);
* ``cpu`` / ``cuda``: ``motorec.ops.propagate(..., backend=...)`` (fused C++/CUDA kernels);
* ``torch_sparse``: ``torch_sparse.matmul`` per layer, only where ``torch_sparse`` is installed.

Graphs: power-law user-item graphs (:func:`motorec.testing.power_law_graph` on distinct pairs; two users per
item, Zipf-like degrees, isolated nodes), normalized as LightGCN's, from the size of Amazon-Sports (54k nodes,
553k nnz) up to 1.5M nodes / 36.5M nnz (GPU). Outputs are checked against the float64
:func:`motorec.testing.spmm_oracle` / :func:`motorec.testing.propagate_oracle`. Bytes counted per layer: one
pass over the CSR (rowptr, col, val), x and out. Half-precision inputs are computed by ``torch`` /
``torch-coo`` in float32 (torch CSR has no bf16 path on CPU), cast back.

Run alone: ``python -m benchmarks.bench_propagate --quick``.
"""
from __future__ import annotations

import sys
from typing import Callable, Dict, List, Optional, Tuple

import torch

from benchmarks.harness import GRAD_TOL, OUT_TOL, Case, CheckFailed, OpBench, Skip, check_close, main, rotation_sets
from motorec import ops
from motorec.graph import Graph
from motorec.testing import power_law_graph, propagate_oracle, spmm_oracle

# (nodes, nnz) of the benchmark graphs. Sports: the Amazon-Sports user-item graph's size.
SPORTS = (54_000, 553_000)
MNNZ = (100_000, 1_000_000)
MID = (400_000, 6_000_000)
LARGE = (1_500_000, 36_500_000)

_GRAPHS: Dict[Tuple[int, int, str, int], Tuple[Graph, Dict[str, torch.Tensor]]] = {}


def bench_graph(nodes: int, nnz: int, device: torch.device, *, seed: int = 0) -> Tuple[Graph, Dict[str, torch.Tensor]]:
    """The normalized LightGCN graph with ``nodes`` nodes (2/3 users) and ``nnz`` non-zeros, plus its torch
    CSR and COO forms and float64 values; cached per (nodes, nnz, device)."""
    key = (nodes, nnz, str(device), seed)
    if key not in _GRAPHS:
        while len(_GRAPHS) >= 2:  # spmm then propagate reuse the same two graphs; more would hold GBs
            _GRAPHS.pop(next(iter(_GRAPHS)))
        num_users = (2 * nodes) // 3
        num_items = nodes - num_users
        g = power_law_graph(num_users, num_items, nnz // 2, seed=seed, alpha=0.5, alpha_items=0.7, distinct=True,
                            device=device)
        forms = {
            "csr": torch.sparse_csr_tensor(g.rowptr, g.col.long(), g.val, (g.num_rows, g.num_cols),
                                           check_invariants=False),
            "coo": g.to_torch_sparse(torch.sparse_coo),
            "val64": g.val.double(),
        }
        _GRAPHS[key] = (g, forms)
    return _GRAPHS[key]


def _torch_sparse_tensor(g: Graph):
    try:
        import torch_sparse
    except ImportError as e:
        raise Skip(f"torch_sparse is not installed ({e.__class__.__name__})") from None
    return torch_sparse, torch_sparse.SparseTensor(rowptr=g.rowptr, col=g.col.long(), value=g.val,
                                                   sparse_sizes=(g.num_rows, g.num_cols), is_sorted=True,
                                                   trust_data=True)


class GraphBench(OpBench):
    """Shared by :class:`PropagateBench` and the single-layer :class:`benchmarks.bench_spmm.SpmmBench`."""

    providers = ("torch", "torch-coo", "cpu", "cuda", "torch_sparse")
    rate_unit = "GB/s"
    single_layer = False

    def graph_sizes(self, size: str, device: torch.device) -> List[Tuple[int, int]]:
        if device.type == "cuda":
            return [SPORTS, LARGE] if size == "quick" else [SPORTS, MID, LARGE]
        return [SPORTS, MNNZ] if size == "quick" else [SPORTS, MNNZ, (300_000, 4_000_000)]

    def configs(self, size, device):
        out = []
        for nodes, nnz in self.graph_sizes(size, device):
            dims = (64,) if size == "quick" else (64, 128)
            dtypes = (torch.float32,) if size == "quick" and device.type == "cpu" else (torch.float32, torch.bfloat16)
            if size == "quick" and device.type == "cuda" and (nodes, nnz) != LARGE:
                dtypes = (torch.float32,)
            for d in dims:
                for dt in dtypes:
                    p = {"nodes": nodes, "nnz": nnz, "D": d}
                    if not self.single_layer:
                        p["layers"] = 3
                    out.append((p, dt))
        return out

    def setup(self, params, dtype, device):
        g, forms = bench_graph(params["nodes"], params["nnz"], device)
        n, d = g.num_rows, params["D"]
        elt = torch.finfo(dtype).bits // 8
        n_sets = rotation_sets(2 * n * d * elt, device)
        gen = torch.Generator(device="cpu").manual_seed(1234)
        xs = [torch.randn(n, d, generator=gen).to(device=device, dtype=dtype) for _ in range(n_sets)]
        gouts = [torch.randn(n, d, generator=gen).to(device=device, dtype=dtype) for _ in range(n_sets)]
        layers = 1 if self.single_layer else params["layers"]
        csr_bytes = (g.num_rows + 1) * 8 + g.nnz * (g.col.element_size() + g.val.element_size())
        per_layer = csr_bytes + 2 * n * d * elt
        return {"graph": g, "forms": forms, "xs": xs, "gouts": gouts, "n_sets": n_sets, "layers": layers,
                "dtype": dtype, "bytes": per_layer * layers, "params": params, "ref": {}}

    # ------------------------------------------------------------------ providers
    def _fn(self, state, provider: str) -> Callable[[torch.Tensor], torch.Tensor]:
        g, forms, layers = state["graph"], state["forms"], state["layers"]

        if provider in ("torch", "torch-coo", "torch_sparse"):
            if provider == "torch":
                a = forms["csr"]
                mm = lambda h: a @ h  # noqa: E731
            elif provider == "torch-coo":
                a = forms["coo"]
                mm = lambda h: torch.sparse.mm(a, h)  # noqa: E731
            else:
                torch_sparse, st = _torch_sparse_tensor(g)
                mm = lambda h: torch_sparse.matmul(st, h)  # noqa: E731

            def fn(x):
                h = x if x.dtype in (torch.float32, torch.float64) else x.float()
                if self.single_layer:
                    return mm(h).to(x.dtype)
                acc = h
                for _ in range(layers):
                    h = mm(h)
                    acc = acc + h
                return (acc / (layers + 1)).to(x.dtype)

            return fn
        if provider in ("cpu", "cuda", "triton"):
            if self.single_layer:
                return lambda x: ops.spmm(g, x, backend=provider)
            return lambda x: ops.propagate(g, x, layers, backend=provider)
        raise Skip(f"unknown provider {provider!r}")

    def _reference(self, state, which: str) -> torch.Tensor:
        """float64 reference of the output on x set 0 (``out``) or of the gradient for gout set 0 (``grad``)."""
        if which not in state["ref"]:
            g = state["graph"]
            src = state["xs"][0] if which == "out" else state["gouts"][0]
            # The graph is symmetric (LightGCN's normalized adjacency): the gradient is the same operator.
            assert g.symmetric
            r = spmm_oracle(g, src) if self.single_layer else propagate_oracle(g, src, state["layers"])
            state["ref"][which] = r
        return state["ref"][which]

    def prepare(self, state, provider, mode):
        fn = self._fn(state, provider)
        xs, gouts, n_sets, dtype = state["xs"], state["gouts"], state["n_sets"], state["dtype"]
        tol, gtol = OUT_TOL[dtype], GRAD_TOL[dtype]
        amount = state["bytes"] * (2 if mode == "full" else 1)

        if mode == "forward":
            def run(i):
                with torch.no_grad():
                    return fn(xs[i])

            def check():
                out = run(0)
                if out.dtype != dtype:
                    raise CheckFailed(f"output dtype {out.dtype} != input dtype {dtype}")
                return check_close(out, self._reference(state, "out"), tol, "output"), ""

            return Case(run, n_sets, check, amount)

        leaves = [x.detach().requires_grad_(True) for x in xs]

        def fwd_bwd(i):
            out = fn(leaves[i])
            (gx,) = torch.autograd.grad(out, leaves[i], gouts[i])
            return out, gx

        def check():
            out, gx = fwd_bwd(0)
            e1 = check_close(out.detach(), self._reference(state, "out"), tol, "output")
            e2 = check_close(gx, self._reference(state, "grad"), gtol, "grad x")
            return max(e1, e2), ""

        if mode == "full":
            return Case(lambda i: fwd_bwd(i), n_sets, check, amount)
        if mode == "backward":
            outs: List[Optional[torch.Tensor]] = [None] * n_sets

            def run(i):
                if outs[i] is None:
                    outs[i] = fn(leaves[i])
                return torch.autograd.grad(outs[i], leaves[i], gouts[i], retain_graph=True)

            return Case(run, n_sets, check, amount)
        raise Skip(f"mode {mode!r} is not supported by {self.op}")


class PropagateBench(GraphBench):
    op = "propagate"


BENCHES = [PropagateBench()]

if __name__ == "__main__":
    sys.exit(main(BENCHES, description=__doc__))
