import pytest
import torch

from motorec import Graph
from motorec.testing import DEVICES, device_ids, power_law_graph


def _dense_lightgcn_adj(users, items, num_users, num_items):
    n = num_users + num_items
    a = torch.zeros(n, n, dtype=torch.float64)
    a[users, num_users + items] = 1.0
    a[num_users + items, users] = 1.0
    deg = a.sum(1)
    dinv = torch.where(deg > 0, deg.pow(-0.5), torch.zeros_like(deg))
    return dinv[:, None] * a * dinv[None, :]


@pytest.mark.parametrize("device", DEVICES, ids=device_ids())
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_from_interactions_matches_dense(device, index_dtype):
    g0 = torch.Generator().manual_seed(3)
    nu, ni = 23, 17
    users = torch.randint(0, nu - 3, (60,), generator=g0)  # last 3 users isolated
    items = torch.randint(0, ni - 2, (60,), generator=g0)  # last 2 items isolated
    g = Graph.from_interactions(users, items, nu, ni, device=device, index_dtype=index_dtype)
    assert g.rowptr.dtype == torch.int64 and g.col.dtype == index_dtype
    assert g.rowptr.is_contiguous() and g.col.is_contiguous() and g.val.is_contiguous()
    assert g.symmetric and g.num_rows == g.num_cols == nu + ni
    ref = _dense_lightgcn_adj(users, items, nu, ni)
    torch.testing.assert_close(g.to_dense().double().cpu(), ref, rtol=1e-6, atol=1e-7)
    # isolated nodes are zero rows
    assert (g.degree()[nu - 3:nu] == 0).all() and (g.degree()[-2:] == 0).all()
    # columns sorted within rows
    row = g.row_indices().cpu()
    key = row * g.num_cols + g.col.long().cpu()
    assert bool((key.diff() > 0).all())


def test_duplicates_count_once():
    users = torch.tensor([0, 0, 0, 1])
    items = torch.tensor([1, 1, 1, 0])
    g = Graph.from_interactions(users, items, 2, 2)
    assert g.nnz == 4
    ref = _dense_lightgcn_adj(torch.tensor([0, 1]), torch.tensor([1, 0]), 2, 2)
    torch.testing.assert_close(g.to_dense().double(), ref)


def test_empty_graph():
    e = torch.zeros(0, dtype=torch.int64)
    g = Graph.from_interactions(e, e, 4, 3)
    assert g.nnz == 0 and g.num_rows == 7 and g.rowptr.tolist() == [0] * 8
    g = Graph.from_interactions(e, e, 0, 0)
    assert g.num_rows == 0 and g.rowptr.tolist() == [0]


@pytest.mark.parametrize(
    "users,items,nu,ni,exc,match",
    [
        (torch.tensor([0, 5]), torch.tensor([0, 1]), 5, 2, ValueError, "users contains id 5"),
        (torch.tensor([0, 1]), torch.tensor([0, 2]), 5, 2, ValueError, "items contains id 2"),
        (torch.tensor([-1, 1]), torch.tensor([0, 1]), 5, 2, ValueError, "users contains a negative id"),
        (torch.tensor([0, 1, 2]), torch.tensor([0, 1]), 5, 2, ValueError, "same length"),
        (torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), 5, 2, TypeError, "users must have an integer dtype"),
        (torch.tensor([[0, 1]]), torch.tensor([0, 1]), 5, 2, ValueError, "users must be 1-D"),
        (torch.tensor([0, 1]), torch.tensor([0, 1]), -1, 2, ValueError, "num_users must be a non-negative int"),
        ([0, 1], torch.tensor([0, 1]), 5, 2, TypeError, "users must be a torch.Tensor"),
        (torch.tensor([0, 1]), torch.tensor([0, 9]), 3, 9, ValueError, r"items contains id 9, out of range for num_items=9"),
        (torch.tensor([0, -2]), torch.tensor([0, 1]), 3, 9, ValueError, r"users contains a negative id \(-2\)"),
        (torch.tensor([0, 1]), torch.tensor([0, 1, 2]), 3, 9, ValueError,
         r"users and items must have the same length, got 2 and 3"),
        (torch.tensor([0, 1]), torch.tensor([0, 1]), 3, 2.5, ValueError, r"num_items must be a non-negative int, got 2.5"),
    ],
)
def test_bad_interactions(users, items, nu, ni, exc, match):
    with pytest.raises(exc, match=match):
        Graph.from_interactions(users, items, nu, ni)


def test_int32_overflow_is_checked_arithmetically():
    from motorec.graph import _check_nnz

    _check_nnz(2**31 - 1, torch.int32)
    _check_nnz(2**31, torch.int64)
    with pytest.raises(ValueError, match=r"nnz=2147483648 overflows int32 column indices; use index_dtype=torch.int64"):
        _check_nnz(2**31, torch.int32)
    with pytest.raises(TypeError, match=r"index_dtype must be torch.int32 or torch.int64, got torch.int16"):
        _check_nnz(10, torch.int16)


def test_int32_node_overflow_refused_before_allocating():
    # 2^32 nodes: the rowptr alone would be 32 GiB; the check must fire before anything is allocated.
    one = torch.tensor([0])
    with pytest.raises(ValueError, match=r"num_users \+ num_items = 4294967296 overflows int32 column indices"):
        Graph.from_interactions(one, one, 2**31, 2**31, index_dtype=torch.int32)
    g = Graph.from_csr(torch.tensor([0, 1]), torch.tensor([2**33]), num_cols=2**34)
    with pytest.raises(ValueError, match=r"num_cols=17179869184 overflows int32 column indices"):
        g.to(index_dtype=torch.int32)


