"""``train.propagation: history``: mini-batch steps over the batch's neighbourhoods with historical
embeddings (LightGCN.forward_nodes, MoToRec._forward_nodes), the row-sparse optimizer they train with, and the
catalog-free draws of such a step."""
from __future__ import annotations

import copy

import pytest
import torch
from _model_helpers import make_batch, make_model

from motorec.config import Config, ConfigError
from motorec.graph import Graph
from motorec.models.losses import batch_contrastive_items
from motorec.nn.lightgcn import LightGCN, csr_rows, id_rows
from motorec.testing import random_interactions
from motorec.train.trainer import RowSparseAdam, SparseDenseAdam, make_optimizer

HISTORY_MODELS = ("lightgcn", "lightgcn_content", "motorec")


def _graph(users=30, items=50, edges=200, seed=0):
    u, i = random_interactions(users, items, edges, seed=seed)
    return Graph.from_interactions(u, i, users, items), users, items


def test_csr_rows_matches_dense_rows():
    g, _, _ = _graph()
    dense = g.to_torch_sparse().to_dense()
    nodes = torch.tensor([0, 5, 5, 31, 79, 40])  # a repeat, a user row, item rows, an isolated item
    seg, col, val = csr_rows(g, nodes)
    rebuilt = torch.zeros(nodes.numel(), g.num_cols).index_put_((seg, col), val, accumulate=True)
    torch.testing.assert_close(rebuilt, dense[nodes])
    seg, col, val = csr_rows(g, nodes[:0])
    assert seg.numel() == col.numel() == val.numel() == 0


@pytest.mark.parametrize("layers", [0, 1, 2, 3])
def test_forward_nodes_equals_full_forward_on_a_fresh_history(layers):
    g, users, items = _graph()
    torch.manual_seed(layers)
    m = LightGCN(users, items, embedding_dim=8, num_layers=layers)
    extra, mask = torch.randn(items, 8), torch.rand(items) > 0.3
    m.refresh_history(g, extra, mask)
    full_u, full_i = m(g, m.item_embedding.weight * mask[:, None] + extra)
    us, its = torch.tensor([0, 3, 7, users - 1]), torch.tensor([1, 2, 10, items - 1])
    bu, bi = m.forward_nodes(g, us, its, extra[its])
    torch.testing.assert_close(bu, full_u[us])
    torch.testing.assert_close(bi, full_i[its])


def test_forward_nodes_gradients_exact_with_one_layer():
    """With one layer nothing is read from the history's layers: the ID tables' gradients are the full model's
    (sparse, on the batch's neighbourhood)."""
    g, users, items = _graph(seed=1)
    torch.manual_seed(0)
    a = LightGCN(users, items, embedding_dim=8, num_layers=1)
    b = LightGCN(users, items, embedding_dim=8, num_layers=1, init=(a.user_embedding.weight, a.item_embedding.weight))
    b.refresh_history(g)
    us, its = torch.tensor([1, 4, 9]), torch.tensor([0, 6, 20, 33])
    wu, wi = torch.randn(3, 8), torch.randn(4, 8)
    fu, fi = a(g)
    ((fu[us] * wu).sum() + (fi[its] * wi).sum()).backward()
    bu, bi = b.forward_nodes(g, us, its, sparse_grad=True)
    ((bu * wu).sum() + (bi * wi).sum()).backward()
    assert b.user_embedding.weight.grad.is_sparse
    torch.testing.assert_close(b.user_embedding.weight.grad.to_dense(), a.user_embedding.weight.grad)
    torch.testing.assert_close(b.item_embedding.weight.grad.to_dense(), a.item_embedding.weight.grad)


