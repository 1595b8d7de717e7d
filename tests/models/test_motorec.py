"""MoToRec (``motorec/models/motorec.py``): the paper's model. Its loss terms against hand computations, cold items
embedded from their features alone, the paper's ablation switches, the tokenizer (tokens, sampled steps, churn),
the item-item graphs as state, brand-new items, and bad input."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from _model_helpers import cold_last, make_batch, make_model, small_config

from motorec.config import Config, WrapperConfig
from motorec.data import synthetic
from motorec.models import MoToRec, bpr_loss, build_model, rarity_weights, wrap
from motorec.models.losses import contrastive_loss


@pytest.mark.parametrize("item_item", [True, False])
def test_cold_items_ignore_their_id_embedding(ds, item_item):
    m = make_model(ds, "motorec", item_item=item_item)
    m.on_epoch_start(0)
    m.eval()
    before = m.item_embeddings().clone()
    cold = ds.cold_items()
    assert cold.any() and (~cold).any()
    table = m.lightgcn.item_embedding.weight
    with torch.no_grad():
        table[cold] += torch.randn(int(cold.sum()), table.shape[1]) * 10
    m.train()
    m.eval()
    after = m.item_embeddings()
    assert torch.allclose(after[cold], before[cold], atol=1e-6)  # features alone
    assert torch.allclose(after[~cold], before[~cold], atol=1e-6)  # a cold ID never propagates either
    with torch.no_grad():
        table[~cold] += 1.0
    m.train()
    m.eval()
    assert not torch.allclose(m.item_embeddings()[~cold], before[~cold])


def test_layer0_and_final_item_embeddings(ds):
    """Layer 0 is ``ID + h~`` for warm items and ``h~`` for cold ones; the final item is the LightGCN readout, plus
    ``h~`` for cold items, which then is ``h~ (1 + 1 / (L + 1))`` (no edges)."""
    m = make_model(ds, "motorec")
    m.on_epoch_start(0)
    seen = {}
    real = m.lightgcn.forward

    def spy(graph, ego):
        seen["layer0"] = ego
        return real(graph, ego)

    m.lightgcn.forward = spy
    m.eval()
    with torch.no_grad():
        users, collab, content, _ = m._forward()
        _, items = m.embeddings()
    warm = ds.warm_items()
    torch.testing.assert_close(seen["layer0"][warm], m.item_emb.detach()[warm] + content[warm])
    torch.testing.assert_close(seen["layer0"][~warm], content[~warm])
    torch.testing.assert_close(items[warm], collab[warm])
    torch.testing.assert_close(items[~warm], collab[~warm] + content[~warm])
    torch.testing.assert_close(items[~warm], m._cold_scale * content[~warm], rtol=1e-5, atol=1e-6)
    assert content[warm].abs().sum() > 0


@pytest.mark.parametrize("switch", [
    {"sparse_weight": 0.0}, {"rarity": False}, {"item_item": False}, {"continuous": True},
    {"token_embeddings": False}, {"rarity": True, "rarity_warmup_epochs": 0}, {"fusion": "attention"},
], ids=["no-sparsity", "no-rarity", "no-item-item", "continuous", "no-token-emb", "rarity", "attention"])
def test_ablation_switches(ds, switch):
    m = make_model(ds, "motorec", **switch)
    m.train()
    m.on_epoch_start(3)
    total, parts = m.loss(make_batch(ds))
    total.backward()
    assert torch.isfinite(total)
    if switch.get("item_item") is False:
        assert m.item_item.graphs == {}
    else:
        assert set(m.item_item.graphs) == set(ds.features)
    if switch.get("continuous"):
        assert parts["rq"] >= 0 and m.tokenizer.rqvae["image"].continuous
        with pytest.raises(ValueError, match="continuous"):
            m.tokenize()
    if "rarity" in switch:
        assert m.rarity_ramp() == (1.0 if switch["rarity"] else 0.0)
    assert (m.fusion is not None) == (switch.get("fusion") == "attention")
    m.eval()
    assert torch.isfinite(m.score(torch.arange(4))).all()


def _loss_pair(ds, batch, over0, over1):
    """Two MoToRecs built alike but for ``over0`` / ``over1``, each's ``(model, loss, parts)`` on ``batch`` at
    joint epoch 0 with the same random draws."""
    out = []
    for over in (over0, over1):
        m = make_model(ds, "motorec", **over)
        m.train()
        m.on_epoch_start(0)
        torch.manual_seed(1)
        out.append((m, *m.loss(batch)))
    return out


@pytest.mark.filterwarnings("ignore:motorec.rarity is on but weights no term")
def test_lambda_cold_adds_content_only_bpr_term(ds):
    """lambda_cold adds ``lambda_cold * BPR(u . s h~_p, u . s h~_n)`` (s h~: the cold embedding of the item)."""
    b = make_batch(ds)
    (m0, t0, p0), (m1, t1, p1) = _loss_pair(ds, b, dict(lambda_cold=0.0, lambda_cl=0.0),
                                            dict(lambda_cold=0.7, lambda_cl=0.0))
    assert "bpr_cold" not in p0 and p1["bpr_cold"] > 0
    users, _, content, _ = m1._forward()
    cold = m1._cold_scale * content
    ue = users[b["users"]]
    w = rarity_weights(m1.item_degree, b["pos"], ramp=m1.rarity_ramp(), clip=(0.5, 5.0))
    expected = bpr_loss((ue * cold[b["pos"]]).sum(1), (ue * cold[b["neg"]]).sum(1), w)
    assert math.isclose(p1["bpr_cold"], float(expected.detach()), rel_tol=1e-5)
    assert math.isclose(float((t1 - t0).detach()), 0.7 * float(expected.detach()), rel_tol=1e-4, abs_tol=1e-6)


def test_lambda_cl_adds_the_contrastive_term_between_the_two_views(ds):
    b = make_batch(ds)
    (m0, t0, p0), (m1, t1, p1) = _loss_pair(ds, b, dict(lambda_cl=0.0), dict(lambda_cl=0.3, cl_items=512))
    assert "cl" not in p0 and p1["cl"] > 0
    _, collab, content, _ = m1._forward()
    expected = float(contrastive_loss(collab, content, b["pos"], m1.config.tau, 512).detach())
    assert math.isclose(p1["cl"], expected, rel_tol=1e-5)
    assert math.isclose(float((t1 - t0).detach()), 0.3 * expected, rel_tol=1e-4, abs_tol=1e-6)


@pytest.mark.parametrize("terms", ["all", "content"])
def test_rarity_terms_choose_which_bpr_terms_are_weighted(ds, terms):
    """rarity_terms="all" weights both BPR terms; "content" leaves the main term unweighted and weights only
    the content-only (lambda_cold) term."""
    b = make_batch(ds)
    m = make_model(ds, "motorec", lambda_cold=0.5, lambda_cl=0.0, rarity=True, rarity_warmup_epochs=0,
                   rarity_terms=terms)
    m.train()
    m.on_epoch_start(0)
    torch.manual_seed(1)
    _, parts = m.loss(b)
    users, collab, content, _ = m._forward()
    items = m._final_items(collab, content)
    cold = m._cold_scale * content
    ue = users[b["users"]]
    w = rarity_weights(m.item_degree, b["pos"], ramp=1.0, clip=(0.5, 5.0))
    assert not torch.allclose(w, torch.ones_like(w))  # the weights are not trivially 1 on this batch
    main = bpr_loss((ue * items[b["pos"]]).sum(1), (ue * items[b["neg"]]).sum(1), w if terms == "all" else None)
    aux = bpr_loss((ue * cold[b["pos"]]).sum(1), (ue * cold[b["neg"]]).sum(1), w)
    assert math.isclose(float(parts["bpr"]), float(main.detach()), rel_tol=1e-5)
    assert math.isclose(float(parts["bpr_cold"]), float(aux.detach()), rel_tol=1e-5)
    other = bpr_loss((ue * items[b["pos"]]).sum(1), (ue * items[b["neg"]]).sum(1), None if terms == "all" else w)
    assert not math.isclose(float(parts["bpr"]), float(other.detach()), rel_tol=1e-5)


def test_rarity_clip_bounds_the_weights(ds):
    b = make_batch(ds)
    m = make_model(ds, "motorec", rarity_clip=(0.9, 1.1), rarity_warmup_epochs=0, lambda_cl=0.0)
    m.train()
    m.on_epoch_start(0)
    torch.manual_seed(1)
    _, parts = m.loss(b)
    users, _, content, _ = m._forward()
    cold, ue = m._cold_scale * content, users[b["users"]]
    w = rarity_weights(m.item_degree, b["pos"], ramp=1.0, clip=(0.9, 1.1))
    assert float(w.min()) >= 0.9 - 1e-6 and float(w.max()) <= 1.1 + 1e-6 and not torch.equal(w, torch.ones_like(w))
    aux = bpr_loss((ue * cold[b["pos"]]).sum(1), (ue * cold[b["neg"]]).sum(1), w)
    assert math.isclose(float(parts["bpr_cold"]), float(aux.detach()), rel_tol=1e-5)


def test_fusion_mean_is_the_plain_mean_of_the_modality_views(ds):
    """``fusion: mean``: the content view is the mean of the modality views (after the item-item level), with no
    fusion parameters."""
    m = make_model(ds, "motorec", fusion="mean")
    assert m.fusion is None and not any(k.startswith("fusion.") for k in m.state_dict())
    m.train()
    m.on_epoch_start(0)
    outs = m.tokenizer()
    lat, codes = m.tokenizer.latents(outs), {k: o.codes for k, o in outs.items()}
    views = m.item_item(m.token_level(lat, codes))
    assert len(views) == len(ds.features) == 2
    torch.testing.assert_close(m.content_view(lat, codes), (views[0] + views[1]) / 2)
    total, _ = m.loss(make_batch(ds))
    total.backward()
    assert all(p.grad is not None for p in m.token_level.parameters())


def test_model_rejects_bad_input(ds):
    with pytest.raises(ValueError, match="train"):
        MoToRec(num_users=3, num_items=4, train=torch.zeros(5, dtype=torch.long), features={},
                config=small_config("motorec"))
    with pytest.raises(ValueError, match="features"):
        MoToRec(num_users=ds.num_users, num_items=ds.num_items, train=ds.train,
                features={"image": torch.randn(ds.num_items + 1, 4)}, config=small_config("motorec"))
    with pytest.raises(ValueError, match="at least one feature modality"):
        MoToRec(num_users=ds.num_users, num_items=ds.num_items, train=ds.train, features={},
                config=small_config("motorec"))


@pytest.mark.parametrize("over", [{}, {"cold_calibration": 1.0}, {"fusion": "attention"}])
def test_with_new_items_equals_having_them_in_the_catalog(ds, over):
    full, trunc, n_warm = cold_last(ds)
    assert full.num_items - n_warm >= 5
    m_full = make_model(full, "motorec", **over)
    m_full.train()
    m_full.on_epoch_start(0)
    m_full.loss(make_batch(full))  # k-means codebook init on a training batch, as training starts
    m_full.eval()
    m_full.rebuild_item_graphs()
    # the same trained weights, on a catalog that never had the cold items
    m_warm = make_model(trunc, "motorec", **over)
    state = m_full.state_dict()
    key = "lightgcn.item_embedding.weight"
    state[key] = state[key][:n_warm]
    state["item_item._extra_state"] = {}  # the graphs over the full catalog do not fit
    m_warm.load_state_dict(state)
    m_warm.eval()
    before = m_warm.score(torch.arange(trunc.num_users)).clone()
    rng = torch.get_rng_state()
    grown = m_warm.with_new_items({m: f[n_warm:] for m, f in full.features.items()})
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is not drawn from
    assert grown.num_items == full.num_items and not grown.training
    assert not bool(grown.warm_mask[n_warm:].any()) and bool(grown.warm_mask[:n_warm].all())
    users = torch.arange(full.num_users)
    torch.testing.assert_close(grown.score(users), m_full.score(users), rtol=1e-5, atol=1e-5)
    for m, codes in grown.tokenize().items():
        assert torch.equal(codes, m_full.tokenize()[m])
    # the original model is untouched
    assert m_warm.num_items == n_warm and torch.equal(m_warm.score(users), before)


def test_trainer_logs_code_churn_per_joint_epoch():
    """The trainer puts MoToRec's epoch_log (code churn) into the history rows after the first joint epoch."""
    from motorec.train import Trainer

    small = synthetic(60, 40, num_topics=4, modalities={"image": 8, "text": 6}, seed=1)
    cfg = Config().replace(model={"dim": 16}, motorec={"codebook_size": 16, "latent_dim": 16, "hidden_dims": [32],
                                                       "knn_k": 5, "tokenizer_sample": 8},
                           train={"epochs": 3, "pretrain_epochs": 1, "batch_size": 64})
    out = Trainer(cfg, small, quiet=True).fit()
    joint = [r for r in out["history"] if r["stage"] == "joint"]
    assert "churn_image" not in joint[0]
    for r in joint[1:]:
        assert 0.0 <= r["churn_image"] <= 1.0 and 0.0 <= r["churn_text"] <= 1.0


