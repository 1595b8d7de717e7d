"""motorec beside what a user runs today: the libraries each motorec op replaces, same inputs, same checks.

Each anchor provider's output is checked against the float64 reference (the checks of
:mod:`benchmarks.bench_propagate` and :mod:`benchmarks.bench_residual_quantize`) before it is timed; a library
that is not installed gives ``skipped:<package> is not installed`` rows. These libraries are benchmark extras
(``pip install motorec[bench]``; torch_sparse builds from source, see below), never runtime requirements.

LightGCN propagation, ``mean(x, Ax, A^2 x, A^3 x)`` on the power-law graphs of ``bench_propagate``
(op ``propagate``; ``torch`` = torch CSR matmul + autograd, the baseline of every speedup):

* ``cpu``: ``motorec.ops.propagate(..., backend="cpu")`` (fused C++ kernel on the motorec Graph);
* ``motorec.nn.LGConv``: the module, called as PyG's is, ``conv(x, edge_index)`` per layer with
  ``normalize=True``; the normalized CSR is built once and cached (first call, outside the timed calls);
* ``pyg.LGConv``: ``torch_geometric.nn.LGConv()`` (``normalize=True``) per layer on ``edge_index``, as PyG's
  ``LightGCN`` model calls it: ``gcn_norm`` then gather/scatter message passing, on every call;
* ``pyg.LGConv-prenorm``: ``LGConv(normalize=False)`` with the normalized weights passed as
  ``edge_weight`` (PyG without its per-call normalization: its fastest ``edge_index`` path);
* ``pyg.LGConv-SparseTensor``: ``LGConv()`` on a ``torch_sparse.SparseTensor`` ``adj_t`` (needs torch_sparse);
* ``torch_sparse``: ``torch_sparse.matmul`` per layer (as in ``bench_propagate``).

Residual quantization, encoding only (op ``residual_quantize``, mode ``forward``; ``torch`` = motorec's eager
reference, the baseline), every provider loaded with the same ``[L, K, D]`` codebooks:

* ``cpu``: ``motorec.ops.residual_quantize(..., backend="cpu")`` (codes, quantized and per-level residual norms);
* ``motorec.nn.ResidualQuantizer``: the module in eval mode (quantized, codes, losses);
* ``vqp.ResidualVQ``: ``vector_quantize_pytorch.ResidualVQ`` in eval mode, each level's ``_codebook.embed``
  set to our codebook (quantized, codes, commitment loss);
* ``faiss.ResidualQuantizer``: FAISS's ``ResidualQuantizer(D, L, log2 K)`` with ``max_beam_size = 1``
  (greedy encoding, the same algorithm), codebooks copied in, ``compute_codes`` timed (packed codes only:
  it returns less than the others); checked on its unpacked codes and its ``decode``. FAISS runs with
  ``omp_set_num_threads(torch.get_num_threads())``.

torch_sparse: not on PyPI as a wheel for this torch; it builds from source (about 14 minutes on this 2-core
CPU when idle; a first try here under a load average of ~11 compiled 2 of its ~15 extensions in 25 minutes).
CI does not build it: that would take a third of CI's time budget for one provider; its rows are measured
where a session installs it (``pip install --no-build-isolation --no-deps torch-sparse``).

Run: ``python -m benchmarks.bench_anchors --quick`` (also collected by ``python -m benchmarks.run``).
"""
from __future__ import annotations

import sys

import torch

from benchmarks.bench_propagate import SPORTS, PropagateBench
from benchmarks.bench_residual_quantize import CPU_TARGET, ResidualQuantizeBench
from benchmarks.harness import OUT_TOL, Case, Skip, check_close, main


