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


# ------------------------------------------------------------------------------------ approximate (ivf) builder
from motorec.nn import knn as knn_mod  # noqa: E402


def _clustered(n, d=16, topics=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(topics, d, generator=g)
    return centers[torch.randint(topics, (n,), generator=g)] + 0.6 * torch.randn(n, d, generator=g)


def _recall(idx, ref_idx):
    return (idx[:, :, None] == ref_idx[:, None, :]).any(1).double().mean().item()


def test_ivf_probing_every_list_is_exact():
    x = torch.randn(401, 7)
    sim, idx = knn_mod.knn_topk_ivf(x, 6, nlist=9, nprobe=9)
    ref_sim, ref_idx = _brute_topk(x, x, 6, exclude_self=True)
    torch.testing.assert_close(sim.double(), ref_sim, atol=1e-6, rtol=1e-6)
    # same neighbours except where two similarities tie within rounding (the candidate order differs)
    gap = (ref_sim[:, :-1] - ref_sim[:, 1:]).abs().min(1).values
    clear = gap > 1e-6
    assert clear.sum() > 350 and torch.equal(idx[clear], ref_idx[clear])


def test_ivf_recall_on_clustered_items_and_determinism():
    x = _clustered(4000)
    sim, idx = knn_mod.knn_topk_ivf(x, 10)  # defaults: nlist = 2 sqrt(N) = 126, nprobe = 8
    p = knn_mod.plan(4000, 10, method="ivf")
    assert (p.nlist, p.nprobe) == (126, 8)
    _, ref_idx = _brute_topk(x, x, 10, exclude_self=True)
    assert _recall(idx, ref_idx) >= 0.9
    assert bool((sim[:, :-1] >= sim[:, 1:]).all())  # descending
    assert bool((idx != torch.arange(4000)[:, None]).all())  # no self
    # each returned similarity is the true cosine of that pair
    xn = torch.nn.functional.normalize(x.double(), dim=1)
    torch.testing.assert_close(sim.double(), (xn[:, None, :] * xn[idx]).sum(-1), atol=1e-5, rtol=1e-5)
    sim2, idx2 = knn_mod.knn_topk_ivf(x, 10)
    assert torch.equal(idx, idx2) and torch.equal(sim, sim2)
    _, idx3 = knn_mod.knn_topk_ivf(x, 10, seed=1)
    assert not torch.equal(idx, idx3)  # another k-means draw, other approximations


def test_ivf_tiny_inputs_and_too_few_candidates():
    for n in (0, 1, 2, 5):
        x = torch.randn(n, 3)
        sim, idx = knn_mod.knn_topk_ivf(x, 4, nlist=max(n, 1), nprobe=1)
        assert sim.shape == idx.shape == (n, min(4, max(n - 1, 0)))
        if n > 1:
            _, ref_idx = _brute_topk(x, x, min(4, n - 1), exclude_self=True)
            assert torch.equal(idx.sort(1).values, ref_idx.sort(1).values)  # too few candidates: exact
    x = torch.randn(60, 4)
    _, idx = knn_mod.knn_topk_ivf(x, 5, nlist=60, nprobe=1)  # lists of ~1 item: every row falls back
    _, ref_idx = _brute_topk(x, x, 5, exclude_self=True)
    assert torch.equal(idx, ref_idx)
    zero = torch.zeros(30, 4)
    zero[:10] = torch.randn(10, 4)
    s, i = knn_mod.knn_topk_ivf(zero, 3, nlist=3, nprobe=3)  # zero rows have similarity 0 to everything
    assert bool(torch.isfinite(s).all()) and bool((i != torch.arange(30)[:, None]).all())


def test_plan_and_explain_say_which_builder_and_why(monkeypatch):
    p = knn_mod.plan(1000)
    assert p.method == "exact" and "APPROX_MIN_ITEMS" in p.reason and p.scanned_fraction == 1.0
    big = knn_mod.plan(1_000_000)
    assert big.method == "ivf" and (big.nlist, big.nprobe) == (2000, 100)
    assert "method='exact' forces it" in big.reason and "5.0% of the pairs" in str(big)
    assert knn_mod.plan(1_000_000, method="exact").method == "exact"
    assert knn_mod.plan(10, method="ivf", nlist=50, nprobe=80).nlist == 10  # capped at N, nprobe at nlist
    assert knn_mod.plan(10, method="ivf", nlist=50, nprobe=80).nprobe == 10
    text = knn_mod.explain()
    assert "exact below" in text and "N=1,000,000" in text and "ivf (nlist=2000" in text
    assert knn_mod.explain(5000).startswith("knn_graph(N=5,000, k=10): exact")
    for bad in (dict(method="faiss"), dict(nlist=0), dict(nprobe=-1), dict(nlist=True)):
        with pytest.raises(ValueError, match="method|nlist|nprobe"):
            knn_mod.plan(100, **bad)
    with pytest.raises(ValueError, match="num_items"):
        knn_mod.plan(-1)
    # auto switches at the threshold: knn_graph then builds through the inverted file
    monkeypatch.setattr(knn_mod, "APPROX_MIN_ITEMS", 500)
    calls = []
    real = knn_mod.knn_topk_ivf
    monkeypatch.setattr(knn_mod, "knn_topk_ivf", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    knn_graph(torch.randn(499, 5), 4)
    assert calls == []
    knn_graph(torch.randn(500, 5), 4)
    assert calls and calls[0]["nlist"] == 45


def test_knn_graph_ivf_is_a_valid_graph_and_exact_when_probing_all():
    x = _clustered(700, d=8)
    g = knn_graph(x, 5, method="ivf")
    assert g.symmetric and g.num_rows == 700 and bool((g.degree() >= 5).all())
    dense = g.to_dense()
    assert float(dense.diagonal().abs().sum()) == 0.0 and torch.equal(dense, dense.t())
    full = knn_graph(x, 5, method="ivf", nlist=7, nprobe=7, weighted=True)
    torch.testing.assert_close(full.to_dense(), knn_graph(x, 5, method="exact", weighted=True).to_dense(),
                               atol=1e-6, rtol=1e-6)
    att = attach_items(x[:600], x[600:], 4, method="ivf", nlist=5, nprobe=5)
    torch.testing.assert_close(att.to_dense(), attach_items(x[:600], x[600:], 4).to_dense(), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="method must be"):
        knn_graph(x, 5, method="hnsw")
    with pytest.raises(ValueError, match="exclude_self"):
        knn_graph(x, 5, method="ivf", exclude_self=False)
    with pytest.raises(ValueError, match="method must be"):
        attach_items(x[:10], x[10:12], 2, method="bad")
