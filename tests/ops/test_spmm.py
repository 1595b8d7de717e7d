"""``motorec.ops.spmm`` on every backend available here against a float64 reference.

The oracle is the float64 gather + ``index_add_`` product (:func:`motorec.testing.spmm_oracle`), which
shares no code with the CSR kernels. float32 results must be within 2x the error of torch's own float32 CSR
product (floor 1e-6), float64 results within 1e-12.
"""
import os
import subprocess
import sys

import pytest
import torch

import motorec
from motorec import BackendUnavailable, Graph, _ext
from motorec.ops.spmm import spmm_op
from motorec.reference.spmm import spmm as torch_csr_spmm
from motorec.testing import (
    assert_close_rel,
    backend_params,
    power_law_graph,
    propagate_oracle,
    random_directed_graph,
    rel_error,
    spmm_oracle,
    tol_vs_torch,
)

needs_c = pytest.mark.skipif(not _ext.c_has_op("spmm"), reason=f"motorec._C has no spmm ({_ext.C_REASON})")


def tolerance(g: Graph, x: torch.Tensor, ref: torch.Tensor) -> float:
    if x.dtype == torch.float64:
        return 1e-12
    return tol_vs_torch(rel_error(torch_csr_spmm(g.rowptr, g.col, g.val.to(x.dtype), x.contiguous()), ref), 1e-6)


def heavy_graph(num_rows=257, num_cols=100_003, heavy_row=5, heavy_degree=100_000, seed=0, index_dtype=torch.int64):
    """Rectangular CSR: power-law small rows (many empty), one row of degree ``heavy_degree``."""
    gen = torch.Generator().manual_seed(seed)
    deg = (torch.rand(num_rows, generator=gen).pow(-1.5) - 1).clamp(max=200).long()  # heavy-tailed, ~40% zeros
    deg[heavy_row] = heavy_degree
    cols = [torch.randperm(num_cols, generator=gen)[:heavy_degree].sort().values if r == heavy_row
            else torch.randint(0, num_cols, (int(deg[r]),), generator=gen).unique() for r in range(num_rows)]
    rowptr = torch.zeros(num_rows + 1, dtype=torch.int64)
    rowptr[1:] = torch.tensor([c.numel() for c in cols]).cumsum(0)
    col = torch.cat(cols).to(index_dtype)
    val = torch.rand(col.numel(), generator=gen) + 0.1
    return Graph.from_csr(rowptr, col, val, num_cols, symmetric=False)


def make_x(rows, dim, dtype, layout):
    """[rows, dim] with the given memory layout: contiguous, every-other column, or transposed storage."""
    if layout == "contiguous":
        return torch.randn(rows, dim, dtype=dtype)
    if layout == "strided":
        return torch.randn(rows, 2 * dim, dtype=dtype)[:, ::2]
    return torch.randn(dim, rows, dtype=dtype).t()


@pytest.fixture(scope="module")
def plaw():
    # 1,823 nodes, power-law degrees, isolated users and items (empty rows).
    g = power_law_graph(1100, 723, 6000, seed=3)
    assert int((g.degree() == 0).sum()) > 0
    return g


@pytest.fixture(scope="module")
def heavy():
    return heavy_graph()


@pytest.mark.parametrize("device,backend", backend_params("spmm", torch.float32))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
@pytest.mark.parametrize("dim", [1, 33, 64, 128])
def test_power_law(plaw, device, backend, dtype, index_dtype, dim):
    g = plaw.to(device, index_dtype=index_dtype)
    x = torch.randn(g.num_cols, dim, dtype=dtype, device=device)
    out = motorec.ops.spmm(g, x, backend=backend)
    ref = spmm_oracle(g, x)
    assert out.dtype == dtype and out.device == x.device
    assert_close_rel(out, ref, tolerance(g, x, ref), f"spmm[{backend}]")


@pytest.mark.parametrize("device,backend", backend_params("spmm", torch.float32))
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
@pytest.mark.parametrize("dim", [1, 33, 64])
def test_heavy_row(heavy, device, backend, index_dtype, dim):
    g = heavy.to(device, index_dtype=index_dtype)
    assert int(g.degree().max()) == 100_000
    x = torch.randn(g.num_cols, dim, device=device)
    ref = spmm_oracle(g, x)
    assert_close_rel(motorec.ops.spmm(g, x, backend=backend), ref, tolerance(g, x, ref), f"spmm[{backend}]")


