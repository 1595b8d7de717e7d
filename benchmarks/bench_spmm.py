"""Benchmark of ``motorec.ops.spmm``: one CSR sparse x dense product (a single LightGCN layer).

Same providers, graphs, inputs, checks and byte count as :mod:`benchmarks.bench_propagate` with one layer:
``torch`` (torch CSR + autograd, the baseline) | ``torch-coo`` | ``cpu`` | ``cuda`` | ``torch_sparse``.
Shape string ``nodes=…,nnz=…,D=…``.

Run alone: ``python -m benchmarks.bench_spmm --quick``.
"""
from __future__ import annotations

import sys

from benchmarks.bench_propagate import GraphBench
from benchmarks.harness import main


class SpmmBench(GraphBench):
    op = "spmm"
    single_layer = True


BENCHES = [SpmmBench()]

if __name__ == "__main__":
    sys.exit(main(BENCHES, description=__doc__))
