"""The merge-path partition (``Graph.merge_path``) and a Python emulation of the CUDA merge-path kernels.

``_emulate`` follows ``merge_path_kernel`` / ``merge_fixup_kernel`` of ``csrc/cuda/csr_cuda.cuh`` step by step
(which rows a part writes directly, which pieces go to which workspace slot, how the fix-up pass sums a split
row's pieces) in float64, so the kernels' work split and result are checked here without a GPU: the product
equals the float64 oracle, every output row is written exactly once, and on power-law graphs every part's
work is within a small factor of the mean (the row-per-group kernel's longest row is far above it).
"""
from __future__ import annotations

import pytest
import torch

from motorec.graph import Graph, MergePath, merge_path_partition
from motorec.testing import power_law_graph, spmm_oracle


def _emulate(g: Graph, x: torch.Tensor, mp: MergePath):
    """float64 merge-path SpMM as the CUDA kernels compute it.

    Returns ``(out [R, D] f64, writes [R] int64 (times each row was written), work [P] int64 (edges + row ends
    per part in the main kernel), fixup [P] int64 (workspace slots each part's fix-up group reads))``."""
    rowptr = g.rowptr.tolist()
    col, val = g.col.long(), g.val.double()
    xd = x.double()
    rows_at, edges_at = mp.coords[0].tolist(), mp.coords[1].tolist()
    num_rows, num_parts = g.num_rows, mp.num_parts
    out = torch.full((num_rows, x.shape[1]), float("nan"), dtype=torch.float64)
    writes = torch.zeros(num_rows, dtype=torch.int64)
    slots = torch.full((2 * num_parts, x.shape[1]), float("nan"), dtype=torch.float64)
    work = torch.zeros(num_parts, dtype=torch.int64)
    fixup = torch.zeros(num_parts, dtype=torch.int64)

    def gather(lo, hi):
        return (val[lo:hi, None] * xd[col[lo:hi]]).sum(0)

    for p in range(num_parts):  # merge_path_kernel: one group per part
        r0, e0, r1, e1 = rows_at[p], edges_at[p], rows_at[p + 1], edges_at[p + 1]
        for r in range(r0, min(r1, num_rows - 1) + 1):
            rs, re = rowptr[r], rowptr[r + 1]
            if r == r1 and e1 <= max(rs, e0):
                break  # the part ends before this row's first edge
            lo, hi = max(rs, e0), min(re, e1)
            acc = gather(lo, hi)
            work[p] += hi - lo
            starts_here = r > r0 or e0 == rs
            ends_here = r < r1
            work[p] += int(ends_here)
            if starts_here and ends_here:
                out[r] = acc
                writes[r] += 1
            else:
                slots[2 * p + (0 if (r == r0 and not starts_here) else 1)] = acc
    for p in range(num_parts):  # merge_fixup_kernel: completes the split row that ends in part p
        r0, e0, r1 = rows_at[p], edges_at[p], rows_at[p + 1]
        if r0 >= num_rows or e0 == rowptr[r0] or r0 >= r1:
            continue
        total = slots[2 * p].clone()
        fixup[p] += 1
        q = p - 1
        while True:
            fixup[p] += 1
            if rows_at[q] == r0 and edges_at[q] > rowptr[r0]:
                total += slots[2 * q]
                q -= 1
            else:
                total += slots[2 * q + 1]
                break
        out[r0] = total
        writes[r0] += 1
    return out, writes, work, fixup


def _star_graph():
    # A row holding most edges, empty rows before and after it, short rows: every split case at items = 8.
    degrees = [3, 0, 40, 1, 0, 2, 9, 0, 0, 1, 0]
    rowptr = torch.tensor([0] + degrees).cumsum(0)
    g = torch.Generator().manual_seed(0)
    col = torch.randint(0, 41, (int(rowptr[-1]),), generator=g)
    return Graph.from_csr(rowptr, col, torch.rand(col.numel(), generator=g), 41, symmetric=False)


def test_partition_coordinates():
    rowptr = torch.tensor([0, 3, 3, 10, 11])  # rows of 3, 0, 7, 1 edges: 4 row ends + 11 edges = 15 items
    mp = merge_path_partition(rowptr, 4)
    assert mp.num_parts == 4 and mp.coords.dtype == torch.int32
    # Path: e0 e1 e2 END0 END1 e3 e4 e5 e6 e7 e8 e9 END2 e10 END3
    assert mp.coords.tolist() == [[0, 1, 2, 2, 4], [0, 3, 6, 10, 11]]
    assert mp.split_rows  # row 2 spans parts 1..3
    assert not merge_path_partition(rowptr, 15).split_rows
    empty = merge_path_partition(torch.zeros(1, dtype=torch.int64), 4)
    assert empty.num_parts == 0 and empty.coords.tolist() == [[0], [0]]
    with pytest.raises(ValueError, match="items_per_part"):
        merge_path_partition(rowptr, 0)