@pytest.mark.skipif(not _ext.HAS_C_CUDA, reason=f"needs the CUDA kernels ({_ext.C_CUDA_REASON})")
@pytest.mark.parametrize("segment", ["16", "100", "2048", "200000"])
def test_cuda_segment_lengths(heavy, monkeypatch, segment):
    """Every segment length S (MOTOREC_CUDA_SEGMENT) computes the same product: rows of up to 200 edges and one
    of 100,000 are heavy or light depending on S, and S not a power of two exercises unaligned segments."""
    monkeypatch.setenv("MOTOREC_CUDA_SEGMENT", segment)
    g = heavy.to("cuda")
    for dim in (1, 64):
        x = torch.randn(g.num_cols, dim, device="cuda")
        ref = spmm_oracle(g, x)
        assert_close_rel(motorec.ops.spmm(g, x, backend="cuda"), ref, tolerance(g, x, ref), f"spmm S={segment}")
        gs = power_law_graph(300, 200, 4000, device="cuda")
        xs = torch.randn(gs.num_nodes, dim, device="cuda")
        ref = propagate_oracle(gs, xs, 3)
        assert_close_rel(motorec.ops.propagate(gs, xs, 3, backend="cuda"), ref, 1e-5, f"propagate S={segment}")


@pytest.mark.skipif(not _ext.HAS_C_CUDA, reason=f"needs the CUDA kernels ({_ext.C_CUDA_REASON})")
@pytest.mark.parametrize("segment", ["0", "15", "abc", "64x", "99999999999"])
def test_cuda_segment_length_bad_values_raise(plaw, monkeypatch, segment):
    monkeypatch.setenv("MOTOREC_CUDA_SEGMENT", segment)
    g = plaw.to("cuda")
    with pytest.raises(RuntimeError, match="MOTOREC_CUDA_SEGMENT must be an integer in"):
        motorec.ops.spmm(g, torch.randn(g.num_cols, 8, device="cuda"), backend="cuda")


@pytest.mark.parametrize("device,backend", backend_params("spmm", torch.float32))
@pytest.mark.parametrize("layout", ["strided", "transposed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_non_contiguous_x(plaw, device, backend, layout, dtype):
    g = plaw.to(device)
    x = make_x(g.num_cols, 33, dtype, layout).to(device)
    assert not x.is_contiguous()
    ref = spmm_oracle(g, x)
    assert_close_rel(motorec.ops.spmm(g, x, backend=backend), ref, tolerance(g, x, ref), f"spmm[{backend}]")


@pytest.mark.parametrize("device,backend", backend_params("spmm", torch.float32))
def test_empty_graphs(device, backend):
    none = torch.zeros(0, dtype=torch.int64)
    g0 = Graph.from_interactions(none, none, 0, 0, device=device)  # 0 rows, 0 nnz
    out = motorec.ops.spmm(g0, torch.randn(0, 7, device=device), backend=backend)
    assert out.shape == (0, 7)
    g1 = Graph.from_interactions(none, none, 4, 3, device=device)  # 7 rows, 0 nnz
    x = torch.randn(7, 5, device=device)
    out = motorec.ops.spmm(g1, x, backend=backend)
    assert out.shape == (7, 5) and bool((out == 0).all())
    g2 = power_law_graph(30, 20, 100, device=device)
    assert motorec.ops.spmm(g2, torch.randn(50, 0, device=device), backend=backend).shape == (50, 0)


@pytest.mark.parametrize("device,backend", backend_params("spmm", torch.float32))
def test_acceptance_4500_nodes(device, backend):
    """Issue 2: torch and cpu backends within 1e-5 relative of float64 on a 4,500-node power-law graph."""
    g = power_law_graph(2600, 1900, 40_000, seed=11, device=device)
    assert g.num_nodes == 4500
    x = torch.randn(g.num_nodes, 64, device=device)
    assert rel_error(motorec.ops.spmm(g, x, backend=backend), spmm_oracle(g, x)) <= 1e-5


@pytest.mark.parametrize("device,backend", backend_params("spmm", torch.float64))
def test_backward_uses_transpose(device, backend):
    g = random_directed_graph().to(device)
    x = torch.randn(g.num_cols, 6, dtype=torch.float64, device=device, requires_grad=True)
    gout = torch.randn(g.num_rows, 6, dtype=torch.float64, device=device)
    motorec.ops.spmm(g, x, backend=backend).backward(gout)
    dense = g.to_dense().double()
    torch.testing.assert_close(x.grad, dense.t() @ gout, rtol=1e-12, atol=1e-12)
    # The forward with the same graph is A x, not A^T x.
    torch.testing.assert_close(motorec.ops.spmm(g, x.detach(), backend=backend), dense @ x.detach())


@pytest.mark.parametrize("device,backend", backend_params("spmm", torch.float64))
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "directed"])
def test_gradcheck(device, backend, symmetric):
    g = (power_law_graph(13, 9, 40, seed=2) if symmetric else random_directed_graph(17, 60)).to(device)
    x = torch.randn(g.num_cols, 5, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: motorec.ops.spmm(g, t, backend=backend), (x,), fast_mode=True)