def test_tokenize_shapes_and_range(ds):
    m = make_model(ds, "motorec", num_levels=2)
    m.train()
    m.pretrain_loss(torch.arange(ds.num_items))  # k-means init of the codebooks on the catalog
    tok = m.tokenize()
    assert set(tok) == set(ds.features)
    for codes in tok.values():
        assert codes.shape == (ds.num_items, 2) and codes.dtype == torch.int64
        assert int(codes.min()) >= 0 and int(codes.max()) < 16
        assert torch.unique(codes[:, 0]).numel() > 1
    assert m.training  # tokenize restores the mode


def test_rarity_with_no_term_to_weight_warns(ds):
    with pytest.warns(UserWarning, match="weights no term"):
        make_model(ds, "motorec", lambda_cold=0.0, rarity=True, rarity_terms="content")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_model(ds, "motorec", lambda_cold=0.0, rarity=True, rarity_terms="all")
        make_model(ds, "motorec", lambda_cold=0.0, rarity=False)
        make_model(ds, "motorec", lambda_cold=0.2, rarity=True)


def test_sparse_weight_zero_removes_sparsity_gradient(ds):
    b = make_batch(ds)
    for sw, expect_diff in ((0.0, False), (1.0, True)):
        m = make_model(ds, "motorec", sparse_weight=sw)
        m.train()
        m.on_epoch_start(0)
        m.loss(b)  # k-means init happens here
        m.zero_grad()
        torch.manual_seed(5)
        m.loss(b)[0].backward()
        g1 = m.tokenizer.rqvae["image"].encoder[0].weight.grad.clone()
        m.config.sparse_weight = 0.0
        m.zero_grad()
        torch.manual_seed(5)
        m.loss(b)[0].backward()
        g0 = m.tokenizer.rqvae["image"].encoder[0].weight.grad
        assert (not torch.allclose(g1, g0)) == expect_diff