@pytest.mark.parametrize(
    "rowptr,col,val,num_cols,exc,match",
    [
        ([0, 1, 3], [0, 5, 1], None, 2, ValueError, r"col contains id 5, out of range for num_cols=2"),
        ([0, 1, 3], [0, -1, 1], None, 2, ValueError, r"col contains a negative id \(-1\)"),
        ([0, 1, 2], [0, 1, 1], None, 3, ValueError, r"rowptr must start at 0 and end at nnz=3, got 0..2"),
        ([1, 2, 3], [0, 1, 1], None, 3, ValueError, r"rowptr must start at 0"),
        ([0, 2, 1, 3], [0, 1, 1], None, 3, ValueError, r"rowptr must be non-decreasing"),
        ([], [], None, 0, ValueError, r"rowptr must have at least one entry"),
        ([0, 1, 2], [0, 1], [1.0, 2.0, 3.0], 2, ValueError, r"val must have the shape of col \(2,\), got \(3,\)"),
        ([0, 1, 2], [0, 1], [1, 2], 2, TypeError, r"val must be floating point, got torch.int64"),
        ([0.0, 1.0, 2.0], [0, 1], None, 2, TypeError, r"rowptr must have an integer dtype"),
        ([0, 1, 2], [0.0, 1.0], None, 2, TypeError, r"col must have an integer dtype"),
    ],
    ids=["col-out-of-range", "col-negative", "rowptr-wrong-length", "rowptr-not-zero", "rowptr-decreasing",
         "rowptr-empty", "val-shape", "val-int", "rowptr-float", "col-float"],
)
@pytest.mark.parametrize("ctor", ["from_csr", "init"])
def test_hand_made_csr_is_refused(ctor, rowptr, col, val, num_cols, exc, match):
    rp, c = torch.tensor(rowptr), torch.tensor(col)
    if rp.dtype == torch.float32 and not rowptr:
        rp = rp.long()
    if c.dtype == torch.float32 and not col:
        c = c.long()
    v = torch.tensor(val) if val is not None else torch.ones(c.numel())
    with pytest.raises(exc, match=match):
        if ctor == "from_csr":
            Graph.from_csr(rp, c, v, num_cols)
        else:  # the plain constructor must not let a bad CSR through to the kernels either
            Graph(rp, c, v, num_cols)


def test_from_edge_index_refuses():
    with pytest.raises(ValueError, match=r"edge_index must be a \[2, E\] integer tensor, got \(3, 2\)"):
        Graph.from_edge_index(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"edge_index contains id 4, out of range for num_nodes=4"):
        Graph.from_edge_index(torch.tensor([[0, 1], [2, 4]]), 4)
    with pytest.raises(ValueError, match=r"edge_weight must have shape \[2\], got \(3,\)"):
        Graph.from_edge_index(torch.tensor([[0, 1], [2, 3]]), 4, edge_weight=torch.ones(3))




def test_from_edge_index_pyg_semantics():
    # directed edges: 0->1, 0->2, 2->1 ; gcn_norm with in-degree, messages source -> target
    ei = torch.tensor([[0, 0, 2], [1, 2, 1]])
    g = Graph.from_edge_index(ei, 3)
    assert not g.symmetric
    deg = torch.tensor([0.0, 2.0, 1.0], dtype=torch.float64)  # in-degree
    dinv = torch.where(deg > 0, deg.pow(-0.5), torch.zeros_like(deg))
    ref = torch.zeros(3, 3, dtype=torch.float64)
    for s, t in ei.t().tolist():
        ref[t, s] += dinv[s] * dinv[t]
    torch.testing.assert_close(g.to_dense().double(), ref)
    gt = g.transpose()
    torch.testing.assert_close(gt.to_dense(), g.to_dense().t())
    assert gt.transpose() is g


def test_from_edge_index_symmetric_detected_and_duplicates_summed():
    ei = torch.tensor([[0, 1, 0], [1, 0, 1]])
    g = Graph.from_edge_index(ei, 2, normalize=False)
    assert g.symmetric is False  # 0->1 twice, 1->0 once
    assert g.to_dense().tolist() == [[0.0, 1.0], [2.0, 0.0]]
    g2 = Graph.from_edge_index(torch.tensor([[0, 1], [1, 0]]), 2)
    assert g2.symmetric and g2.transpose() is g2


def test_from_csr_validation():
    with pytest.raises(ValueError, match="rowptr must start at 0 and end at nnz"):
        Graph.from_csr(torch.tensor([0, 1, 3]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="non-decreasing"):
        Graph.from_csr(torch.tensor([0, 2, 1, 2]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="col contains id 3"):
        Graph.from_csr(torch.tensor([0, 1, 2]), torch.tensor([0, 3]))
    g = Graph.from_csr(torch.tensor([0, 1, 2]), torch.tensor([1, 0]), torch.tensor([2.0, 2.0]))
    assert g.symmetric


def test_to_device_and_dtype():
    g = power_law_graph(50, 40, 300, seed=1)
    assert g.to("cpu") is g
    g32 = g.to(index_dtype=torch.int32)
    assert g32.col.dtype == torch.int32 and torch.equal(g32.col.long(), g.col)
    assert g32.symmetric == g.symmetric and g32.num_users == 50