def test_forward_nodes_writes_the_batch_to_the_history():
    g, users, items = _graph(seed=2)
    m = LightGCN(users, items, embedding_dim=8, num_layers=2)
    m.refresh_history(g)
    before = m._history.layers[0].clone()
    with torch.no_grad():
        m.item_embedding.weight.add_(1.0)  # the weights move after the refresh
    us, its = torch.tensor([2]), torch.tensor([5, 7])
    m.forward_nodes(g, us, its)
    layer1 = m._history.layers[0]
    x0 = torch.cat([m.user_embedding.weight, m.item_embedding.weight]).detach()
    nodes = torch.cat([us, its + users])
    exact = g.to_torch_sparse().to_dense()[nodes] @ x0
    torch.testing.assert_close(layer1[nodes], exact)
    untouched = torch.ones(users + items, dtype=torch.bool)
    untouched[nodes] = False
    assert torch.equal(layer1[untouched], before[untouched])


def test_forward_nodes_errors():
    g, users, items = _graph()
    m = LightGCN(users, items, embedding_dim=8)
    with pytest.raises(RuntimeError, match="refresh_history"):
        m.forward_nodes(g, torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(ValueError, match="item_mask"):
        m.refresh_history(g, item_mask=torch.ones(items - 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="item_extra"):
        m.refresh_history(g, torch.zeros(items, 7))
    m.refresh_history(g)
    with pytest.raises(ValueError, match="item_extra"):
        m.forward_nodes(g, torch.tensor([0]), torch.tensor([0]), torch.zeros(1, 8))
    m.to("cpu", torch.float64)  # a move forgets the history
    with pytest.raises(RuntimeError, match="refresh_history"):
        m.forward_nodes(g, torch.tensor([0]), torch.tensor([0]))


def test_id_rows_sparse_gradient_equals_dense():
    w1 = torch.randn(20, 4, requires_grad=True)
    w2 = w1.detach().clone().requires_grad_()
    idx, t = torch.tensor([3, 3, 0, 19]), torch.randn(4, 4)
    (id_rows(w1, idx) * t).sum().backward()
    (id_rows(w2, idx, True) * t).sum().backward()
    assert w2.grad.is_sparse and not w1.grad.is_sparse
    torch.testing.assert_close(w2.grad.to_dense(), w1.grad)


@pytest.mark.parametrize("maximize", [False, True])
def test_row_sparse_adam_equals_torch_sparse_adam(maximize):
    torch.manual_seed(0)
    w1 = torch.nn.Parameter(torch.randn(40, 6))
    w2 = torch.nn.Parameter(w1.detach().clone())
    o1 = torch.optim.SparseAdam([w1], lr=0.03, maximize=maximize)
    o2 = RowSparseAdam([w2], lr=0.03, maximize=maximize)
    for _ in range(6):
        idx = torch.randint(0, 40, (25,))  # repeated rows: the gradient is uncoalesced
        t = torch.randn(25, 6)
        for w, o in ((w1, o1), (w2, o2)):
            o.zero_grad()
            (torch.nn.functional.embedding(idx, w, sparse=True) * t).sum().backward()
            o.step()
    torch.testing.assert_close(w2, w1)
    for k in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(o2.state[w2][k], o1.state[w1][k])
    w2.grad = torch.zeros_like(w2)
    with pytest.raises(RuntimeError, match="sparse gradients"):
        o2.step()


def test_make_optimizer_splits_sparse_tables(ds):
    m = make_model(ds, "lightgcn_content", propagation="history")
    opt = make_optimizer(m, lr=1e-2)
    assert isinstance(opt, SparseDenseAdam)
    sparse = {id(p) for g in opt.sparse.param_groups for p in g["params"]}
    assert sparse == {id(m.lightgcn.user_embedding.weight), id(m.lightgcn.item_embedding.weight)}
    dense = {id(p) for g in opt.dense.param_groups for p in g["params"]}
    assert dense.isdisjoint(sparse) and len(dense | sparse) == len(list(m.parameters()))
    # every parameter ID-only: no dense part
    ids_only = make_optimizer(make_model(ds, "lightgcn", propagation="history"), lr=1e-2)
    assert ids_only.dense is None and len(ids_only.param_groups) == 1
    with pytest.raises(ConfigError, match="weight_decay"):
        make_optimizer(m, lr=1e-2, weight_decay=1e-4)
    assert isinstance(make_optimizer(make_model(ds, "lightgcn_content"), lr=1e-2), torch.optim.Adam)


def test_sparse_dense_adam_state_round_trip(ds):
    def trained(steps):
        m = make_model(ds, "lightgcn_content", propagation="history")
        m.train()
        opt = make_optimizer(m, lr=1e-2)
        for s in range(steps):
            opt.zero_grad()
            m.loss(make_batch(ds, seed=s))[0].backward()
            opt.step()
        return m, opt

    m, opt = trained(2)
    m2, opt2 = trained(0)
    m2.load_state_dict(m.state_dict())
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # (a checkpoint's copy: loading shares the tensors)
    for a, b in ((m, opt), (m2, opt2)):
        a.refresh_history()
        b.zero_grad()
        a.loss(make_batch(ds, seed=9))[0].backward()
        b.step()
    for p, q in zip(m.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q)
    with pytest.raises(ValueError, match="SparseDenseAdam"):
        opt2.load_state_dict(torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))]).state_dict())


