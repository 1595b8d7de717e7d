"""``train.fanout``: a history step's neighbours capped per node (:func:`motorec.nn.lightgcn.sampled_rows`,
``LightGCN.forward_nodes(fanout=)``), sampled without repeats and reweighted so that a row's product is
unbiased."""
from __future__ import annotations

import pytest
import torch
from _model_helpers import make_model

from motorec.config import Config, ConfigError, WrapperConfig
from motorec.graph import Graph
from motorec.nn.lightgcn import LightGCN, csr_rows, sampled_rows
from motorec.testing import random_interactions


def _graph(users=12, items=40, edges=300, seed=0):
    u, i = random_interactions(users, items, edges, seed=seed)
    return Graph.from_interactions(u, i, users, items), users, items


def _degrees(g, nodes):
    rowptr = g.rowptr.long()
    return rowptr[nodes + 1] - rowptr[nodes]


def test_sampled_rows_keeps_short_rows_whole_and_samples_long_ones():
    g, users, items = _graph()
    nodes = torch.tensor([0, 3, 3, users + 5, users + items - 1, 7])  # a repeat, user rows (long), item rows
    deg = _degrees(g, nodes)
    fanout = 4
    assert (deg > fanout).any() and (deg <= fanout).any()
    torch.manual_seed(0)
    seg, col, val, exact = sampled_rows(g, nodes, fanout)
    assert exact.tolist() == (deg <= fanout).tolist()
    assert torch.bincount(seg, minlength=nodes.numel()).tolist() == deg.clamp(max=fanout).tolist()
    full_seg, full_col, full_val = csr_rows(g, nodes)
    for s in range(nodes.numel()):
        row = dict(zip(full_col[full_seg == s].tolist(), full_val[full_seg == s].tolist()))
        cols, vals = col[seg == s].tolist(), val[seg == s].tolist()
        assert len(set(cols)) == len(cols)  # never the same neighbour twice
        scale = float(deg[s]) / fanout if deg[s] > fanout else 1.0
        for c, v in zip(cols, vals):
            assert c in row and v == pytest.approx(row[c] * scale, rel=1e-6)
    # empty node lists, and rows of no neighbour (an item without interactions)
    for nodes_ in (nodes[:0], torch.tensor([users + items - 1])):
        out = sampled_rows(g, nodes_, fanout)
        assert out[0].numel() == out[1].numel() == out[2].numel() == int(_degrees(g, nodes_).clamp(max=fanout).sum())


def test_sampled_rows_without_cap_is_csr_rows():
    g, users, _ = _graph()
    nodes = torch.arange(users)
    want = csr_rows(g, nodes)
    for fanout in (0, int(_degrees(g, nodes).max())):
        seg, col, val, exact = sampled_rows(g, nodes, fanout)
        assert exact.all()
        for a, b in zip((seg, col, val), want):
            assert torch.equal(a, b)


def test_sampled_rows_includes_each_neighbour_with_probability_fanout_over_degree():
    """Systematic sampling: every nonzero of a long row is kept with probability fanout / degree, so the
    reweighted row product is unbiased; checked on the inclusion frequencies and on the product's mean."""
    g, users, items = _graph(users=3, items=60, edges=150, seed=2)
    nodes = torch.arange(users)
    deg = _degrees(g, nodes)
    fanout, draws = 5, 4000
    assert (deg > 3 * fanout).all()
    full_seg, full_col, full_val = csr_rows(g, nodes)
    x = torch.randn(g.num_cols, 3, dtype=torch.float64)
    exact = torch.zeros(users, 3, dtype=torch.float64).index_add_(0, full_seg, x[full_col] * full_val[:, None].double())
    hits = torch.zeros(users, g.num_cols)
    mean = torch.zeros(users, 3, dtype=torch.float64)
    torch.manual_seed(0)
    for _ in range(draws):
        seg, col, val, _ = sampled_rows(g, nodes, fanout)
        hits.index_put_((seg, col), torch.ones(seg.numel()), accumulate=True)
        mean += torch.zeros(users, 3, dtype=torch.float64).index_add_(0, seg, x[col] * val[:, None].double())
    for s in range(users):
        p = hits[s, full_col[full_seg == s]] / draws
        want = fanout / float(deg[s])
        # binomial standard error at 4000 draws is below 0.008 here; 5 of them
        assert (p - want).abs().max() < 0.04, (s, p, want)
    torch.testing.assert_close(mean / draws, exact, atol=0.1 * exact.abs().max().item(), rtol=0)


def test_forward_nodes_with_a_cap_above_every_degree_is_the_exact_step():
    g, users, items = _graph()
    torch.manual_seed(0)
    m = LightGCN(users, items, embedding_dim=8, num_layers=2)
    m.refresh_history(g)
    us, its = torch.tensor([0, 2, 5]), torch.tensor([1, 7, 30])
    a = m.forward_nodes(g, us, its)
    m.refresh_history(g)
    b = m.forward_nodes(g, us, its, fanout=int(g.rowptr.diff().max()))
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_forward_nodes_does_not_write_sampled_rows_to_the_history():
    """A capped node's layers are estimates: the history keeps its refreshed rows; exact nodes are written."""
    g, users, items = _graph()
    torch.manual_seed(0)
    m = LightGCN(users, items, embedding_dim=8, num_layers=2)
    m.refresh_history(g)
    fanout = 3
    us, its = torch.tensor([0, 1]), torch.tensor([2, 9])
    nodes = torch.cat([us, its + users])
    exact = _degrees(g, nodes) <= fanout
    assert exact.any() and (~exact).any()
    with torch.no_grad():
        m.user_embedding.weight.add_(1.0)  # the batch's fresh layers now differ from the refreshed ones
        m.item_embedding.weight.add_(1.0)
    before = m._history.layers[0].clone()
    m.forward_nodes(g, us, its, fanout=fanout)
    after = m._history.layers[0]
    changed = (after != before).any(1)
    assert changed[nodes[exact]].all()
    assert not changed[nodes[~exact]].any()
    others = torch.ones(users + items, dtype=torch.bool)
    others[nodes] = False
    assert not changed[others].any()


def test_decoupled_warm_scorer_takes_the_fanout(ds):
    w = make_model(ds, "motorec", propagation="history", fanout=3, wrappers=WrapperConfig(ensemble=1, decoupled=True))
    assert w.warm_model.fanout == 3


def test_fanout_config_errors(ds):
    with pytest.raises(ConfigError, match="train.fanout caps a history step's neighbours: it needs "
                                          "train.propagation: history"):
        Config().replace(train={"fanout": 8})
    with pytest.raises(ConfigError, match="train.fanout"):
        Config().replace(train={"fanout": -1, "propagation": "history"})
    assert Config().replace(train={"fanout": 8, "propagation": "history"}).train.fanout == 8
    with pytest.raises(ConfigError, match="needs train.propagation: history, got 'full'"):
        make_model(ds, "lightgcn", fanout=4)
    for bad in (-1, True, 2.5):
        with pytest.raises(ConfigError, match=r"train.fanout must be an int >= 0 \(0: every neighbour\)"):
            make_model(ds, "lightgcn", propagation="history", fanout=bad)
