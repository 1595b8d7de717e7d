"""``motorec.ops.propagate`` (LightGCN readout ``mean_{l=0..L} A^l x``) on every backend available here.

The oracle (:func:`motorec.testing.propagate_oracle`) repeats the float64 gather + ``index_add_`` product;
float32 results must be within 2x the error of torch's own float32 CSR readout (floor 1e-6).
"""
import pytest
import torch

import motorec
from motorec import BackendUnavailable, Graph, _ext
from motorec.ops.propagate import propagate_op
from motorec.reference.propagate import propagate as torch_csr_propagate
from motorec.testing import (
    assert_close_rel,
    backend_params,
    power_law_graph,
    propagate_oracle,
    random_directed_graph,
    rel_error,
    tol_vs_torch,
)

needs_c = pytest.mark.skipif(not _ext.c_has_op("propagate"), reason=f"motorec._C has no propagate ({_ext.C_REASON})")


def tolerance(g: Graph, x: torch.Tensor, num_layers: int, ref: torch.Tensor) -> float:
    if x.dtype == torch.float64:
        return 1e-12
    torch_err = rel_error(torch_csr_propagate(g.rowptr, g.col, g.val.to(x.dtype), x.contiguous(), num_layers), ref)
    return tol_vs_torch(torch_err, 1e-6)


def heavy_square_graph(n=100_050, heavy_degree=100_000, seed=0):
    """Square graph: node 3 is adjacent to 10^5 others (degree 10^5 in row and column), a few thousand
    random other edges, most nodes isolated. Symmetric-normalized like LightGCN's adjacency."""
    gen = torch.Generator().manual_seed(seed)
    hub = torch.full((heavy_degree,), 3)
    others = torch.randperm(n, generator=gen)
    others = others[others != 3][:heavy_degree]
    src = torch.cat([hub, torch.randint(0, 5000, (4000,), generator=gen)])
    dst = torch.cat([others, torch.randint(0, 5000, (4000,), generator=gen)])
    ei = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], 1)
    return Graph.from_edge_index(ei, n)


@pytest.fixture(scope="module")
def plaw():
    g = power_law_graph(1100, 723, 6000, seed=3)
    assert int((g.degree() == 0).sum()) > 0
    return g


@pytest.fixture(scope="module")
def heavy():
    g = heavy_square_graph()
    assert g.symmetric and int(g.degree().max()) >= 100_000
    return g


@pytest.mark.parametrize("device,backend", backend_params("propagate", torch.float32))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
@pytest.mark.parametrize("dim", [1, 33, 64, 128])
def test_power_law(plaw, device, backend, dtype, index_dtype, dim):
    g = plaw.to(device, index_dtype=index_dtype)
    x = torch.randn(g.num_nodes, dim, dtype=dtype, device=device)
    out = motorec.ops.propagate(g, x, 3, backend=backend)
    ref = propagate_oracle(g, x, 3)
    assert out.dtype == dtype
    assert_close_rel(out, ref, tolerance(g, x, 3, ref), f"propagate[{backend}]")


@pytest.mark.parametrize("device,backend", backend_params("propagate", torch.float32))
@pytest.mark.parametrize("num_layers", [0, 1, 2, 5])
def test_layer_counts(plaw, device, backend, num_layers):
    g = plaw.to(device)
    x = torch.randn(g.num_nodes, 24, device=device)
    out = motorec.ops.propagate(g, x, num_layers, backend=backend)
    ref = propagate_oracle(g, x, num_layers)
    assert_close_rel(out, ref, tolerance(g, x, num_layers, ref), f"propagate[{backend}] L={num_layers}")
    if num_layers == 0:
        assert out.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("device,backend", backend_params("propagate", torch.float32))
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
@pytest.mark.parametrize("dim", [1, 64])
def test_heavy_row(heavy, device, backend, index_dtype, dim):
    g = heavy.to(device, index_dtype=index_dtype)
    x = torch.randn(g.num_nodes, dim, device=device)
    ref = propagate_oracle(g, x, 2)
    assert_close_rel(motorec.ops.propagate(g, x, 2, backend=backend), ref, tolerance(g, x, 2, ref),
                     f"propagate[{backend}]")


@pytest.mark.parametrize("device,backend", backend_params("propagate", torch.float32))
@pytest.mark.parametrize("layout", ["strided", "transposed"])
def test_non_contiguous_x(plaw, device, backend, layout):
    g = plaw.to(device)
    base = torch.randn(g.num_nodes, 66, device=device) if layout == "strided" else torch.randn(33, g.num_nodes, device=device)
    x = base[:, ::2] if layout == "strided" else base.t()
    assert not x.is_contiguous() and x.shape == (g.num_nodes, 33)
    ref = propagate_oracle(g, x, 3)
    assert_close_rel(motorec.ops.propagate(g, x, 3, backend=backend), ref, tolerance(g, x, 3, ref))


@pytest.mark.parametrize("device,backend", backend_params("propagate", torch.float32))
def test_empty_graphs(device, backend):
    none = torch.zeros(0, dtype=torch.int64)
    g0 = Graph.from_interactions(none, none, 0, 0, device=device)
    assert motorec.ops.propagate(g0, torch.randn(0, 8, device=device), 3, backend=backend).shape == (0, 8)
    g1 = Graph.from_interactions(none, none, 4, 3, device=device)  # 7 isolated nodes, 0 nnz
    x = torch.randn(7, 5, device=device)
    torch.testing.assert_close(motorec.ops.propagate(g1, x, 3, backend=backend), x / 4)