@pytest.mark.parametrize("device,backend", backend_params("spmm", torch.float32))
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "directed"])
def test_opcheck(device, backend, symmetric):
    g = (power_law_graph(13, 9, 40, seed=2) if symmetric else random_directed_graph(17, 60)).to(device)
    t = g.transpose()
    targs = (None, None, None) if symmetric else (t.rowptr, t.col, t.val)
    x = torch.randn(g.num_cols, 9, device=device, requires_grad=True)
    torch.library.opcheck(spmm_op, (g.rowptr, g.col, g.val, x, *targs, backend))


@pytest.mark.parametrize("device,backend", backend_params("spmm", torch.float32))
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "directed"])
def test_torch_compile_fullgraph(plaw, device, backend, symmetric):
    """``spmm`` inside a compiled layer: no graph break, same output and gradient as eager (the directed
    graph's backward runs over its transpose). A directed graph's transpose is built (and cached) before
    compiling: building it has data-dependent sizes, which ``fullgraph=True`` cannot trace."""
    g = (plaw if symmetric else random_directed_graph(41, 300)).to(device)
    g.transpose()
    w = torch.randn(16, 16, device=device)

    def layer(x):
        return torch.relu(motorec.ops.spmm(g, x @ w, backend=backend))

    x = torch.randn(g.num_cols, 16, device=device, requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    torch.testing.assert_close(out, layer(x), rtol=1e-5, atol=1e-6)
    (gx,) = torch.autograd.grad(out.sum(), x)
    (gx_eager,) = torch.autograd.grad(layer(x).sum(), x)
    torch.testing.assert_close(gx, gx_eager, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(_ext.HAS_C_CUDA, reason="this machine can run the CUDA backend")
def test_explicit_cuda_backend_raises_with_reason(plaw):
    with pytest.raises(BackendUnavailable, match=r"backend='cuda' cannot run spmm: \S+"):
        motorec.ops.spmm(plaw, torch.randn(plaw.num_cols, 4), backend="cuda")


# ------------------------------------------------------------------ the public ops: bad input
# spmm and propagate validate through one function (motorec.ops._graph.check_graph_input): checked for both.
def _small():
    graph = power_law_graph(13, 8, 60, seed=5)  # 21 nodes, symmetric, a few isolated
    return graph, torch.randn(graph.num_cols, 7)


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda x: x.int(), TypeError, r"x must be float16, bfloat16, float32 or float64, got torch.int32"),
        (lambda x: x.to("meta"), ValueError, r"x is on meta but graph is on cpu"),
        (lambda x: x[:-1], ValueError, r"x must have graph.num_cols=21 rows, got x of shape \(20, 7\)"),
        (lambda x: x[:, 0], ValueError, r"x must be 2-D, got shape \(21,\)"),
        (lambda x: x.to_sparse(), TypeError, r"x must be a dense \(strided\) tensor"),
        (lambda x: x.tolist(), TypeError, r"x must be a torch.Tensor, got list"),
    ],
    ids=["int-dtype", "wrong-device", "wrong-rows", "1-D", "sparse-layout", "not-a-tensor"],
)
@pytest.mark.parametrize("op", ["spmm", "propagate"])
def test_graph_ops_refuse_bad_x(op, make, exc, match):
    graph, x = _small()
    with pytest.raises(exc, match=match):
        if op == "spmm":
            motorec.ops.spmm(graph, make(x))
        else:
            motorec.ops.propagate(graph, make(x), 2)