def _need(module: str, pip_name: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        raise Skip(f"{pip_name} is not installed ({type(e).__name__}: {e})") from None


class PropagateAnchors(PropagateBench):
    providers = ("torch", "cpu", "motorec.nn.LGConv", "pyg.LGConv", "pyg.LGConv-prenorm",
                 "pyg.LGConv-SparseTensor", "torch_sparse")

    def graph_sizes(self, size, device):
        return [SPORTS] if size == "quick" else super().graph_sizes(size, device)

    def _edge_index(self, state):
        if "edge_index" not in state:
            g = state["graph"]
            row = torch.repeat_interleave(torch.arange(g.num_rows, device=g.rowptr.device),
                                          g.rowptr[1:] - g.rowptr[:-1])
            # out = A x: messages flow from column j (source) to row i (target)
            state["edge_index"] = torch.stack([g.col.long(), row])
        return state["edge_index"]

    @staticmethod
    def _readout(layer, layers: int):
        def fn(x):
            h = acc = x
            for _ in range(layers):
                h = layer(h)
                acc = acc + h
            return acc / (layers + 1)

        return fn

    def _fn(self, state, provider):
        layers = state["layers"]
        if provider == "motorec.nn.LGConv":
            from motorec.nn import LGConv

            conv, ei = LGConv(normalize=True), self._edge_index(state)
            conv.graph(ei, state["graph"].num_rows)  # build and cache the normalized CSR once, untimed
            return self._readout(lambda h: conv(h, ei), layers)
        if provider.startswith("pyg."):
            nn = _need("torch_geometric.nn", "torch_geometric")
            ei = self._edge_index(state)
            if provider == "pyg.LGConv":
                conv = nn.LGConv()
                return self._readout(lambda h: conv(h, ei), layers)
            if provider == "pyg.LGConv-prenorm":
                conv, w = nn.LGConv(normalize=False), state["graph"].val
                return self._readout(lambda h: conv(h, ei, w), layers)
            if provider == "pyg.LGConv-SparseTensor":
                torch_sparse = _need("torch_sparse", "torch_sparse")
                g = state["graph"]
                adj_t = torch_sparse.SparseTensor(rowptr=g.rowptr, col=g.col.long(), value=g.val,
                                                  sparse_sizes=(g.num_rows, g.num_cols), is_sorted=True,
                                                  trust_data=True)
                conv = nn.LGConv(normalize=False)  # adj_t carries the normalized values
                return self._readout(lambda h: conv(h, adj_t), layers)
        return super()._fn(state, provider)


class ResidualQuantizeAnchors(ResidualQuantizeBench):
    providers = ("torch", "cpu", "motorec.nn.ResidualQuantizer", "vqp.ResidualVQ", "faiss.ResidualQuantizer")
    modes = ("forward",)
    default_modes = ("forward",)

    def configs(self, size, device):
        if size == "quick" or device.type != "cpu":
            return [(dict(CPU_TARGET), torch.float32)]
        return [(dict(CPU_TARGET), torch.float32), (dict(CPU_TARGET, K=1024), torch.float32)]

    def _check_codes_quantized(self, state, codes, quantized):
        (q64, _), note = self.check_codes(state, codes.to(torch.int64), torch.finfo(torch.float32).eps)
        return check_close(quantized, q64, OUT_TOL[state["dtype"]], "quantized"), note

    def prepare(self, state, provider, mode):
        if provider in ("torch", "cpu"):
            return super().prepare(state, provider, mode)
        if mode != "forward":
            raise Skip(f"{provider} is benchmarked for encoding (forward) only")
        xs, cb, n_sets = state["xs"], state["cb"], state["n_sets"]
        levels, k, d = cb.shape
        flops = state["flops"]

        if provider == "motorec.nn.ResidualQuantizer":
            from motorec.nn import ResidualQuantizer

            rq = ResidualQuantizer(dim=d, num_levels=levels, codebook_size=k, kmeans_init=False).to(cb.device).eval()
            with torch.no_grad():
                rq.codebooks.copy_(cb)

            def run(i):
                with torch.no_grad():
                    return rq(xs[i])

            def check():
                q, codes, _ = run(0)
                return self._check_codes_quantized(state, codes, q)

            return Case(run, n_sets, check, flops)

        if provider == "vqp.ResidualVQ":
            vqp = _need("vector_quantize_pytorch", "vector-quantize-pytorch")
            rvq = vqp.ResidualVQ(dim=d, num_quantizers=levels, codebook_size=k).to(cb.device).eval()
            with torch.no_grad():
                for lvl, layer in enumerate(rvq.layers):
                    layer._codebook.embed.copy_(cb[lvl].unsqueeze(0))
                    layer._codebook.initted.fill_(True)

            def run(i):
                with torch.no_grad():
                    return rvq(xs[i])

            def check():
                q, codes, _ = run(0)
                return self._check_codes_quantized(state, codes, q)

            return Case(run, n_sets, check, flops, note="eval mode, same codebooks")

        if provider == "faiss.ResidualQuantizer":
            faiss = _need("faiss", "faiss-cpu")
            if state["xs"][0].device.type != "cpu":
                raise Skip("faiss.ResidualQuantizer is benchmarked on CPU tensors")
            nbits = k.bit_length() - 1
            if 1 << nbits != k:
                raise Skip(f"FAISS codebooks hold 2^nbits codewords; K={k} is not a power of two")
            faiss.omp_set_num_threads(torch.get_num_threads())
            rq = faiss.ResidualQuantizer(d, levels, nbits)
            rq.max_beam_size = 1  # greedy: the nearest codeword per level, as motorec and ResidualVQ encode
            faiss.copy_array_to_vector(cb.contiguous().numpy().ravel(), rq.codebooks)
            rq.is_trained = True
            arrays = [x.contiguous().numpy() for x in xs]

            def run(i):
                return rq.compute_codes(arrays[i])

            def check():
                packed = run(0)
                bits = torch.from_numpy(packed).view(torch.uint8)
                codes = _unpack_codes(bits, levels, nbits)
                q = torch.from_numpy(rq.decode(packed))
                return self._check_codes_quantized(state, codes, q)

            return Case(run, n_sets, check, flops, note=f"max_beam_size=1, {faiss.omp_get_max_threads()} threads; "
                                                        "times compute_codes (packed codes only)")
        raise Skip(f"unknown provider {provider!r}")


def _unpack_codes(packed: torch.Tensor, levels: int, nbits: int) -> torch.Tensor:
    """FAISS's packed codes (``nbits`` per level, least significant bit first) as [N, L] int64.

    Shapes:
        packed: [N, code_size] uint8 -> [N, L] int64
    """
    n = packed.shape[0]
    if nbits == 8:
        return packed[:, :levels].to(torch.int64)
    bits = ((packed.to(torch.int64).unsqueeze(-1) >> torch.arange(8)) & 1).reshape(n, -1)[:, :levels * nbits]
    return (bits.reshape(n, levels, nbits) << torch.arange(nbits)).sum(-1)


BENCHES = [PropagateAnchors(), ResidualQuantizeAnchors()]

if __name__ == "__main__":
    sys.exit(main(BENCHES, description=__doc__))