@pytest.mark.parametrize("device,backend", backend_params("propagate", torch.float32))
def test_acceptance_4500_nodes(device, backend):
    """Issue 2: torch and cpu backends within 1e-5 relative of float64 on a 4,500-node power-law graph."""
    g = power_law_graph(2600, 1900, 40_000, seed=11, device=device)
    assert g.num_nodes == 4500
    x = torch.randn(g.num_nodes, 64, device=device)
    assert rel_error(motorec.ops.propagate(g, x, 3, backend=backend), propagate_oracle(g, x, 3)) <= 1e-5


@pytest.mark.parametrize("device,backend", backend_params("propagate", torch.float64))
def test_backward_uses_transpose(device, backend):
    g = random_directed_graph().to(device)
    x = torch.randn(g.num_nodes, 6, dtype=torch.float64, device=device, requires_grad=True)
    gout = torch.randn(g.num_nodes, 6, dtype=torch.float64, device=device)
    motorec.ops.propagate(g, x, 3, backend=backend).backward(gout)
    a = g.to_dense().double()
    eye = torch.eye(g.num_nodes, dtype=torch.float64, device=device)
    m = (eye + a + a @ a + a @ a @ a) / 4  # out = m @ x, so dL/dx = m^T gout
    torch.testing.assert_close(x.grad, m.t() @ gout, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device,backend", backend_params("propagate", torch.float64))
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "directed"])
def test_gradcheck(device, backend, symmetric):
    g = (power_law_graph(13, 9, 40, seed=2) if symmetric else random_directed_graph(17, 60)).to(device)
    x = torch.randn(g.num_nodes, 5, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: motorec.ops.propagate(g, t, 2, backend=backend), (x,), fast_mode=True)


@pytest.mark.parametrize("device,backend", backend_params("propagate", torch.float32))
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "directed"])
def test_opcheck(device, backend, symmetric):
    g = (power_law_graph(13, 9, 40, seed=2) if symmetric else random_directed_graph(17, 60)).to(device)
    t = g.transpose()
    targs = (None, None, None) if symmetric else (t.rowptr, t.col, t.val)
    x = torch.randn(g.num_nodes, 9, device=device, requires_grad=True)
    torch.library.opcheck(propagate_op, (g.rowptr, g.col, g.val, x, *targs, 2, backend))


@pytest.mark.parametrize("device,backend", backend_params("propagate", torch.float32))
def test_torch_compile_fullgraph(plaw, device, backend):
    g = plaw.to(device)
    w = torch.randn(16, 16, device=device)

    def layer(x):
        return torch.relu(motorec.ops.propagate(g, x @ w, 2, backend=backend))

    x = torch.randn(g.num_nodes, 16, device=device, requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    torch.testing.assert_close(out, layer(x), rtol=1e-5, atol=1e-6)
    (gx,) = torch.autograd.grad(out.sum(), x)
    (gx_eager,) = torch.autograd.grad(layer(x).sum(), x)
    torch.testing.assert_close(gx, gx_eager, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(_ext.HAS_C_CUDA, reason="this machine can run the CUDA backend")
def test_explicit_cuda_backend_raises_with_reason(plaw):
    with pytest.raises(BackendUnavailable, match=r"backend='cuda' cannot run propagate: \S+"):
        motorec.ops.propagate(plaw, torch.randn(plaw.num_nodes, 4), 2, backend="cuda")


@pytest.mark.parametrize("num_layers", [-1, 1.5, True, "2"])
def test_refuses_bad_num_layers(num_layers):
    graph = power_law_graph(13, 8, 60, seed=5)
    x = torch.randn(graph.num_nodes, 7)
    with pytest.raises(ValueError, match=r"num_layers must be an int >= 0, got"):
        motorec.ops.propagate(graph, x, num_layers)


def test_refuses_non_square_graph():
    g = Graph.from_csr(torch.tensor([0, 2, 3]), torch.tensor([0, 4, 1]), num_cols=5)
    with pytest.raises(ValueError, match=r"graph must be square for propagation, got 2 x 5"):
        motorec.ops.propagate(g, torch.randn(5, 3), 1)


@needs_c
def test_raw_op_rejects_bad_arguments():
    g = power_law_graph(5, 4, 12)
    x = torch.randn(g.num_nodes, 3)
    with pytest.raises(RuntimeError, match="num_layers must be >= 0"):
        torch.ops.motorec_C.propagate(g.rowptr, g.col, g.val, x, -1)
    with pytest.raises(RuntimeError, match="graph must be square"):
        torch.ops.motorec_C.propagate(g.rowptr, g.col, g.val, x[:-1], 2)
    with pytest.raises(RuntimeError, match="val must have the dtype of x"):
        torch.ops.motorec_C.propagate(g.rowptr, g.col, g.val.double(), x, 2)
    bad = g.col.clone()
    bad[0] = g.num_nodes
    with pytest.raises(RuntimeError, match=rf"col contains index {g.num_nodes}, out of range"):
        torch.ops.motorec_C.propagate(g.rowptr, bad, g.val, x, 2)


@pytest.mark.parametrize("device,backend", backend_params("propagate", torch.bfloat16))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_half_storage(plaw, device, backend, dtype):
    """Half/bf16 features between layers, float32 layer sum: within 2x the error of torch's path."""
    g = plaw.to(device)
    x = torch.randn(g.num_nodes, 64, device=device).to(dtype)
    ref = propagate_oracle(g, x, 3)
    torch_err = rel_error(torch_csr_propagate(g.rowptr, g.col, g.val, x, 3), ref)
    out = motorec.ops.propagate(g, x, 3, backend=backend)
    assert out.dtype == dtype
    assert_close_rel(out, ref, tol_vs_torch(torch_err, 1e-3), f"propagate[{backend}] {dtype}")