@pytest.mark.parametrize("op", ["spmm", "propagate"])
def test_graph_ops_refuse_non_graph(op):
    graph, x = _small()
    a = graph.to_torch_sparse()
    with pytest.raises(TypeError, match=r"graph must be a motorec.Graph, got Tensor"):
        motorec.ops.spmm(a, x) if op == "spmm" else motorec.ops.propagate(a, x, 1)


# ------------------------------------------------------------------ the raw C++ op: argument checks
@needs_c
@pytest.mark.parametrize(
    "case,match",
    [
        ("rowptr_2d", "rowptr must be 1-D"),
        ("rowptr_float", "rowptr must be int64 or int32"),
        ("col_float", "col must be int64 or int32"),
        ("val_len", "val and col must have the same length"),
        ("val_dtype", "val must have the dtype of x"),
        ("x_1d", "x must be 2-D"),
        ("x_half", "x must be float32 or float64"),
        ("col_range", "col contains index 12, out of range for x with 12 rows"),
        ("col_negative", "col contains a negative index"),
        ("rowptr_end", r"rowptr\[-1\] must equal nnz"),
        ("rowptr_start", r"rowptr\[0\] must be 0"),
        ("rowptr_order", "rowptr must be non-decreasing"),
    ],
)
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32], ids=["i64", "i32"])
def test_raw_op_rejects_bad_arguments(case, match, index_dtype):
    rowptr = torch.tensor([0, 2, 2, 5], dtype=index_dtype)
    col = torch.tensor([0, 3, 1, 7, 11], dtype=index_dtype)
    val = torch.rand(5)
    x = torch.randn(12, 4)
    if case == "rowptr_2d":
        rowptr = rowptr[None]
    elif case == "rowptr_float":
        rowptr = rowptr.float()
    elif case == "col_float":
        col = col.float()
    elif case == "val_len":
        val = val[:4]
    elif case == "val_dtype":
        val = val.double()
    elif case == "x_1d":
        x = x[:, 0]
    elif case == "x_half":
        x = x.half()
    elif case == "col_range":
        col[2] = 12
    elif case == "col_negative":
        col[4] = -1
    elif case == "rowptr_end":
        rowptr[-1] = 4
    elif case == "rowptr_start":
        rowptr[0] = 1
    elif case == "rowptr_order":
        rowptr = torch.tensor([0, 3, 2, 5])
    with pytest.raises(RuntimeError, match=match):
        torch.ops.motorec_C.spmm(rowptr, col, val, x)


@needs_c
def test_raw_op_non_contiguous_x_is_correct():
    rowptr, col, val = torch.tensor([0, 2, 2, 4]), torch.tensor([0, 2, 1, 2]), torch.randn(4)
    x = torch.randn(5, 3).t()  # [3, 5], non-contiguous
    out = torch.ops.motorec_C.spmm(rowptr, col, val, x)
    torch.testing.assert_close(out, torch_csr_spmm(rowptr, col, val, x.contiguous()), rtol=1e-5, atol=1e-6)