def test_partition_equal_work_and_monotone():
    g = power_law_graph(300, 500, 6000, seed=3)
    for items in (1, 7, 64, 1000, 10 ** 6):
        mp = merge_path_partition(g.rowptr, items)
        rows, edges = mp.coords.long()
        d = rows + edges
        total = g.num_rows + g.nnz
        assert d.tolist() == [min(p * items, total) for p in range(mp.num_parts + 1)]
        assert bool((rows.diff() >= 0).all()) and bool((edges.diff() >= 0).all())
        # Path coordinates are consistent: rows finished have all their edges consumed, the current row not.
        done = g.rowptr[rows]
        assert bool((done <= edges).all())
        nxt = g.rowptr[(rows + 1).clamp(max=g.num_rows)]
        assert bool(((rows == g.num_rows) | (edges <= nxt)).all())


def test_graph_caches_the_partition():
    g = power_law_graph(50, 80, 700, seed=1)
    mp = g.merge_path(32)
    assert g.merge_path(32) is mp
    assert g.merge_path() is g.merge_path()
    assert g.merge_path(16) is not mp


@pytest.mark.parametrize("items", [1, 3, 8, 64])
def test_emulated_kernel_matches_oracle_small(items):
    g = _star_graph()
    x = torch.randn(g.num_cols, 5, dtype=torch.float64)
    out, writes, _, _ = _emulate(g, x, g.merge_path(items))
    assert writes.tolist() == [1] * g.num_rows, "every row, empty ones too, is written exactly once"
    torch.testing.assert_close(out, spmm_oracle(g, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed,items", [(0, 64), (1, 128), (2, 17)])
def test_emulated_kernel_power_law(seed, items):
    g = power_law_graph(400, 700, 9000, seed=seed)
    x = torch.randn(g.num_cols, 6, dtype=torch.float64)
    mp = g.merge_path(items)
    out, writes, work, fixup = _emulate(g, x, mp)
    assert bool((writes == 1).all())
    torch.testing.assert_close(out, spmm_oracle(g, x), rtol=1e-12, atol=1e-12)
    # Equal work: every part but the last walks exactly `items` path items (edges + row ends), however the
    # degrees are spread; one group per row would wait on the longest row instead.
    degree = g.degree()
    assert float(degree.max()) > 8 * float(degree.double().mean()), "the graph must be skewed for this test"
    assert work[:-1].tolist() == [items] * (mp.num_parts - 1) and 0 < int(work[-1]) <= items
    # The fix-up pass reads each split row's pieces once (at most two slots per part in all); its longest
    # walk is the longest row's number of parts, items times shorter than that row.
    assert int(fixup.sum()) <= 2 * mp.num_parts
    assert int(fixup.max()) <= int(degree.max()) // items + 3


# ---- the CUDA backend's wiring (motorec.ops.spmm / propagate -> motorec_C::spmm_merge / propagate_merge) --------
# Run here without a GPU: the raw CUDA ops are replaced by the float64 emulation above, called on CPU tensors,
# so what is checked is what the Python side hands the kernels (the partition of the right CSR, computed once
# per graph, the env switches), not the kernels themselves (those run in benchmarks/cuda_segment_sweep.py and
# the GPU op tests).


class _FakeC:
    def __init__(self):
        self.calls = []

    def spmm_merge(self, rowptr, col, val, x, coords, split_rows):
        self.calls.append(("spmm_merge", coords, split_rows))
        rowptr_l = rowptr.tolist()
        g = Graph.from_csr(rowptr, col, val, x.shape[0], symmetric=False)
        out, writes, _, _ = _emulate(g, x, MergePath(coords, 0, split_rows))
        assert writes.tolist() == [1] * (len(rowptr_l) - 1)
        return out.to(x.dtype)

    def propagate_merge(self, rowptr, col, val, x, coords, split_rows, num_layers):
        self.calls.append(("propagate_merge", coords, split_rows))
        return self._propagate(rowptr, col, val, x, coords, split_rows, num_layers)

    def _propagate(self, rowptr, col, val, x, coords, split_rows, num_layers):
        g = Graph.from_csr(rowptr, col, val, x.shape[0], symmetric=False)
        h, acc = x.double(), x.double().clone()
        for _ in range(num_layers):
            h, _, _, _ = _emulate(g, h, MergePath(coords, 0, split_rows))
            acc += h
        return (acc / (num_layers + 1)).to(x.dtype)

    def spmm(self, rowptr, col, val, x):
        self.calls.append(("spmm",))
        return spmm_oracle(Graph.from_csr(rowptr, col, val, x.shape[0], symmetric=False), x).to(x.dtype)

    def propagate(self, rowptr, col, val, x, num_layers):
        self.calls.append(("propagate",))
        mp = merge_path_partition(rowptr, 64)
        return self._propagate(rowptr, col, val, x, mp.coords, mp.split_rows, num_layers)


@pytest.fixture
def fake_c(monkeypatch):
    import sys

    import motorec.ops  # noqa: F401 (motorec.ops.spmm is also the name of a function there)

    spmm_mod, prop_mod = sys.modules["motorec.ops.spmm"], sys.modules["motorec.ops.propagate"]
    fake = _FakeC()

    class _Ops:
        motorec_C = fake

    monkeypatch.setattr(spmm_mod, "torch", type("T", (), {"ops": _Ops})())
    monkeypatch.setattr(prop_mod, "torch", type("T", (), {"ops": _Ops})())
    monkeypatch.delenv("MOTOREC_CUDA_SPMM", raising=False)
    monkeypatch.delenv("MOTOREC_CUDA_MERGE_ITEMS", raising=False)
    return fake


def test_cuda_backend_runs_the_merge_path_with_a_cached_partition(fake_c, monkeypatch):
    from motorec.graph import MERGE_PATH_ITEMS
    from motorec.ops.propagate import _cuda_propagate
    from motorec.ops.spmm import _cuda_spmm

    made = []
    real = merge_path_partition

    def counting(rowptr, items):
        made.append(items)
        return real(rowptr, items)

    monkeypatch.setattr("motorec.graph.merge_path_partition", counting)
    g = power_law_graph(300, 500, 6000, seed=4)
    x = torch.randn(g.num_cols, 8, dtype=torch.float64)
    for _ in range(3):  # every training step on the same graph: one partition
        out = _cuda_spmm(g.rowptr, g.col, g.val, x)
        torch.testing.assert_close(out, spmm_oracle(g, x), rtol=1e-12, atol=1e-12)
    assert made == [MERGE_PATH_ITEMS]
    assert [c[0] for c in fake_c.calls] == ["spmm_merge"] * 3
    assert fake_c.calls[0][1] is fake_c.calls[2][1], "the cached coords tensor is handed over again"

    sym = power_law_graph(200, 300, 3000, seed=5)  # propagate needs a square graph
    xs = torch.randn(sym.num_cols, 4, dtype=torch.float64)
    ref = xs.clone()
    h = xs
    for _ in range(3):
        h = spmm_oracle(sym, h)
        ref += h
    torch.testing.assert_close(_cuda_propagate(sym.rowptr, sym.col, sym.val, xs, 3), ref / 4, rtol=1e-12,
                               atol=1e-12)
    assert made == [MERGE_PATH_ITEMS] * 2

    sym.rowptr.add_(0)  # an in-place change (even a no-op one) makes the cached partition stale
    _cuda_propagate(sym.rowptr, sym.col, sym.val, xs, 1)
    assert made == [MERGE_PATH_ITEMS] * 3

    monkeypatch.setenv("MOTOREC_CUDA_MERGE_ITEMS", "32")
    _cuda_spmm(g.rowptr, g.col, g.val, x)
    assert made[-1] == 32 and fake_c.calls[-1][1].shape[1] - 1 == -(-(g.num_rows + g.nnz) // 32)
    assert g.merge_path(32).coords is fake_c.calls[-1][1] and made.count(32) == 1, "Graph.merge_path shares the cache"

    monkeypatch.setenv("MOTOREC_CUDA_SPMM", "row")
    _cuda_spmm(g.rowptr, g.col, g.val, x)
    _cuda_propagate(sym.rowptr, sym.col, sym.val, xs, 2)
    assert [c[0] for c in fake_c.calls[-2:]] == ["spmm", "propagate"]


@pytest.mark.parametrize("var,value", [("MOTOREC_CUDA_SPMM", "segments"), ("MOTOREC_CUDA_MERGE_ITEMS", "8"),
                                       ("MOTOREC_CUDA_MERGE_ITEMS", "lots")])
def test_cuda_backend_env_switches_reject_bad_values(fake_c, monkeypatch, var, value):
    from motorec.ops.spmm import _cuda_spmm

    monkeypatch.setenv(var, value)
    g = power_law_graph(20, 30, 100, seed=0)
    with pytest.raises(ValueError, match=var):
        _cuda_spmm(g.rowptr, g.col, g.val, torch.randn(g.num_cols, 2, dtype=torch.float64))