def test_train_propagation_config_errors(ds):
    with pytest.raises(ConfigError, match="train.propagation must be one of full, history"):
        Config().replace(train={"propagation": "sampled"})
    with pytest.raises(ConfigError, match="train.propagation must be one of full, history"):
        make_model(ds, "lightgcn", propagation="sampled")
    for name in ("knn", "aldi", "content"):
        with pytest.raises(ConfigError, match="not supported by model .*supported: lightgcn, lightgcn_content, "
                                              "motorec"):
            make_model(ds, name, propagation="history")


@pytest.mark.parametrize("fanout", [0, 2])
@pytest.mark.parametrize("name", HISTORY_MODELS)
def test_history_step_trains_with_sparse_id_gradients(ds, name, fanout):
    m = make_model(ds, name, propagation="history", fanout=fanout)
    assert m.fanout == fanout
    m.train()
    m.on_epoch_start(1)
    loss, parts = m.loss(make_batch(ds))
    assert torch.isfinite(loss)
    loss.backward()
    assert m.lightgcn.user_embedding.weight.grad.is_sparse
    assert m.lightgcn.item_embedding.weight.grad.is_sparse
    dense_grads = [p for p in m.parameters() if p.grad is not None and not p.grad.is_sparse]
    if name != "lightgcn":
        assert dense_grads  # the content part trains too
    m.eval()
    assert not m.history_steps  # evaluation propagates the full graph
    users, items = m.embeddings()
    assert users.shape == (ds.num_users, 16) and items.shape == (ds.num_items, 16)


def test_motorec_history_forward_equals_full_forward_on_a_fresh_history(ds):
    """Right after the epoch's refresh, with the weights unchanged, a history step's rows are the full forward's
    (tokenizer_sample 0: the tokenizer runs on the batch's items, as the full step runs it on every item)."""
    m = make_model(ds, "motorec", propagation="history")
    m.train()
    with torch.no_grad():
        m._forward()  # the quantizer's k-means initialization (on its first training forward), as pre-training does
    m.on_epoch_start(1)
    users = torch.tensor([0, 5, 17, 100])
    items = torch.tensor([1, 2, 30, 64, 89])
    with torch.no_grad():
        bu, bcollab, bcontent, _ = m._forward_nodes(users, items)
        fu, fcollab, fcontent, _ = m._forward()
    torch.testing.assert_close(bu, fu[users], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bcollab, fcollab[items], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bcontent, fcontent[items], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("over", [{}, {"fusion": "mean"}, {"item_item": False}])
def test_motorec_history_refresh_in_row_blocks_equals_the_whole_catalog_pass(ds, over):
    """The refresh runs the token level, the item-item views and the fusion in row blocks (7 items: 13 blocks over
    90 items, the last one short); its tables are the whole-catalog expressions'."""
    m = make_model(ds, "motorec", propagation="history", **over)
    m.train()
    with torch.no_grad():
        m._forward()  # the quantizer's k-means initialization, as pre-training does
        latents, codes = m.tokenizer.encode_catalog()
        h = m.token_level(latents, codes)
        want_content = m._fuse(h)
        m.refresh_history(latents, codes, chunk=7)
    assert set(m._token_history) == set(h)
    for k, v in h.items():
        torch.testing.assert_close(m._token_history[k], v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m.lightgcn._history.item_extra, want_content, rtol=1e-5, atol=1e-6)
    whole = [t.clone() for t in m.lightgcn._history.layers]
    with torch.no_grad():
        m.refresh_history(latents, codes, chunk=10**6)
    for a, b in zip(whole, m.lightgcn._history.layers):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="chunk must be a positive int"):
            m.refresh_history(latents, codes, chunk=bad)


