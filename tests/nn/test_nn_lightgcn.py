"""motorec.nn.LGConv (PyG LGConv semantics, by hand) and motorec.nn.LightGCN (dense reference, recommend)."""
import pytest
import torch

from motorec import Graph
from motorec.nn import LGConv, LightGCN
from motorec.testing import random_interactions


def _pyg_lgconv_dense(x, edge_index, num_nodes, edge_weight=None, normalize=True):
    """PyG LGConv by hand: gcn_norm(add_self_loops=False) with in-degrees, messages source -> target,
    duplicates kept as separate messages."""
    src, dst = edge_index.tolist()
    w = [1.0] * len(src) if edge_weight is None else edge_weight.double().tolist()
    deg = [0.0] * num_nodes
    for d, wi in zip(dst, w):
        deg[d] += wi
    a = torch.zeros(num_nodes, num_nodes, dtype=torch.float64)
    for s, d, wi in zip(src, dst, w):
        if normalize:
            ds = deg[s] ** -0.5 if deg[s] > 0 else 0.0
            dd = deg[d] ** -0.5 if deg[d] > 0 else 0.0
            wi = ds * wi * dd
        a[d, s] += wi
    return a @ x.double()


def _edge_index(n, e, seed=0):
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n - 2, (2, e), generator=g)  # the last two nodes stay isolated
    return torch.cat([ei, ei[:, :3]], 1)  # some duplicate edges


def test_lgconv_matches_pyg_semantics_by_hand():
    n = 23
    ei = _edge_index(n, 60)
    x = torch.randn(n, 5)
    out = LGConv(backend="torch")(x, ei)
    torch.testing.assert_close(out.double(), _pyg_lgconv_dense(x, ei, n), atol=1e-5, rtol=1e-5)
    assert float(out[-2:].abs().sum()) == 0.0  # isolated nodes receive nothing


