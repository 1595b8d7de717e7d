"""motorec.nn.knn_graph / attach_items / knn_topk against dense brute-force cosine top-k."""
import pytest
import torch
import torch.nn.functional as F

from motorec.nn import attach_items, knn_graph, knn_topk


def _brute_topk(q, keys, k, exclude_self=False):
    s = F.normalize(q.double(), dim=1) @ F.normalize(keys.double(), dim=1).t()
    if exclude_self:
        s.fill_diagonal_(float("-inf"))
    return torch.topk(s, k, dim=1)


def _sym_norm(a):
    deg = a.sum(1)
    dinv = torch.where(deg > 0, deg.pow(-0.5), torch.zeros_like(deg))
    return dinv.unsqueeze(1) * a * dinv.unsqueeze(0)


@pytest.mark.parametrize("block_size", [7, 1000, None])
def test_knn_topk_matches_brute_force(block_size):
    x = torch.randn(53, 9)
    sim, idx = knn_topk(x, x, 6, block_size=block_size, exclude_self=True)
    ref_sim, ref_idx = _brute_topk(x, x, 6, exclude_self=True)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(sim.double(), ref_sim, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("weighted", [False, True])
def test_knn_graph_matches_dense_brute_force(weighted):
    n, k = 53, 5
    x = torch.randn(n, 9)
    g = knn_graph(x, k, block_size=7, weighted=weighted)
    ref_sim, ref_idx = _brute_topk(x, x, k, exclude_self=True)
    a = torch.zeros(n, n, dtype=torch.float64)
    a.scatter_(1, ref_idx, ref_sim.clamp_min(0) if weighted else torch.ones_like(ref_sim))
    expect = _sym_norm(a + a.t())
    dense = g.to_dense().double()
    torch.testing.assert_close(dense, expect, atol=1e-6, rtol=1e-6)
    assert g.symmetric and torch.equal(dense, dense.t())
    assert g.num_rows == n and g.val.dtype == torch.float32 and g.col.dtype == torch.int64
    # every row has at least its own k neighbours, no self loops
    assert bool((g.degree() >= k).all())
    assert float(dense.diagonal().abs().sum()) == 0.0


def test_knn_graph_directed_and_unnormalized():
    n, k = 30, 4
    x = torch.randn(n, 5)
    g = knn_graph(x, k, symmetric=False, normalize=False, block_size=8)
    _, ref_idx = _brute_topk(x, x, k, exclude_self=True)
    a = torch.zeros(n, n, dtype=torch.float64).scatter_(1, ref_idx, 1.0)
    torch.testing.assert_close(g.to_dense().double(), a)
    assert bool((g.degree() == k).all())
    sym = knn_graph(x, k, normalize=False)
    torch.testing.assert_close(sym.to_dense().double(), a + a.t())


def test_knn_graph_caps_k_and_handles_tiny_inputs():
    x = torch.randn(4, 3)
    g = knn_graph(x, 10)
    # complete graph; every edge is in A and A^T (weight 2, row sums 6), so each normalized entry is 2/6
    assert bool((g.degree() == 3).all())
    torch.testing.assert_close(g.val, torch.full((12,), 1 / 3))
    empty = knn_graph(torch.randn(0, 3), 5)
    assert empty.num_rows == 0 and empty.nnz == 0
    single = knn_graph(torch.randn(1, 3), 5)
    assert single.num_rows == 1 and single.nnz == 0
    with pytest.raises(ValueError, match="k must be"):
        knn_graph(x, 0)
    with pytest.raises(ValueError, match="block_size"):
        knn_graph(x, 2, block_size=0)
    with pytest.raises(ValueError, match="x must be 2-D"):
        knn_graph(torch.randn(5), 2)


@pytest.mark.parametrize("reverse", [True, False])
def test_attach_items_links_new_items_only_to_existing(reverse):
    n, m, k = 40, 9, 4
    base, new = torch.randn(n, 6), torch.randn(m, 6)
    g = attach_items(base, new, k, block_size=5, reverse=reverse)
    assert g.num_rows == n + m
    dense = g.to_dense()
    assert float(dense[n:, n:].abs().sum()) == 0.0  # no new-new edges
    _, ref_idx = _brute_topk(new, base, k)
    for j in range(m):
        nbrs = set(torch.nonzero(dense[n + j]).flatten().tolist())
        assert nbrs == set(ref_idx[j].tolist())
    a_new = torch.zeros(m, n, dtype=torch.float64).scatter_(1, ref_idx, 1.0)
    _, base_idx = _brute_topk(base, base, k, exclude_self=True)
    a_base = torch.zeros(n, n, dtype=torch.float64).scatter_(1, base_idx, 1.0)
    full = torch.zeros(n + m, n + m, dtype=torch.float64)
    full[:n, :n] = a_base + a_base.t()
    full[n:, :n] = a_new
    if reverse:
        full[:n, n:] = a_new.t()
    torch.testing.assert_close(dense.double(), _sym_norm(full), atol=1e-6, rtol=1e-6)
    if reverse:
        assert g.symmetric
    else:
        # warm rows are exactly the warm-only kNN graph's
        torch.testing.assert_close(dense[:n, :n], knn_graph(base, k).to_dense())
        assert float(dense[:n, n:].abs().sum()) == 0.0


def test_attach_items_without_base_edges_and_query_option():
    n, m, k = 20, 5, 3
    base, new = torch.randn(n, 4), torch.randn(m, 4)
    g = attach_items(base, new, k, include_base=False, normalize=False)
    dense = g.to_dense()
    assert float(dense[:n, :n].abs().sum()) == 0.0
    assert int(g.nnz) == 2 * m * k
    q = knn_graph(base, k, query=new)
    torch.testing.assert_close(q.to_dense(), attach_items(base, new, k).to_dense())
    with pytest.raises(ValueError, match="d="):
        attach_items(base, torch.randn(2, 5), k)