def test_rarity_ramp_schedule(ds):
    m = make_model(ds, "motorec", rarity=True, rarity_warmup_epochs=4)
    ramps = []
    for e in range(6):
        m.on_epoch_start(e)
        ramps.append(m.rarity_ramp())
    assert ramps == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


def test_state_dict_carries_item_graphs_rebuild_schedule(ds, tmp_path):
    """The kNN graphs are module state (ItemItemEncoder.get_extra_state): one state_dict, saved and loaded with
    weights_only, gives a model that embeds exactly like the original; a graph of another catalog is refused."""
    m = make_model(ds, "motorec", knn_rebuild_every=2)
    m.on_epoch_start(0)
    g0 = m.item_item.graphs["image"]
    m.on_epoch_start(1)
    assert m.item_item.graphs["image"] is g0  # not rebuilt between rebuild epochs
    m.on_epoch_start(2)
    assert m.item_item.graphs["image"] is not g0
    torch.save(m.state_dict(), tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    assert set(state["item_item._extra_state"]) == {"image", "text"}
    assert "tokenizer.rqvae.image.quantizer._extra_state" in state  # the quantizer's window step, alike
    torch.manual_seed(7)  # another initialization: everything must come from the state
    m2 = build_model(ds, m.config)
    assert m2.item_item.graphs == {}
    m2.load_state_dict(state)
    for k, g in m.item_item.graphs.items():
        h = m2.item_item.graphs[k]
        assert torch.equal(g.rowptr, h.rowptr) and torch.equal(g.col, h.col) and torch.equal(g.val, h.val)
    m.eval(), m2.eval()
    assert torch.equal(m.item_embeddings(), m2.item_embeddings())
    assert torch.equal(m.score(torch.arange(5)), m2.score(torch.arange(5)))
    # a model already used for scoring drops its cached embeddings when new weights are loaded
    m3 = make_model(ds, "motorec", knn_rebuild_every=2)
    m3.eval()
    m3.score(torch.arange(3))
    m3.load_state_dict(state)
    assert torch.equal(m3.item_embeddings(), m.item_embeddings())
    small = synthetic(120, 60, num_topics=6, modalities={"image": 24, "text": 12}, seed=3)
    other = build_model(small, m.config)
    with pytest.raises(ValueError, match="item-item graph of modality 'image' has 90 items, this model 60"):
        other.item_item.set_extra_state(state["item_item._extra_state"])


@pytest.mark.parametrize("n", [0, 1, 37, 500])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_token_sum_matches_gather_and_sum(n, dtype):
    """The token level's fused ``weight[idx].sum(1)`` (embedding_bag forward, per-level index_add_ backward):
    same values and weight gradient as the plain gather + sum, repeated codes and empty catalogs included."""
    from motorec.models.content import token_sum

    g = torch.Generator().manual_seed(n)
    levels, size, d = 3, 7, 5
    offset = torch.arange(levels) * size
    idx = torch.randint(0, size, (n, levels), generator=g) + offset
    w1 = torch.randn(levels * size, d, dtype=dtype, generator=g, requires_grad=True)
    w2 = w1.detach().clone().requires_grad_(True)
    up = torch.randn(n, d, dtype=dtype, generator=g)
    got, want = token_sum(w1, idx), w2[idx].sum(1)
    assert got.shape == (n, d) and got.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    (got * up).sum().backward()
    (want * up).sum().backward()
    torch.testing.assert_close(w1.grad, w2.grad, atol=tol, rtol=tol)
    if 0 < n <= 37 and dtype == torch.float64:
        assert torch.autograd.gradcheck(lambda w: token_sum(w, idx), (w1.detach().clone().requires_grad_(True),))


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("m", [1, 2, 3])
def test_source_attention_module_matches_autograd_of_the_tanh_form(m, backend):
    """The SourceAttention module (its op, :func:`motorec.ops.source_attention`, is tested on its own in
    tests/ops/test_source_attention.py) against softmax_m(q . tanh(W h^m + b)) through autograd (float64):
    output, weights, gradients with a gradient on the weights as well as on the output; a list of sources and
    one stacked tensor give the same."""
    from motorec.models.content import SourceAttention

    torch.manual_seed(m)
    att = SourceAttention(6, backend).double()
    hs = torch.randn(m, 9, 6, dtype=torch.float64, requires_grad=True)
    g_out, g_w = torch.randn(9, 6, dtype=torch.float64), torch.randn(9, m, dtype=torch.float64)
    out, w = att(hs)
    got = torch.autograd.grad((out * g_out).sum() + (w * g_w).sum(),
                              (hs, att.proj.weight, att.proj.bias, att.query))
    ref_w = torch.softmax(torch.tanh(att.proj(hs)) @ att.query, dim=0)
    ref_out = (ref_w.unsqueeze(-1) * hs).sum(0)
    want = torch.autograd.grad((ref_out * g_out).sum() + (ref_w.t() * g_w).sum(),
                               (hs, att.proj.weight, att.proj.bias, att.query))
    torch.testing.assert_close(w, ref_w.t(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-14)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    out_list, w_list = att(list(hs.unbind(0)))
    assert torch.equal(out_list, out) and torch.equal(w_list, w)


@pytest.mark.parametrize("token_embeddings,scale", [(True, 1.0), (False, 1.0), (True, 0.5)])
def test_sampled_token_level_matches_the_direct_form(ds, token_embeddings, scale):
    """TokenEncoder.forward_sampled (one lookup per item into C W^T + E, the sample's rows from their fresh
    latents) computes the direct token level on the materialized latents: same values, same gradients of the
    projection, the token embeddings and (through the fresh rows) the tokenizer; float64 to compare tightly."""
    m = make_model(ds, "motorec", tokenizer_sample=16, token_embeddings=token_embeddings).double()
    m.train()
    m.on_epoch_start(0)
    torch.manual_seed(5)
    parts, _ = m.tokenizer.sampled_tokens()
    assert all(p.items.numel() == 16 and p.codes.shape == (ds.num_items, m.config.num_levels) for p in parts.values())
    gen = torch.Generator().manual_seed(1)
    weights = {mod: torch.randn(ds.num_items, m.config.dim, generator=gen, dtype=torch.float64) for mod in parts}
    params = [p for p in m.token_level.parameters()] + [p for p in m.tokenizer.parameters() if p.requires_grad]

    def grads(h):
        loss = sum((h[mod] * weights[mod]).sum() for mod in h)
        return [torch.zeros_like(p) if g is None else g
                for p, g in zip(params, torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))]

    fast = m.token_level.forward_sampled(parts, scale)
    direct = m.token_level({mod: p.latents() for mod, p in parts.items()}, {mod: p.codes for mod, p in parts.items()})
    direct = {mod: scale * h for mod, h in direct.items()}
    for mod in parts:
        torch.testing.assert_close(fast[mod], direct[mod], rtol=1e-10, atol=1e-10)
    for a, b in zip(grads(fast), grads(direct)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    assert any(g.abs().sum() > 0 for g in grads(fast)[len(list(m.token_level.parameters())):])  # tokenizer reached


def test_sampled_tokens_refuses_outside_a_sampling_step(ds):
    m = make_model(ds, "motorec", tokenizer_sample=0)
    m.train()
    with pytest.raises(RuntimeError, match="sampling step"):
        m.tokenizer.sampled_tokens()


def test_with_new_items_rejects_bad_features(ds):
    m = make_model(ds, "motorec")
    m.eval()
    good = {k: torch.randn(3, f.shape[1]) for k, f in ds.features.items()}
    assert m.with_new_items(good).score(torch.arange(4)).shape == (4, ds.num_items + 3)
    bad_nan = {k: v.clone() for k, v in good.items()}
    bad_nan["image"][1, 2] = float("nan")
    cases = [
        ({"image": good["image"]}, r"each trained modality \['image', 'text'\]"),
        ({**good, "audio": good["text"]}, "each trained modality"),
        ([good["image"]], "got list"),
        ({**good, "text": torch.randn(3, 5)}, r"features\['text'\] must be \[N, 12\]"),
        ({**good, "text": torch.randn(12)}, r"features\['text'\] must be \[N, 12\]"),
        ({**good, "text": torch.randn(4, 12)}, "same number of new items"),
        (bad_nan, r"features\['image'\] holds NaN or Inf"),
        ({k: v[:0] for k, v in good.items()}, "no new items"),
    ]
    for feats, match in cases:
        with pytest.raises(ValueError, match=match):
            m.with_new_items(feats)


def test_code_churn_counts_items_whose_tokens_changed(ds):
    """on_epoch_start reports churn_<modality>: the share of items whose token tuple changed since the previous
    refresh (none on the first one); the tokenizer's count is exact on codes we change by hand."""
    m = make_model(ds, "motorec", tokenizer_sample=8)
    m.train()
    m.on_epoch_start(0)
    assert set(m.epoch_log()) == {"seconds_catalog", "seconds_knn"}  # the pass's timings, no churn yet
    m.on_epoch_start(1)  # same weights: nothing changed
    stats = {k: v for k, v in m.epoch_log().items() if not k.startswith("seconds_")}
    assert set(stats) == {f"churn_{mod}{lv}" for mod in m.tokenizer.modalities for lv in ("", "_level0")}
    assert all(v == 0.0 for v in stats.values())
    tok = m.tokenizer
    codes = {mod: c.clone() for mod, c in tok._last_codes.items()}
    first = tok.modalities[0]
    codes[first][:3, 0] = (codes[first][:3, 0] + 1) % m.config.codebook_size
    codes[first][5, 2] = (codes[first][5, 2] + 1) % m.config.codebook_size  # a last-level change only
    churn = tok.code_churn(codes)
    assert churn[first] == pytest.approx(4 / ds.num_items)
    assert churn[first + "_level0"] == pytest.approx(3 / ds.num_items)
    assert all(churn[mod] == 0.0 for mod in tok.modalities[1:])


def test_model_stats_report_codebook_usage_per_modality_and_level(ds, monkeypatch):
    """Perplexity is exp(entropy) of each level's code distribution over the catalog, and the unused fraction
    counts the codes no item has; a wrapper reports its model's; a continuous model has no codes."""
    m = make_model(ds, "motorec")  # codebook_size 16
    n = m.num_items
    codes = torch.stack([torch.zeros(n, dtype=torch.long), torch.arange(n) % 4], dim=1)
    monkeypatch.setattr(type(m), "tokenize", lambda self: {"image": codes})
    stats = m.model_stats()
    assert stats["perplexity_image_level0"] == pytest.approx(1.0)
    assert stats["unused_codes_image_level0"] == pytest.approx(15 / 16)
    expect = torch.bincount(codes[:, 1], minlength=4).double() / n  # near-uniform over 4 codes
    assert stats["perplexity_image_level1"] == pytest.approx(float(torch.exp(-(expect * expect.log()).sum())))
    assert stats["unused_codes_image_level1"] == pytest.approx(12 / 16)
    assert wrap(m, WrapperConfig(ensemble=2, decoupled=True)).model_stats() == stats
    assert make_model(ds, "motorec", continuous=True).model_stats() == {}
    monkeypatch.undo()
    real = make_model(ds, "motorec").model_stats()
    assert real and all(1.0 <= v <= 16.0 for k, v in real.items() if k.startswith("perplexity_"))


def test_scoring_embeddings_skip_the_decoder_with_the_same_values(ds):
    """In eval mode without gradients, the catalog's tokens come from encode_catalog (no decoder, no tokenizer
    losses): the same embeddings as the full tokenizer forward."""
    m = make_model(ds, "motorec")
    m.eval()
    with torch.enable_grad():
        users, items = m.embeddings()
    calls = []
    real = m.tokenizer.catalog_tokens
    m.tokenizer.catalog_tokens = lambda: calls.append(1) or real()
    with torch.no_grad():
        u2, i2 = m.embeddings()
    assert not calls
    torch.testing.assert_close(u2, users.detach())
    torch.testing.assert_close(i2, items.detach())


@pytest.mark.parametrize("continuous", [False, True])
def test_encode_catalog_is_reused_until_the_weights_move(ds, continuous):
    """encode_catalog returns its last result again while the tokenizer's parameters, buffers and that result are
    unchanged (validation, the ensemble's snapshot and the catalog pass ask at the same weights), and encodes
    afresh after an optimizer step, an in-place edit of the result, a training forward (EMA codebooks move
    through .data), a state_dict load, or another chunk."""
    m = make_model(ds, "motorec", continuous=continuous)
    tok = m.tokenizer
    encoded = []
    real = tok._encode_modality
    tok._encode_modality = lambda *a: encoded.append(a[0]) or real(*a)

    def fresh():  # the reference: a new tokenizer state compared by value
        n = len(encoded)
        lat, codes = tok.encode_catalog()
        return len(encoded) > n, lat, codes

    did, lat, codes = fresh()
    assert did and len(encoded) == len(tok.modalities)
    did, lat2, codes2 = fresh()
    assert not did and all(lat2[k] is lat[k] for k in lat)  # the same tensors, nothing encoded
    lat2.pop(tok.modalities[0])  # the returned dicts are the caller's own
    assert tok.encode_catalog()[0].keys() == lat.keys()
    # an optimizer step moves the weights
    opt = torch.optim.SGD(tok.parameters(), lr=0.5)
    m.train()
    loss, _ = m.loss(make_batch(ds))
    opt.zero_grad()
    loss.backward()
    opt.step()
    m.eval()
    did, lat3, _ = fresh()
    assert did and not torch.equal(lat3[tok.modalities[0]], lat[tok.modalities[0]])
    # a caller's in-place edit of the result is seen
    with torch.no_grad():
        lat3[tok.modalities[0]].add_(1.0)
    assert fresh()[0]
    # a training forward may move the codebooks through .data
    assert not fresh()[0]
    m.train()
    with torch.no_grad():
        tok(torch.arange(4))
    m.eval()
    assert fresh()[0]
    # a state_dict load, and another chunk
    tok.load_state_dict(tok.state_dict())
    assert fresh()[0] and not fresh()[0]
    n = len(encoded)
    lat4, codes4 = tok.encode_catalog(chunk=7)
    assert len(encoded) > n
    for k in lat4:  # chunked alike, by value
        torch.testing.assert_close(lat4[k], tok.encode_catalog(chunk=7)[0][k])
    # under torch.inference_mode (a serving loop) the result tracks no version: it is computed, never kept
    with torch.inference_mode():
        a = tok.encode_catalog()[0]
        b = tok.encode_catalog()[0]
    assert all(a[k] is not b[k] and torch.equal(a[k], b[k]) for k in a)
    assert fresh()[0] and not fresh()[0]