def test_lgconv_edge_weight_and_no_normalize():
    n = 17
    ei = _edge_index(n, 40, seed=1)
    w = torch.rand(ei.shape[1]) + 0.1
    x = torch.randn(n, 3)
    conv = LGConv(backend="torch")
    torch.testing.assert_close(conv(x, ei, w).double(), _pyg_lgconv_dense(x, ei, n, w), atol=1e-5, rtol=1e-5)
    raw = LGConv(normalize=False, backend="torch")
    torch.testing.assert_close(raw(x, ei, w).double(), _pyg_lgconv_dense(x, ei, n, w, normalize=False),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_lgconv_torch_sparse_used_as_given(layout):
    n = 11
    dense = torch.rand(n, n) * (torch.rand(n, n) < 0.3)
    a = dense.to_sparse() if layout == "coo" else dense.to_sparse_csr()
    x = torch.randn(n, 4)
    out = LGConv(backend="torch")(x, a)
    torch.testing.assert_close(out, dense @ x, atol=1e-5, rtol=1e-5)


def test_lgconv_graph_input_and_gradient():
    users, items = random_interactions(9, 13, 40, seed=3)
    g = Graph.from_interactions(users, items, 9, 13)
    x = torch.randn(22, 6, requires_grad=True)
    out = LGConv(backend="torch")(x, g)
    a = g.to_dense()
    torch.testing.assert_close(out, a @ x.detach(), atol=1e-5, rtol=1e-5)
    gy = torch.randn_like(out)
    out.backward(gy)
    torch.testing.assert_close(x.grad, a.t() @ gy, atol=1e-5, rtol=1e-5)


def test_lgconv_caches_edge_index_conversion():
    conv = LGConv(backend="torch")
    ei = _edge_index(10, 20)
    g1 = conv.graph(ei, 10)
    assert conv.graph(ei, 10) is g1
    ei[0, 0] = (int(ei[0, 0]) + 1) % 8  # in-place edit bumps the version: rebuilt
    g2 = conv.graph(ei, 10)
    assert g2 is not g1
    assert conv.graph(ei.clone(), 10) is not g2


def test_lgconv_bad_inputs():
    conv = LGConv(backend="torch")
    with pytest.raises(TypeError, match="graph must be"):
        conv(torch.randn(3, 2), [[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="edge_weight"):
        conv(torch.randn(3, 2), Graph.from_edge_index(torch.tensor([[0], [1]]), 3), torch.ones(1))


def _dense_lightgcn(model, a, layers):
    e = torch.cat([model.user_embedding.weight, model.item_embedding.weight]).detach().double()
    acc, h = e.clone(), e
    for _ in range(layers):
        h = a.double() @ h
        acc += h
    return acc / (layers + 1)


@pytest.mark.parametrize("layers", [2, 3])
def test_lightgcn_forward_matches_dense(layers):
    nu, ni = 14, 19
    users, items = random_interactions(nu, ni, 70, seed=5)
    g = Graph.from_interactions(users, items, nu, ni)
    model = LightGCN(nu, ni, embedding_dim=7, num_layers=layers, backend="torch")
    u, i = model(g)
    ref = _dense_lightgcn(model, g.to_dense(), layers)
    torch.testing.assert_close(torch.cat([u, i]).double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.get_embedding(g).double(), ref, atol=1e-5, rtol=1e-5)
    (u.sum() + i.sum()).backward()
    assert model.user_embedding.weight.grad is not None


def test_lightgcn_recommend_excludes_items():
    nu, ni = 10, 25
    users, items = random_interactions(nu, ni, 60, seed=7)
    g = Graph.from_interactions(users, items, nu, ni)
    model = LightGCN(nu, ni, embedding_dim=8, backend="torch")
    batch = torch.tensor([3, 0, 3, 9])  # a repeated user
    exclude = torch.stack([users, items])
    scores, top = model.recommend(g, batch, 5, exclude=exclude)
    assert scores.shape == (4, 5) and top.shape == (4, 5)
    u, i = model(g)
    full = (u[batch] @ i.t()).detach()
    for row, usr in enumerate(batch.tolist()):
        seen = set(items[users == usr].tolist())
        assert not seen & set(top[row].tolist())
        allowed = [j for j in range(ni) if j not in seen]
        ref = sorted(allowed, key=lambda j: -float(full[row, j]))[:5]
        assert top[row].tolist() == ref
    assert torch.equal(top[0], top[2])
    # The same through a bool mask.
    mask = torch.zeros(4, ni, dtype=torch.bool)
    for row, usr in enumerate(batch.tolist()):
        mask[row, items[users == usr]] = True
    s2, t2 = model.recommend(g, batch, 5, exclude=mask)
    assert torch.equal(t2, top)
    # Without exclusion the top items are the plain top-k.
    s3, t3 = model.recommend(g, batch, 5)
    torch.testing.assert_close(s3, torch.topk(full, 5).values)


def test_lightgcn_bad_inputs():
    model = LightGCN(4, 6, backend="torch")
    g = Graph.from_interactions(torch.tensor([0]), torch.tensor([0]), 5, 6)
    with pytest.raises(ValueError, match="graph must be"):
        model(g)
    good = Graph.from_interactions(torch.tensor([0, 1]), torch.tensor([2, 3]), 4, 6)
    with pytest.raises(ValueError, match="k must be"):
        model.recommend(good, torch.tensor([0]), 7)
    with pytest.raises(ValueError, match="users must"):
        model.recommend(good, torch.tensor([4]), 2)
    with pytest.raises(ValueError, match="exclude"):
        model.recommend(good, torch.tensor([0]), 2, exclude=torch.zeros(3, 3, dtype=torch.int64))


def test_lightgcn_init_draws_and_item_input():
    """Each table is one ``init_std * randn`` draw (what motorec's models initialized by hand before using this
    module), and ``item_input`` replaces the item table as layer 0 with gradients to both."""
    torch.manual_seed(0)
    m = LightGCN(5, 7, embedding_dim=4, num_layers=2, init_std=0.1, backend="torch")
    torch.manual_seed(0)
    u0, i0 = torch.randn(5, 4) * 0.1, torch.randn(7, 4) * 0.1
    assert torch.equal(m.user_embedding.weight.detach(), u0) and torch.equal(m.item_embedding.weight.detach(), i0)
    g = Graph.from_interactions(torch.tensor([0, 1, 2, 4, 4]), torch.tensor([1, 1, 3, 6, 0]), 5, 7)
    items0 = torch.randn(7, 4, requires_grad=True)
    users, items = m(g, items0)
    dense = g.to_dense().double()
    x = torch.cat([u0, items0.detach()]).double()
    expect = (x + dense @ x + dense @ (dense @ x)) / 3
    torch.testing.assert_close(torch.cat([users, items]).double(), expect, atol=1e-6, rtol=1e-6)
    (users.sum() + items.sum()).backward()
    assert items0.grad is not None and m.user_embedding.weight.grad is not None
    assert m.item_embedding.weight.grad is None  # the table was not layer 0
    with pytest.raises(ValueError, match=r"item_input must be \[num_items=7, embedding_dim=4\]"):
        m(g, torch.randn(6, 4))
    # given tables: copied (the caller's tensors are not the parameters), and nothing drawn
    state = torch.get_rng_state()
    given = LightGCN(5, 7, embedding_dim=4, backend="torch", init=(u0, i0))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(given.user_embedding.weight.detach(), u0) and torch.equal(given.item_embedding.weight.detach(), i0)
    with torch.no_grad():
        given.user_embedding.weight.add_(1.0)
    assert not torch.equal(given.user_embedding.weight.detach(), u0)
    for bad, msg in (((u0, torch.randn(6, 4)), r"item table must be a float tensor of shape \[7, 4\], got \(6, 4\)"),
                     ((u0[:, :3], i0), r"user table must be a float tensor of shape \[5, 4\], got \(5, 3\)"),
                     ((u0.long(), i0), r"user table must be a float tensor"),
                     ((None, i0), r"user table must be a float tensor of shape \[5, 4\], got NoneType")):
        with pytest.raises(ValueError, match=msg):
            LightGCN(5, 7, embedding_dim=4, backend="torch", init=bad)
