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
    ],
)
def test_bad_interactions(users, items, nu, ni, exc, match):
    with pytest.raises(exc, match=match):
        Graph.from_interactions(users, items, nu, ni)


def test_int32_overflow_is_checked_arithmetically():
    from motorec.graph import _check_nnz

    with pytest.raises(ValueError, match="overflows int32"):
        _check_nnz(2**31, torch.int32)
    _check_nnz(2**31, torch.int64)


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