@needs_c
def test_raw_op_int32_rowptr_matches_int64():
    g = power_law_graph(40, 30, 300, seed=9)
    x = torch.randn(g.num_cols, 16)
    a = torch.ops.motorec_C.spmm(g.rowptr, g.col, g.val, x)
    b = torch.ops.motorec_C.spmm(g.rowptr.int(), g.col.int(), g.val, x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


_ISA_SCRIPT = """
import torch, motorec
from motorec.testing import power_law_graph, propagate_oracle, rel_error, spmm_oracle
g = power_law_graph(300, 200, 3000, seed=4)
for d in (1, 33, 64, 128):
    for dt in (torch.float32, torch.float64):
        x = torch.randn(g.num_cols, d, dtype=dt)
        err = rel_error(torch.ops.motorec_C.spmm(g.rowptr, g.col, g.val.to(dt), x), spmm_oracle(g, x))
        assert err < (1e-6 if dt == torch.float32 else 1e-13), (d, dt, err)
        err = rel_error(torch.ops.motorec_C.propagate(g.rowptr, g.col, g.val.to(dt), x, 2), propagate_oracle(g, x, 2))
        assert err < (1e-6 if dt == torch.float32 else 1e-13), ("propagate", d, dt, err)
print("ok")
"""


@needs_c
@pytest.mark.parametrize("isa", ["default", "avx2"])
def test_each_cpu_isa_path(isa):
    """The kernels pick AVX-512 / AVX2 / baseline clones at run time; MOTOREC_CPU_ISA caps the choice."""
    env = dict(os.environ, MOTOREC_CPU_ISA=isa)
    r = subprocess.run([sys.executable, "-c", _ISA_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


@needs_c
@pytest.mark.skipif(_ext.HAS_C_CUDA, reason="auto prefers cuda on CUDA inputs; this checks the CPU choice")
@pytest.mark.parametrize("op", ["spmm", "propagate"])
def test_auto_declines_cpu_where_it_is_slower(op, no_backend_env):
    pick = lambda d: motorec.ops.select_backend(op, device="cpu", dtype=torch.float32, dim=d)  # noqa: E731
    assert all(pick(d) == "cpu" for d in (1, 4, 8, 12, 16, 17, 33, 64))
    assert all(pick(d) == "torch" for d in (2, 3, 5, 7, 9, 15))  # measured slower than torch CSR (MKL)
    assert motorec.ops.select_backend(op, "cpu", device="cpu", dtype=torch.float32, dim=3) == "cpu"


@pytest.mark.parametrize("device,backend", backend_params("spmm", torch.bfloat16))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("dim", [33, 64])
def test_half_storage(plaw, device, backend, dtype, dim):
    """Half/bf16 features with float32 accumulation: within 2x the error of torch's path in that dtype."""
    g = plaw.to(device)
    x = torch.randn(g.num_cols, dim, device=device).to(dtype)
    ref = spmm_oracle(g, x)
    out = motorec.ops.spmm(g, x, backend=backend)
    assert out.dtype == dtype
    tol = tol_vs_torch(rel_error(torch_csr_spmm(g.rowptr, g.col, g.val, x), ref), 1e-3)
    assert_close_rel(out, ref, tol, f"spmm[{backend}] {dtype}")


@pytest.mark.parametrize("device,backend", backend_params("spmm", torch.float64))
def test_row_blocks_and_no_transpose_without_a_gradient(device, backend):
    """``Graph.rows(s, e) @ x`` is rows ``s .. e - 1`` of ``A @ x`` (empty blocks too); a product no gradient can
    reach builds no transpose, one that a gradient can reach does (and its backward is right)."""
    g = random_directed_graph(23, 70).to(device)
    x = torch.randn(g.num_cols, 5, dtype=torch.float64, device=device)
    full = spmm_oracle(g, x)
    for s, e in [(0, 23), (0, 7), (7, 14), (21, 23), (5, 5), (23, 23)]:
        block = g.rows(s, e)
        assert (block.num_rows, block.num_cols) == (e - s, g.num_cols)
        torch.testing.assert_close(motorec.ops.spmm(block, x, backend=backend), full[s:e], rtol=1e-12, atol=1e-12)
    assert g.rows(3, 9)._transpose is None  # nothing built for the products above
    with pytest.raises(ValueError, match="0 <= start <= stop <= num_rows=23"):
        g.rows(4, 24)
    with pytest.raises(ValueError, match="0 <= start <= stop"):
        g.rows(5, 4)
    block = g.rows(2, 11)
    xg = x.clone().requires_grad_(True)
    with torch.no_grad():
        motorec.ops.spmm(block, xg, backend=backend)
    assert block._transpose is None
    gout = torch.randn(9, 5, dtype=torch.float64, device=device)
    motorec.ops.spmm(block, xg, backend=backend).backward(gout)
    assert block._transpose is not None
    torch.testing.assert_close(xg.grad, block.to_dense().double().t() @ gout, rtol=1e-12, atol=1e-12)