def test_motorec_rows_tokens_sampled(ds):
    m = make_model(ds, "motorec", propagation="history", tokenizer_sample=8)
    m.train()
    m.on_epoch_start(1)
    tok = m.tokenizer
    rows = torch.arange(ds.num_items)
    torch.manual_seed(5)
    lat, codes, outs = tok.rows_tokens(rows)
    for mod in tok.modalities:
        assert lat[mod].shape == (ds.num_items, 16) and codes[mod].shape == (ds.num_items, 3)
        out = outs[mod]
        assert out.z_q.shape[0] == 8
        # the sampled rows carry the fresh latents (and their gradient), the others their tokens' codewords
        fresh = torch.isclose(lat[mod][:, None, :], out.z_q[None]).all(-1).any(1)
        assert int(fresh.sum()) >= 8 and lat[mod].requires_grad
        cb = tok.rqvae[mod].quantizer.codebooks.detach()
        words = sum(cb[level][codes[mod][:, level]] for level in range(cb.shape[0]))
        torch.testing.assert_close(lat[mod][~fresh], words[~fresh])


def test_catalog_free_sample_is_distinct_and_in_range(ds):
    m = make_model(ds, "motorec", tokenizer_sample=4)  # 90 items >= 16 * 4: the catalog-free draw
    m.train()
    for seed in range(20):
        torch.manual_seed(seed)
        items, _ = m.tokenizer._draw_sample(catalog_free=True)
        assert items.numel() == 4 and items.unique().numel() == 4
        assert int(items.min()) >= 0 and int(items.max()) < ds.num_items


def test_batch_contrastive_items():
    pos = torch.tensor([3, 3, 9, 1, 9, 4])
    items, valid = batch_contrastive_items(pos, 10)
    assert sorted(items.tolist()) == [1, 3, 4, 9] and torch.equal(valid, torch.ones(4))
    torch.manual_seed(0)
    items, valid = batch_contrastive_items(pos, 2)
    assert items.numel() == 2 and items.unique().numel() == 2 and set(items.tolist()) <= {1, 3, 4, 9}
    items, valid = batch_contrastive_items(pos[:0], 5)
    assert items.numel() == valid.numel() == 0


def test_decoupled_warm_scorer_takes_the_propagation(ds):
    from motorec.config import WrapperConfig

    w = make_model(ds, "motorec", propagation="history", wrappers=WrapperConfig(ensemble=1, decoupled=True))
    assert w.warm_model.propagation == "history"
    assert {id(p) for p in w.warm_model.sparse_parameters()} == {
        id(w.warm_model.lightgcn.user_embedding.weight), id(w.warm_model.lightgcn.item_embedding.weight)}


@pytest.mark.parametrize("name", HISTORY_MODELS)
def test_eval_mode_frees_the_history(ds, name):
    """Scoring never reads the history: eval() frees it (about [U + I, d] plus a table per modality at catalog
    scale), and the next training step (or epoch start) computes it again."""
    m = make_model(ds, name, propagation="history")
    m.train()
    m.on_epoch_start(1)
    assert m.lightgcn.has_history
    m.eval()
    assert not m.lightgcn.has_history and getattr(m, "_token_history", None) is None
    m.train()
    loss, _ = m.loss(make_batch(ds))
    assert torch.isfinite(loss) and m.lightgcn.has_history
