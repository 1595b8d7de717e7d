"""Sweep of the CUDA CSR kernels' segment length S (``MOTOREC_CUDA_SEGMENT``) on the benchmark graphs.

Rows of more than S edges are "heavy": their edges are summed in segments of S by a first kernel, and the row
kernel adds the partial sums; lighter rows are walked by one group of lanes. This script times
``ops.spmm(..., backend="cuda")`` and ``ops.propagate(..., 3, backend="cuda")`` forward for each S, after
checking each output against the float64 reference, beside torch's CSR product (cuSPARSE) on the same inputs.
It needs a CUDA GPU and motorec._C built with CUDA.

Rows ``provider=merge`` time the equal-work merge-path kernels (``motorec_C::spmm_merge`` /
``propagate_merge``, csrc/cuda/csr_cuda.cuh) with ``segment`` = path items per part, on the partition cached by
``Graph.merge_path(items)`` (computed once, outside the timing), with int32 column indices where they fit;
``merge_i64`` keeps int64 columns. Each output is checked against float64 first.

Run: ``python -m benchmarks.cuda_segment_sweep [--segments 64,128,256,512,2048] [--items 32,64,128,256,512]
[--out FILE.csv]``.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys

import torch

from benchmarks.bench_propagate import LARGE, SPORTS, bench_graph
from benchmarks.harness import OUT_TOL, TimingConfig, check_close, time_cuda
from motorec import ops
from motorec.reference import propagate as ref_propagate
from motorec.reference import spmm as ref_spmm


def _time_ms(fn) -> float:
    """Median ms of ``fn()`` by the harness's CUDA timing (the same method as every benchmark row)."""
    return time_cuda(lambda _i: fn(), 1, TimingConfig(), torch.device("cuda"))[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--segments", default="64,128,256,512,1024,2048")
    p.add_argument("--items", default="32,64,128,256,512", help="merge-path items per part")
    p.add_argument("--out", default=None, help="CSV file for the rows (printed either way)")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("cuda_segment_sweep: no CUDA device", file=sys.stderr)
        return 2
    segments = [int(s) for s in a.segments.split(",")]
    dev = torch.device("cuda")
    rows = []
    failed = 0
    print(f"device: {torch.cuda.get_device_name()}")
    for nodes, nnz in (SPORTS, LARGE):
        g, forms = bench_graph(nodes, nnz, dev)
        deg = g.rowptr[1:] - g.rowptr[:-1]
        print(f"graph nodes={g.num_rows} nnz={g.nnz}: max degree {int(deg.max())}, rows over 64/256/2048 edges: "
              f"{int((deg > 64).sum())}/{int((deg > 256).sum())}/{int((deg > 2048).sum())}")
        x = torch.randn(g.num_rows, 64, device=dev, generator=torch.Generator(device=dev).manual_seed(0))
        val64 = forms["val64"]
        refs = {"spmm": ref_spmm.spmm(g.rowptr, g.col, val64, x.double()),
                "propagate": ref_propagate.propagate(g.rowptr, g.col, val64, x.double(), 3)}
        csr = forms["csr"]

        def torch_prop():
            h, acc = x, x
            for _ in range(3):
                h = csr @ h
                acc = acc + h
            return acc / 4

        base = {"spmm": (lambda: csr @ x), "propagate": torch_prop}
        for op in ("spmm", "propagate"):
            ms = _time_ms(base[op])
            rows.append({"op": op, "nodes": g.num_rows, "nnz": g.nnz, "provider": "torch", "segment": "",
                         "ms": f"{ms:.4f}", "rel_err": "", "status": "ok"})
            for s in segments:
                os.environ["MOTOREC_CUDA_SEGMENT"] = str(s)
                # g is freed by the del at the end of the loop body, after these run  # noqa below
                fn = (lambda: ops.spmm(g, x, backend="cuda")) if op == "spmm" else \
                    (lambda: ops.propagate(g, x, 3, backend="cuda"))  # noqa: F821
                try:
                    out = fn()
                    torch.cuda.synchronize()
                    err = check_close(out, refs[op], OUT_TOL[torch.float32], f"{op} S={s}")
                    ms = _time_ms(fn)
                    rows.append({"op": op, "nodes": g.num_rows, "nnz": g.nnz, "provider": "cuda", "segment": s,
                                 "ms": f"{ms:.4f}", "rel_err": f"{err:.2e}", "status": "ok"})
                except Exception as e:  # a failed check is a row, not the end of the sweep
                    failed += 1
                    rows.append({"op": op, "nodes": g.num_rows, "nnz": g.nnz, "provider": "cuda", "segment": s,
                                 "ms": "", "rel_err": "", "status": f"FAILED: {e}"})
                finally:
                    os.environ.pop("MOTOREC_CUDA_SEGMENT", None)
            for provider, gg in (("merge", g.to(index_dtype=torch.int32) if g.nnz < 2 ** 31 else g),
                                 ("merge_i64", g.to(index_dtype=torch.int64))):
                for items in [int(i) for i in a.items.split(",")]:
                    mp = gg.merge_path(items)
                    if op == "spmm":
                        fn = lambda: torch.ops.motorec_C.spmm_merge(  # noqa: E731
                            gg.rowptr, gg.col, gg.val, x, mp.coords, mp.split_rows)
                    else:
                        fn = lambda: torch.ops.motorec_C.propagate_merge(  # noqa: E731
                            gg.rowptr, gg.col, gg.val, x, mp.coords, mp.split_rows, 3)
                    row = {"op": op, "nodes": g.num_rows, "nnz": g.nnz, "provider": provider, "segment": items}
                    try:
                        out = fn()
                        torch.cuda.synchronize()
                        err = check_close(out, refs[op], OUT_TOL[torch.float32], f"{op} merge items={items}")
                        row.update(ms=f"{_time_ms(fn):.4f}", rel_err=f"{err:.2e}", status="ok")
                    except Exception as e:  # a failed check is a row, not the end of the sweep
                        failed += 1
                        row.update(ms="", rel_err="", status=f"FAILED: {e}")
                    rows.append(row)
        del g, forms, refs
        torch.cuda.empty_cache()
    cols = ["op", "nodes", "nnz", "provider", "segment", "ms", "rel_err", "status"]
    print(" ".join(f"{c:>10s}" for c in cols))
    for r in rows:
        print(" ".join(f"{str(r[c]):>10s}" for c in cols))
    if a.out:
        with open(a.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
