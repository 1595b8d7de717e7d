"""Model-layer tests: loss formulas against hand computations, rarity weights, cold-item handling, token export,
ablation switches, and the common interface of MoToRec and the baselines."""
from __future__ import annotations

import copy
import dataclasses
import math
import warnings

import pytest
import torch

from motorec.config import Config, ConfigError, ModelConfig
from motorec.data import synthetic
from motorec.models import MODELS, MoToRec, bpr_loss, build_model, info_nce, item_degrees, rarity_weights
from motorec.models.aldi import aldi_distill_losses
from motorec.train import BPRSampler

# tokenizer_sample 0: the whole (90-item) catalog every step, as these tests compare against full-catalog forwards
SMALL = dict(codebook_size=16, latent_dim=16, hidden_dims=[32], dim=16, knn_k=5, content_hidden=32, tokenizer_sample=0)


@pytest.fixture(scope="module")
def ds():
    return synthetic(120, 90, num_topics=6, modalities={"image": 24, "text": 12}, seed=3)


def _model(ds, name="motorec", **over):
    torch.manual_seed(0)
    if name == "motorec":
        over.setdefault("cold_calibration", 0.0)  # plain inner-product scores; calibration has its own test
        over.setdefault("cold_score_shift", 0.0)
    return build_model(ds, ModelConfig(name=name, **{**SMALL, **over}))


def _batch(ds, seed=0, size=64):
    g = torch.Generator().manual_seed(seed)
    return next(BPRSampler(ds.train, ds.num_items, batch_size=size).epoch(g))


def test_item_degrees_counts_distinct_pairs():
    train = torch.tensor([[0, 1], [0, 1], [1, 1], [2, 3], [1, 0]])
    assert item_degrees(train, 5).tolist() == [1.0, 2.0, 0.0, 1.0, 0.0]


def test_bpr_loss_matches_formula():
    g = torch.Generator().manual_seed(1)
    p, n, w = torch.randn(37, generator=g), torch.randn(37, generator=g), torch.rand(37, generator=g) + 0.5
    expect = -(w * torch.log(torch.sigmoid(p.double() - n.double()))).mean()
    assert torch.allclose(bpr_loss(p, n, w).double(), expect, atol=1e-6)
    assert torch.allclose(bpr_loss(p, n).double(), -torch.log(torch.sigmoid(p.double() - n.double())).mean(), atol=1e-6)
    assert bpr_loss(torch.zeros(0), torch.zeros(0)).item() == 0.0


def test_info_nce_matches_formula():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(11, 7, generator=g).double(), torch.randn(11, 7, generator=g).double()
    tau = 0.2
    an, bn = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    sim = an @ bn.t() / tau
    l1 = -(sim.diag() - torch.logsumexp(sim, dim=1))
    l2 = -(sim.diag() - torch.logsumexp(sim, dim=0))
    assert torch.allclose(info_nce(a, b, tau), (0.5 * (l1 + l2)).mean(), atol=1e-10)
    # aligned views give a lower loss than shuffled ones
    assert info_nce(a, a, tau) < info_nce(a, b, tau)


def test_rarity_weights_formula_normalization_clip_and_ramp():
    deg = torch.tensor([0.0, 1.0, 3.0, 50.0, 400.0, 7.0])
    pos = torch.tensor([1, 2, 3, 4, 5, 1, 4])
    s = math.log1p(400.0) / torch.log(2.0 + deg[pos].double())
    s = s / s.mean()
    full = rarity_weights(deg, pos, ramp=1.0, clip=(0.5, 5.0)).double()
    assert torch.allclose(full, s.clamp(0.5, 5.0), atol=1e-6)
    assert full[0] > full[2] > full[3]  # rarer positives weigh more
    assert torch.equal(rarity_weights(deg, pos, ramp=0.0, clip=(0.5, 5.0)), torch.ones(7))
    half = rarity_weights(deg, pos, ramp=0.5, clip=(0.5, 5.0))
    assert torch.allclose(half.double(), 1 + 0.5 * (full - 1), atol=1e-6)
    tight = rarity_weights(deg, pos, ramp=1.0, clip=(0.9, 1.1))
    assert float(tight.min()) >= 0.9 - 1e-6 and float(tight.max()) <= 1.1 + 1e-6
    assert rarity_weights(deg, pos[:0], ramp=1.0, clip=(0.5, 5.0)).numel() == 0


@pytest.mark.parametrize("name", sorted(MODELS))
def test_interface_loss_backward_score(ds, name):
    m = _model(ds, name)
    m.train()
    m.on_epoch_start(0)
    total, parts = m.loss(_batch(ds))
    assert torch.isfinite(total) and "bpr" in parts and all(math.isfinite(v) for v in parts.values())
    total.backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    m.eval()
    users = torch.tensor([0, 5, 7])
    s = m.score(users)
    assert s.shape == (3, ds.num_items) and torch.isfinite(s).all()
    u, i = m.user_embeddings(), m.item_embeddings()
    width = 32 if name == "motorec" else 16  # MoToRec's default ID branch (warm_scorer "id"): [joint | branch]
    assert u.shape == (ds.num_users, width) and i.shape == (ds.num_items, width)
    assert torch.allclose(s, u[users] @ i.t())
    s[:] = 0  # evaluate writes into the scores: they must not alias the cache
    assert torch.allclose(m.score(users), u[users] @ i.t())


@pytest.mark.parametrize("scorer", ["id", "joint"])
@pytest.mark.parametrize("item_item_ids", [False, True], ids=["content-only", "neighbour-ids"])
def test_motorec_cold_items_ignore_id_embedding(ds, item_item_ids, scorer):
    m = _model(ds, "motorec", item_item_ids=item_item_ids, warm_scorer=scorer)
    m.on_epoch_start(0)
    m.eval()
    before = m.item_embeddings().clone()
    cold = ds.cold_items()
    assert cold.any() and (~cold).any()
    table = m.lightgcn.item_embedding.weight  # the joint model's ID columns and (with "id") the branch's
    with torch.no_grad():
        table[cold] += torch.randn(int(cold.sum()), table.shape[1]) * 10
    m.train()
    m.eval()
    after = m.item_embeddings()
    assert torch.allclose(after[cold], before[cold], atol=1e-6)  # features alone
    assert torch.allclose(after[~cold], before[~cold], atol=1e-6)  # cold ID never propagates either
    with torch.no_grad():
        table[~cold] += 1.0
    m.train()
    m.eval()
    assert not torch.allclose(m.item_embeddings()[~cold], before[~cold])


def test_lightgcn_content_cold_items_from_features(ds):
    m = _model(ds, "lightgcn_content")
    m.eval()
    before = m.item_embeddings().clone()
    cold = ds.cold_items()
    with torch.no_grad():
        m.item_emb[cold] = torch.randn(int(cold.sum()), m.item_emb.shape[1])
    m.train()
    m.eval()
    assert torch.allclose(m.item_embeddings()[cold], before[cold], atol=1e-6)


def test_tokenize_shapes_and_range(ds):
    m = _model(ds, "motorec", num_levels=2)
    m.train()
    m.pretrain_loss(torch.arange(ds.num_items))  # k-means init of the codebooks on the catalog
    tok = m.tokenize()
    assert set(tok) == set(ds.features)
    for codes in tok.values():
        assert codes.shape == (ds.num_items, 2) and codes.dtype == torch.int64
        assert int(codes.min()) >= 0 and int(codes.max()) < 16
        assert torch.unique(codes[:, 0]).numel() > 1
    assert m.training  # tokenize restores the mode


@pytest.mark.parametrize("switch", [
    {"sparse_weight": 0.0}, {"rarity": False}, {"item_item": False}, {"continuous": True},
    {"rarity_gate": True, "rarity_contrastive": True, "id_dropout": 0.3}, {"token_embeddings": False},
    {"item_item_ids": True, "cold_dropout": 0.0}, {"rarity": True, "rarity_warmup_epochs": 0},
], ids=["no-sparsity", "no-rarity", "no-item-item", "continuous", "gate+cl-weights+id-dropout", "no-token-emb",
        "neighbour-ids", "rarity"])
def test_ablation_switches(ds, switch):
    m = _model(ds, "motorec", **switch)
    m.train()
    m.on_epoch_start(3)
    total, parts = m.loss(_batch(ds))
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
    m.eval()
    assert torch.isfinite(m.score(torch.arange(4))).all()


def _loss_pair(ds, batch, over0, over1):
    """Two MoToRecs built alike but for ``over0`` / ``over1``, each's ``(model, loss, parts)`` on ``batch`` at
    joint epoch 0 with the same random draws."""
    out = []
    for over in (over0, over1):
        m = _model(ds, "motorec", **over)
        m.train()
        m.on_epoch_start(0)
        torch.manual_seed(1)
        out.append((m, *m.loss(batch)))
    return out


def test_lambda_cold_adds_content_only_bpr_term(ds):
    """lambda_cold adds `lambda_cold * BPR(u . cold(p), u . cold(n))` and trains the content path through it."""
    b = _batch(ds)
    kw = dict(lambda_cl=0.0, cold_dropout=0.0)
    (m0, t0, p0), (m1, t1, p1) = _loss_pair(ds, b, dict(lambda_cold=0.0, **kw), dict(lambda_cold=0.7, **kw))
    assert "bpr_cold" not in p0 and p1["bpr_cold"] > 0
    users, _, content, _ = m1._forward()
    cold = m1.cold_embedding(content)
    ue = users[b["users"]]
    w = rarity_weights(m1.item_degree, b["pos"], ramp=m1.rarity_ramp(), clip=(0.5, 5.0))
    expected = bpr_loss((ue * cold[b["pos"]]).sum(1), (ue * cold[b["neg"]]).sum(1), w)
    assert math.isclose(p1["bpr_cold"], float(expected.detach()), rel_tol=1e-5)
    assert math.isclose(float((t1 - t0).detach()), 0.7 * float(expected.detach()), rel_tol=1e-4, abs_tol=1e-6)


def test_cold_distill_aligns_content_only_scores_to_the_models_own_and_trains_only_the_content_path(ds):
    """cold_distill adds ALDI's alignment terms between the cold embeddings' scores and the final embeddings'
    (the teacher, detached): its gradient reaches the content path, never the ID tables."""
    b = _batch(ds)
    kw = dict(lambda_cold=0.0, lambda_cl=0.0, cold_dropout=0.0, rarity=False)
    (m0, t0, p0), (m1, t1, p1) = _loss_pair(
        ds, b, kw, dict(cold_distill=0.6, aldi_alpha=0.9, aldi_beta=0.05, aldi_gamma=0.1, **kw))
    assert "distill" not in p0 and p1["distill"] > 0
    users, collab, content, _ = m1._forward()
    items, cold = m1._final_items(collab, content), m1.cold_embedding(content)
    d = aldi_distill_losses(users[b["users"]], items[b["pos"]], items[b["neg"]], cold[b["pos"]], cold[b["neg"]])
    expected = float((0.1 * d["rating"] + 0.9 * d["ranking"] + 0.05 * d["identification"]).detach())
    assert math.isclose(p1["distill"], expected, rel_tol=1e-5)
    assert math.isclose(float((t1 - t0).detach()), 0.6 * expected, rel_tol=1e-4, abs_tol=1e-6)
    # the term's gradient reaches the content path and never the ID tables (the teacher is detached)
    t0.backward()
    t1.backward()
    for name in ("lightgcn.user_embedding.weight", "lightgcn.item_embedding.weight"):
        g0, g1 = m0.get_parameter(name).grad, m1.get_parameter(name).grad
        torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-7, msg=name)
    assert any(not torch.allclose(a.grad, b.grad) for a, b in
               zip(m0.token_level.parameters(), m1.token_level.parameters()) if a.grad is not None)


def test_freeze_tokenizer_keeps_tokens_fixed_and_trains_everything_else(ds):
    """freeze_tokenizer: the joint stage reads the tokens from one catalog pass (no tokenizer loss, no gradient
    into the encoder or codebooks), training-mode and eval-mode embeddings see the same tokens, and optimizer
    steps leave the tokenizer's weights and every item's tokens unchanged while the rest trains."""
    b = _batch(ds)
    m = _model(ds, "motorec", freeze_tokenizer=True)
    def tok_tensors():
        return {k: v.detach().clone() for k, v in [*m.tokenizer.named_parameters(), *m.tokenizer.named_buffers()]}

    before_tok = tok_tensors()
    codes0 = m.tokenize()
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    emb0 = m.lightgcn.item_embedding.weight.detach().clone()
    for epoch in range(2):
        m.train()
        m.on_epoch_start(epoch)
        assert m._frozen_tokens is not None
        total, parts = m.loss(b)
        assert "rq" not in parts and "sparse" not in parts
        opt.zero_grad()
        total.backward()
        assert all(p.grad is None for p in m.tokenizer.parameters())
        assert m.token_level.token_proj[m.tokenizer.modalities[0]].weight.grad is not None
        opt.step()
        if epoch == 1:
            assert m.epoch_stats()[f"churn_{m.tokenizer.modalities[0]}"] == 0.0
    after_tok = tok_tensors()
    for k, v in before_tok.items():
        torch.testing.assert_close(after_tok[k], v, rtol=0, atol=0, msg=k)
    for mod, c in m.tokenize().items():
        assert torch.equal(c, codes0[mod])
    assert not torch.equal(m.lightgcn.item_embedding.weight, emb0)
    # training-mode forward (the cached pass) and eval-mode forward (a fresh pass) agree
    m.train()
    m.on_epoch_start(2)
    with torch.no_grad():
        _, _, content_train, _ = m._forward()
        m.eval()
        _, _, content_eval, _ = m._forward()
    torch.testing.assert_close(content_train, content_eval)
    # the cached pass is dropped when weights are loaded or the mode changes
    m.train()
    m.on_epoch_start(3)
    m.load_state_dict(m.state_dict())
    assert m._frozen_tokens is None


def test_cold_distill_must_be_non_negative():
    with pytest.raises(ConfigError, match="cold_distill"):
        ModelConfig(cold_distill=-0.1).validate()


@pytest.mark.parametrize("terms", ["all", "content"])
def test_rarity_terms_choose_which_bpr_terms_are_weighted(ds, terms):
    """rarity_terms="all" weights both BPR terms; "content" leaves the main term unweighted and weights only
    the content-only (lambda_cold) term."""
    b = _batch(ds)
    m = _model(ds, "motorec", lambda_cold=0.5, lambda_cl=0.0, cold_dropout=0.0, rarity=True,
               rarity_warmup_epochs=0, rarity_terms=terms)
    m.train()
    m.on_epoch_start(0)
    torch.manual_seed(1)
    _, parts = m.loss(b)
    users, collab, content, _ = m._forward()
    items = m._final_items(collab, content)
    cold = m.cold_embedding(content)
    ue = users[b["users"]]
    w = rarity_weights(m.item_degree, b["pos"], ramp=1.0, clip=(0.5, 5.0))
    assert not torch.allclose(w, torch.ones_like(w))  # the weights are not trivially 1 on this batch
    main_w = w if terms == "all" else None
    main = bpr_loss((ue * items[b["pos"]]).sum(1), (ue * items[b["neg"]]).sum(1), main_w)
    aux = bpr_loss((ue * cold[b["pos"]]).sum(1), (ue * cold[b["neg"]]).sum(1), w)
    assert math.isclose(float(parts["bpr"]), float(main.detach()), rel_tol=1e-5)
    assert math.isclose(float(parts["bpr_cold"]), float(aux.detach()), rel_tol=1e-5)
    other = bpr_loss((ue * items[b["pos"]]).sum(1), (ue * items[b["neg"]]).sum(1), None if terms == "all" else w)
    assert not math.isclose(float(parts["bpr"]), float(other.detach()), rel_tol=1e-5)


def test_rarity_with_no_term_to_weight_warns(ds):
    with pytest.warns(UserWarning, match="weights no term"):
        _model(ds, "motorec", lambda_cold=0.0, rarity=True, rarity_terms="content")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _model(ds, "motorec", lambda_cold=0.0, rarity=True, rarity_terms="all")
        _model(ds, "motorec", lambda_cold=0.0, rarity=False)
        _model(ds, "motorec", lambda_cold=0.2, rarity=True)


def test_sparse_weight_zero_removes_sparsity_gradient(ds):
    b = _batch(ds)
    for sw, expect_diff in ((0.0, False), (1.0, True)):
        m = _model(ds, "motorec", sparse_weight=sw)
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
    m = _model(ds, "motorec", rarity=True, rarity_warmup_epochs=4)
    ramps = []
    for e in range(6):
        m.on_epoch_start(e)
        ramps.append(m.rarity_ramp())
    assert ramps == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


def test_state_dict_carries_item_graphs_rebuild_schedule(ds, tmp_path):
    """The kNN graphs are module state (ItemItemEncoder.get_extra_state): one state_dict, saved and loaded with
    weights_only, gives a model that embeds exactly like the original; a graph of another catalog is refused."""
    m = _model(ds, "motorec", knn_rebuild_every=2)
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
    m3 = _model(ds, "motorec", knn_rebuild_every=2)
    m3.eval()
    m3.score(torch.arange(3))
    m3.load_state_dict(state)
    assert torch.equal(m3.item_embeddings(), m.item_embeddings())
    small = synthetic(120, 60, num_topics=6, modalities={"image": 24, "text": 12}, seed=3)
    other = build_model(small, m.config)
    with pytest.raises(ValueError, match="item-item graph of modality 'image' has 90 items, this model 60"):
        other.item_item.set_extra_state(state["item_item._extra_state"])


def test_model_rejects_bad_input(ds):
    with pytest.raises(ValueError, match="train"):
        MoToRec(num_users=3, num_items=4, train=torch.zeros(5, dtype=torch.long), features={},
                config=ModelConfig())
    with pytest.raises(ValueError, match="features"):
        MoToRec(num_users=ds.num_users, num_items=ds.num_items, train=ds.train,
                features={"image": torch.randn(ds.num_items + 1, 4)}, config=ModelConfig(**SMALL))
    with pytest.raises(ValueError, match="unknown model"):
        build_model(ds, ModelConfig(name="nope"))


def test_config_validation_and_yaml_roundtrip(tmp_path):
    cfg = Config().replace(model={"name": "content", "hidden_dims": [8, 4], "lambda_cl": 0.5}, train={"epochs": 3})
    p = tmp_path / "c.yaml"
    cfg.save(p)
    back = Config.load(p)
    assert back == cfg and back.model.hidden_dims == (8, 4)
    assert back.fingerprint() == cfg.fingerprint()
    assert cfg.replace(train={"epochs": 9}).fingerprint() == cfg.fingerprint()  # epoch budget not part of it
    assert cfg.replace(model={"lambda_cl": 0.2}).fingerprint() != cfg.fingerprint()
    p.write_text("model: {lambda_cl: 1e-3}\n")  # YAML 1.1 reads 1e-3 as a string
    assert Config.load(p).model.lambda_cl == 1e-3
    for bad, match in (({"model": {"nope": 1}}, "unknown key"), ({"model": {"tau": 0}}, "tau"),
                       ({"train": {"epochs": -1}}, "epochs"), ({"train": {"lr": "x"}}, "lr"),
                       ({"extra": {}}, "section"), ({"data": {"split": "hot"}}, "split"),
                       ({"model": {"name": "x"}}, "model.name"), ({"model": {"rarity": "yes"}}, "rarity")):
        with pytest.raises(ConfigError, match=match):
            Config.from_dict(bad)
    p.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="YAML"):
        Config.load(p)
    with pytest.raises(ConfigError, match="does not exist"):
        Config.load(tmp_path / "missing.yaml")


@pytest.mark.parametrize("a", [1.0, 0.4])
def test_cold_calibration_matches_warm_score_distribution(ds, a):
    m = _model(ds, "motorec", cold_calibration=a, cold_calibration_scope="user")
    m.on_epoch_start(0)
    m.eval()
    users = torch.arange(0, ds.num_users, 7)
    raw = m.user_embeddings()[users] @ m.item_embeddings().t()
    s = m.score(users)
    cold = ds.cold_items()
    assert torch.equal(s[:, ~cold], raw[:, ~cold])  # warm items untouched
    c, w = raw[:, cold].double(), raw[:, ~cold].double()
    target = (c - c.mean(1, keepdim=True)) / c.std(1, keepdim=True) * w.std(1, keepdim=True) + w.mean(1, keepdim=True)
    assert torch.allclose(s[:, cold].double(), (1 - a) * c + a * target, atol=1e-5)
    if a == 1.0:
        assert torch.allclose(s[:, cold].mean(1).double(), w.mean(1), atol=1e-5)
    # a positive affine map per user: the order among cold items is unchanged
    assert torch.equal(torch.argsort(s[:, cold], dim=1), torch.argsort(raw[:, cold], dim=1))


@pytest.mark.parametrize("a", [1.0, 0.3])
def test_global_cold_calibration_is_one_affine_map(ds, a):
    """scope "global": moments over all users x warm items and all users x cold items (computed from Gram
    matrices), one affine map for every cold score; warm scores untouched."""
    m = _model(ds, "motorec", cold_calibration=a, cold_calibration_scope="global", cold_score_shift=0.25)
    m.on_epoch_start(0)
    m.eval()
    all_users = torch.arange(ds.num_users)
    raw = (m.user_embeddings() @ m.item_embeddings().t()).double()
    cold = ds.cold_items()
    w, c = raw[:, ~cold], raw[:, cold]
    mw, sw, mc, sc = w.mean(), w.std(unbiased=False), c.mean(), c.std(unbiased=False)
    expected = (1 - a) * c + a * ((c - mc) / sc * sw + mw) - 0.25 * sw
    s = m.score(all_users)
    assert torch.equal(s[:, ~cold], raw[:, ~cold].float())
    assert torch.allclose(s[:, cold].double(), expected, atol=1e-4)
    # the same map whatever users are asked for (no dependence on the batch)
    some = torch.tensor([3, 0, 17])
    assert torch.allclose(m.score(some), s[some], atol=1e-6)
    if a == 1.0:  # cold scores now have the warm scores' global mean (minus the shift)
        assert math.isclose(float(s[:, cold].double().mean()), float(mw - 0.25 * sw), abs_tol=1e-4)


@pytest.mark.parametrize("a,shift", [(0.0, 1.5), (0.5, 0.75)])
def test_cold_score_shift_lowers_cold_scores_by_warm_spread(ds, a, shift):
    m = _model(ds, "motorec", cold_calibration=a, cold_calibration_scope="user")
    m.on_epoch_start(0)
    m.eval()
    users = torch.arange(0, ds.num_users, 5)
    base = m.score(users)  # calibrated, no shift
    m.config.cold_score_shift = shift
    m._cache = None
    s = m.score(users)
    cold = ds.cold_items()
    raw = m.user_embeddings()[users] @ m.item_embeddings().t()
    assert torch.equal(s[:, ~cold], raw[:, ~cold])  # warm items untouched
    sw = raw[:, ~cold].double().std(1, keepdim=True)
    assert torch.allclose(s[:, cold].double(), base[:, cold].double() - shift * sw, atol=1e-5)
    assert torch.equal(torch.argsort(s[:, cold], dim=1), torch.argsort(raw[:, cold], dim=1))


def test_cold_scoring_options_are_validated():
    for bad in (-0.5, float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="cold_score_shift"):
            Config.from_dict({"model": {"cold_score_shift": bad}})
        with pytest.raises(ConfigError, match="lambda_cold"):
            Config.from_dict({"model": {"lambda_cold": bad}})
    with pytest.raises(ConfigError, match="cold_calibration_scope"):
        Config.from_dict({"model": {"cold_calibration_scope": "item"}})
    with pytest.raises(ConfigError, match="rarity_terms"):
        Config.from_dict({"model": {"rarity_terms": "warm"}})


@pytest.mark.parametrize("skip", [True, False])
def test_warm_content_skip_final_item_embeddings(ds, skip):
    m = _model(ds, "motorec", warm_content_skip=skip, warm_scorer="joint")  # the joint model's own final items
    m.on_epoch_start(0)
    m.eval()
    with torch.no_grad():
        users, collab, content, _ = m._forward()
        _, items = m.embeddings()
    warm = ds.warm_items()
    assert torch.allclose(items[~warm], collab[~warm] + content[~warm], atol=1e-6)  # cold items keep h~
    assert torch.allclose(items[~warm], m.cold_embedding(content[~warm]), atol=1e-5)  # no edges: readout h~/(L+1)
    expect = collab[warm] + content[warm] if skip else collab[warm]
    assert torch.allclose(items[warm], expect, atol=1e-6)
    assert content[warm].abs().sum() > 0  # so the two cases differ
    m.train()
    total, _ = m.loss(_batch(ds))
    total.backward()
    assert torch.isfinite(total)


@pytest.mark.parametrize("layer0", [True, False])
def test_warm_content_layer0_sets_what_warm_items_start_from(ds, layer0):
    """warm_content_layer0 (default true): a warm item's layer 0 is its ID embedding plus h~; false: its ID
    embedding alone, so its readout is plain LightGCN's and h~ gets no gradient through the main BPR term.
    Cold items start from h~ either way."""
    m = _model(ds, "motorec", warm_content_layer0=layer0, lambda_cold=0.0, lambda_cl=0.0, lambda_rq=0.0,
               sparse_weight=0.0, warm_scorer="joint")  # (the ID branch would widen layer 0)
    m.on_epoch_start(0)
    seen = {}
    real = m.lightgcn.forward

    def spy(graph, ego):
        seen["layer0"] = ego
        return real(graph, ego)

    m.lightgcn.forward = spy
    m.eval()
    with torch.no_grad():
        _, _, content, _ = m._forward()
    warm = ds.warm_items()
    ids = m.item_emb.detach()
    expect_warm = ids[warm] + content[warm] if layer0 else ids[warm]
    torch.testing.assert_close(seen["layer0"][warm], expect_warm)
    torch.testing.assert_close(seen["layer0"][~warm], content[~warm])
    m.train()
    total, _ = m.loss(_batch(ds))
    total.backward()
    token_grad = sum(float(p.grad.abs().sum()) for p in m.token_level.parameters() if p.grad is not None)
    # with only the main BPR term (and the ID regularizer), the content path learns through warm items' layer 0
    assert (token_grad > 0) == layer0


@pytest.mark.parametrize("scorer", ["id", "sum"])
def test_warm_scorer_id_branch_is_plain_lightgcn_beside_the_joint_model(ds, scorer):
    """warm_scorer "id"/"sum": columns [dim:] of the ID tables are a pure-ID LightGCN trained by its own BPR term
    in the same step. Its embeddings and loss equal a standalone LightGCNRec holding those columns; no other term
    reaches them; the joint model's half is the joint model's; warm items score by the branch ("id") or by
    both ("sum"), cold items by the content path alone."""
    d = SMALL["dim"]
    m = _model(ds, "motorec", warm_scorer=scorer)
    assert m.lightgcn.item_embedding.weight.shape == (ds.num_items, 2 * d) and m.item_emb.shape == (ds.num_items, d)
    with torch.no_grad():  # a warm-masked copy: a cold item's branch row is never read
        m.lightgcn.item_embedding.weight[~ds.warm_items(), d:] = 5.0
    ref = build_model(ds, ModelConfig(name="lightgcn", **SMALL))
    with torch.no_grad():
        ref.lightgcn.user_embedding.weight.copy_(m.lightgcn.user_embedding.weight[:, d:])
        ref.lightgcn.item_embedding.weight.copy_(m.lightgcn.item_embedding.weight[:, d:])
    m.on_epoch_start(0)
    m.eval()
    warm = ds.warm_items()
    with torch.no_grad():
        users, collab, content, _, branch = m._forward_all()
        ru, ri = ref.embeddings()
        torch.testing.assert_close(branch[0], ru)
        torch.testing.assert_close(branch[1][warm], ri[warm])
        assert torch.equal(branch[1][~warm], torch.zeros_like(branch[1][~warm]))
        fu, fi = m.embeddings()
        scores = fu @ fi.t()
        joint = users @ m._final_items(collab, content).t()
        own = ru @ ri.t()
        expect_warm = own[:, warm] + (joint[:, warm] if scorer == "sum" else 0.0)
        torch.testing.assert_close(scores[:, warm], expect_warm)
        torch.testing.assert_close(scores[:, ~warm], joint[:, ~warm])
    # the branch's BPR term is LightGCN's loss on the same batch, and the gradient the whole loss sends into the
    # branch's columns is LightGCN's (its L2 included; a cold item's row, which LightGCN's L2 would also shrink
    # when it is drawn as a negative, gets none), while the joint half gets the other terms'
    m.train()
    batch = _batch(ds)
    total, parts = m.loss(batch)
    ref_total, ref_parts = ref.loss(batch)
    torch.testing.assert_close(parts["bpr_id"], ref_parts["bpr"])
    total.backward()
    ref_total.backward()
    mu, mi = m.lightgcn.user_embedding.weight.grad, m.lightgcn.item_embedding.weight.grad
    torch.testing.assert_close(mu[:, d:], ref.lightgcn.user_embedding.weight.grad)
    torch.testing.assert_close(mi[warm, d:], ref.lightgcn.item_embedding.weight.grad[warm])
    assert torch.equal(mi[~warm, d:], torch.zeros_like(mi[~warm, d:]))
    assert mu[:, :d].abs().sum() > 0 and mi[warm, :d].abs().sum() > 0
    grown = m.with_new_items({k: v[:3] for k, v in ds.features.items()})
    with torch.no_grad():
        gu, gi = grown.embeddings()
    assert gi.shape == (ds.num_items + 3, 2 * d) and torch.isfinite(gu @ gi.t()).all()


def test_id_branch_model_starts_as_the_joint_model_under_the_same_seed(ds):
    """With the ID branch the joint half of the ID tables is drawn as a warm_scorer "joint" model draws its
    tables, and the branch's columns from a generator of their own: every other weight, and the global random
    stream after construction, are the joint model's (so the joint half trains as that model does; the trainer's
    test checks the validation curves). Another seed gives other branch columns."""
    d = SMALL["dim"]
    models, states = {}, {}
    for scorer in ("joint", "id"):
        models[scorer] = _model(ds, "motorec", warm_scorer=scorer)
        states[scorer] = torch.get_rng_state()
    assert torch.equal(states["joint"], states["id"])
    j, i = models["joint"].state_dict(), models["id"].state_dict()
    assert j.keys() == i.keys()
    for k in j:
        if torch.is_tensor(j[k]) and k.startswith("lightgcn."):
            assert torch.equal(i[k][:, :d], j[k]) and not torch.equal(i[k][:, d:], j[k]), k
        elif torch.is_tensor(j[k]):
            assert torch.equal(i[k], j[k]), k
    branch = i["lightgcn.item_embedding.weight"][:, d:]
    assert 0.08 < float(branch.std()) < 0.12  # init_std 0.1
    torch.manual_seed(1)
    other = build_model(ds, ModelConfig(name="motorec", warm_scorer="id", **SMALL))
    assert not torch.equal(other.lightgcn.item_embedding.weight[:, d:], branch)


def test_cold_part_scorer_is_the_joint_models_scores_and_reuses_the_eval_pass(ds, monkeypatch):
    """cold_part_scorer: the joint model's own scores of every item (warm rows not masked); in eval mode read
    from the pass that filled the eval cache (no second forward), computed when no cache is there, and fresh
    again once the caches are dropped; in training mode from a fresh (training-mode) pass."""
    d = SMALL["dim"]
    m = _model(ds, "motorec", warm_scorer="id")
    m.on_epoch_start(0)
    m.eval()
    with torch.no_grad():
        users, collab, content, _, _ = m._forward_all()
        expect = users @ m._final_items(collab, content).t()
    torch.testing.assert_close(m.cold_part_scorer().score(torch.arange(ds.num_users)), expect)  # no cache yet
    m.drop_caches()
    m.score(torch.arange(3))  # an evaluation fills the eval cache
    calls = []
    forward = m._forward_all
    monkeypatch.setattr(m, "_forward_all", lambda: calls.append(1) or forward())
    scorer = m.cold_part_scorer()
    assert not calls
    torch.testing.assert_close(scorer.score(torch.arange(ds.num_users)), expect)
    assert scorer.users.shape == (ds.num_users, d)
    with torch.no_grad():
        m.lightgcn.user_embedding.weight[:, :d] += 1.0
    m.drop_caches()
    moved = m.cold_part_scorer().score(torch.arange(ds.num_users))
    assert len(calls) == 1 and not torch.allclose(moved, expect)
    m.train()
    assert m.cold_part_scorer().score(torch.arange(2)).shape == (2, ds.num_items) and len(calls) == 2
    with pytest.raises(NotImplementedError, match="no separable warm and cold parts"):
        _model(ds, "motorec", warm_scorer="joint").cold_part_scorer()


def test_warm_scorer_rejects_unknown_value():
    with pytest.raises(ConfigError, match="warm_scorer"):
        Config.from_dict({"model": {"warm_scorer": "both"}})


def test_gram_and_mean_chunked_matches_direct():
    from motorec.models.cold import gram_and_mean

    x = torch.randn(10, 4)
    g, m = gram_and_mean(x, chunk=3)
    x64 = x.double()
    assert torch.allclose(g, x64.t() @ x64 / 10) and torch.allclose(m, x64.mean(0))
    rows = torch.tensor([True, False, True, True, False, False, True, True, False, True])
    gr, mr = gram_and_mean(x, rows, chunk=3)
    sel = x64[rows]
    assert torch.allclose(gr, sel.t() @ sel / 6) and torch.allclose(mr, sel.mean(0))
    g0, m0 = gram_and_mean(torch.zeros(0, 4))
    assert g0.shape == (4, 4) and torch.equal(m0, torch.zeros(4, dtype=torch.float64))


@pytest.mark.parametrize("residual", [False, True], ids=["tokens-only", "feature-residual"])
def test_feature_residual_adds_feature_mlp_to_token_level(ds, residual):
    """``feature_residual`` adds ``MLP_m(normalize(f_m))`` to each modality's token-level embedding; without it
    the token level is a function of the codes alone, so features that quantize alike embed alike."""
    m = _model(ds, "motorec", feature_residual=residual, fusion="attention")
    m.train()
    m.on_epoch_start(0)
    outs = m.tokenizer()
    m.config.item_item = False  # the fused view then sees the token level directly
    tl = m.token_level
    assert (m.feature_residual is not None) == residual
    hs = []
    for k in sorted(ds.features):
        z = outs[k].z_q
        offset = torch.arange(m.config.num_levels) * m.config.codebook_size
        expected = tl.token_proj[k](z) + tl.token_emb[k](outs[k].codes.long() + offset).sum(1)
        if residual:
            f = torch.nn.functional.normalize(ds.features[k], dim=1)
            expected = expected + m.feature_residual.mlps[k](f)
        hs.append(expected)
    fused, _ = m.fusion(torch.stack(hs))
    assert torch.allclose(m.content_view(m.tokenizer.latents(outs), {k: o.codes for k, o in outs.items()}), fused,
                          atol=1e-6)
    m.config.item_item = True
    total, _ = m.loss(_batch(ds))
    total.backward()
    if residual:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.feature_residual.parameters())
    m.eval()
    assert torch.isfinite(m.score(torch.arange(4))).all()


def test_fusion_mean_is_the_plain_mean_of_the_modality_views(ds):
    """``fusion: mean``: the content view is the mean of the modality views (after the item-item level), with no
    fusion parameters; training and scoring work as with attention; a bad value is refused."""
    m = _model(ds, "motorec", fusion="mean")
    assert m.fusion is None and not any(k.startswith("fusion.") for k in m.state_dict())
    m.train()
    m.on_epoch_start(0)
    outs = m.tokenizer()
    lat, codes = m.tokenizer.latents(outs), {k: o.codes for k, o in outs.items()}
    views = m.item_item(m.token_level(lat, codes), None)
    assert len(views) == len(ds.features) == 2
    torch.testing.assert_close(m.content_view(lat, codes), (views[0] + views[1]) / 2)
    total, _ = m.loss(_batch(ds))
    total.backward()
    assert all(p.grad is not None for p in m.token_level.parameters())
    m.eval()
    assert torch.isfinite(m.score(torch.arange(4))).all()
    with pytest.raises(ConfigError, match="model.fusion"):
        ModelConfig(fusion="max").validate()


# ---------------------------------------------------------------------------------------------- brand-new items
def _cold_last(ds):
    """``ds`` with item ids permuted so that every item without a training interaction comes last, and the same
    dataset truncated to its warm items (as if the cold ones had never been in the catalog)."""
    from motorec.data import Dataset

    warm = ds.warm_items()
    order = torch.cat([torch.nonzero(warm).flatten(), torch.nonzero(~warm).flatten()])
    new_id = torch.empty_like(order)
    new_id[order] = torch.arange(order.numel())
    remap = lambda pairs: torch.stack([pairs[:, 0], new_id[pairs[:, 1]]], 1)  # noqa: E731
    full = Dataset(num_users=ds.num_users, num_items=ds.num_items, train=remap(ds.train), valid=remap(ds.valid),
                   test=remap(ds.test), features={m: f[order] for m, f in ds.features.items()}, name="cold-last")
    n_warm = int(warm.sum())
    keep = lambda pairs: pairs[pairs[:, 1] < n_warm]  # noqa: E731
    trunc = Dataset(num_users=ds.num_users, num_items=n_warm, train=full.train, valid=keep(full.valid),
                    test=keep(full.test), features={m: f[:n_warm] for m, f in full.features.items()}, name="warm")
    return full, trunc, n_warm


@pytest.mark.parametrize("over", [{}, {"cold_calibration": 1.0}, {"feature_residual": True, "cold_score_shift": 0.3},
                                  {"fusion": "attention"}])
def test_with_new_items_equals_having_them_in_the_catalog(ds, over):
    full, trunc, n_warm = _cold_last(ds)
    assert full.num_items - n_warm >= 5
    m_full = _model(full, **over)
    m_full.train()
    m_full.on_epoch_start(0)
    m_full.loss(_batch(full))  # k-means codebook init on a training batch, as training starts
    m_full.eval()
    m_full.rebuild_item_graphs()
    # the same trained weights, on a catalog that never had the cold items
    m_warm = _model(trunc, **over)
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


def test_with_new_items_rejects_bad_features(ds):
    m = _model(ds)
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
    m = _model(ds, tokenizer_sample=8)
    m.train()
    m.on_epoch_start(0)
    assert m.epoch_stats() == {}
    m.on_epoch_start(1)  # same weights: nothing changed
    stats = m.epoch_stats()
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


def test_trainer_logs_code_churn_per_joint_epoch():
    """The trainer puts MoToRec's epoch_stats (code churn) into the history rows after the first joint epoch."""
    from motorec.train import Trainer

    small = synthetic(60, 40, num_topics=4, modalities={"image": 8, "text": 6}, seed=1)
    cfg = Config()
    cfg.model = ModelConfig(**{**SMALL, "tokenizer_sample": 8})
    cfg.train.epochs, cfg.train.pretrain_epochs, cfg.train.batch_size = 3, 1, 64
    out = Trainer(cfg, small, quiet=True).fit()
    joint = [r for r in out["history"] if r["stage"] == "joint"]
    assert "churn_image" not in joint[0]
    for r in joint[1:]:
        assert 0.0 <= r["churn_image"] <= 1.0 and 0.0 <= r["churn_text"] <= 1.0


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


@pytest.mark.parametrize("name", ["motorec", "lightgcn", "content", "lightgcn_content", "aldi"])
def test_loss_backward_sums_repeated_rows_without_atomics(ds, name):
    """A training step's gathers are index_select, whose backward (index_add_) sums repeated rows in a fixed
    order: no index_put_ with accumulate, which ATen runs with float atomics on several CPU threads once a
    batch has 32k entries (a 2048-pair batch at dim 16), so that two runs of the same seed would differ."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.bad = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name_ = func.overloadpacket.__name__
            if name_ in ("index_put", "index_put_", "_index_put_impl_"):
                acc = kwargs.get("accumulate", args[3] if len(args) > 3 else False)
                if acc:
                    self.bad.append(name_)
            return func(*args, **kwargs)

    model = _model(ds, name)
    model.train()
    model.on_epoch_start(1)
    batch = _batch(ds, size=64)
    with Record() as rec:
        loss, _ = model.loss(batch)
        loss.backward()
    assert rec.bad == [], f"{name}: {rec.bad}"


@pytest.mark.parametrize("token_embeddings", [True, False])
def test_sampled_token_level_matches_the_direct_form(ds, token_embeddings):
    """TokenEncoder.forward_sampled (one lookup per item into C W^T + E, the sample's rows from their fresh
    latents) computes the direct token level on the materialized latents: same values, same gradients of the
    projection, the token embeddings and (through the fresh rows) the tokenizer; float64 to compare tightly."""
    m = _model(ds, tokenizer_sample=16, token_embeddings=token_embeddings).double()
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

    fast = m.token_level.forward_sampled(parts)
    direct = m.token_level({mod: p.latents() for mod, p in parts.items()}, {mod: p.codes for mod, p in parts.items()})
    for mod in parts:
        torch.testing.assert_close(fast[mod], direct[mod], rtol=1e-10, atol=1e-10)
    for a, b in zip(grads(fast), grads(direct)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    assert any(g.abs().sum() > 0 for g in grads(fast)[len(list(m.token_level.parameters())):])  # tokenizer reached


def test_sampled_tokens_refuses_outside_a_sampling_step(ds):
    m = _model(ds, tokenizer_sample=0)
    m.train()
    with pytest.raises(RuntimeError, match="sampling step"):
        m.tokenizer.sampled_tokens()


# ---------------------------------------------------------------------------------------------- snapshot ensemble
def _with_snapshots(ds, epochs=3, **over):
    """A MoToRec (``cold_ensemble`` 3 unless ``over`` says otherwise) whose weights change between
    :meth:`on_epoch_start` calls (a few Adam steps each), so it holds ``min(epochs - 1, cold_ensemble - 1)``
    snapshots of distinct weights."""
    m = _model(ds, "motorec", **{"cold_ensemble": 3, **over})
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for e in range(epochs):
        m.train()
        m.on_epoch_start(e)
        for s in range(2):
            loss, _ = m.loss(_batch(ds, seed=10 * e + s))
            opt.zero_grad()
            loss.backward()
            opt.step()
    m.eval()
    return m


def _joint_scores(ds, m, state):
    """The scores of a ``warm_scorer: joint``, ``cold_ensemble: 1`` model of ``m``'s catalog loading ``state``."""
    single = build_model(ds, dataclasses.replace(m.config, warm_scorer="joint", cold_ensemble=1))
    missing, unexpected = single.load_state_dict(state, strict=False)
    assert not unexpected and all(".decoder." in k or k.endswith("ema_embed_sum") for k in missing)
    single.eval()
    with torch.no_grad():
        users, collab, content, _, _ = single._forward_all()
        return (users @ single._final_items(collab, content).t()).double()


@pytest.mark.parametrize("scorer", ["id", "joint"])
def test_snapshot_ensemble_averages_the_standardized_scores_of_the_last_epochs(ds, scorer):
    """cold_ensemble W: in eval mode the joint model's scores are the mean over its current weights and the
    W - 1 snapshots taken at the last epoch starts of its scores, each divided by its standard deviation over all
    (user, item) pairs; with the ID branch warm items keep the branch's scores and the cold part's scorer reads
    the ensemble; training mode is the current weights alone. Snapshots hold the joint columns of the ID tables
    and nothing scoring does not read."""
    d = SMALL["dim"]
    m = _with_snapshots(ds, epochs=4, warm_scorer=scorer)
    members = m.snapshots.members
    assert [x["epoch"] for x in members] == [1, 2]  # the ends of joint epochs 1 and 2; epoch 3 is the current one
    assert members[0]["state"]["lightgcn.user_embedding.weight"].shape == (ds.num_users, d)
    assert not any(".decoder." in k or k.startswith("snapshots.") for k in members[0]["state"])
    current = {k: (v[:, :d] if k.startswith("lightgcn.") and v.dim() == 2 else v)
               for k, v in m.state_dict().items() if not k.startswith("snapshots.")}
    parts = [_joint_scores(ds, m, current)] + [_joint_scores(ds, m, x["state"]) for x in members]
    assert not torch.allclose(parts[0], parts[1])  # the weights moved between epochs
    expect = sum(s / s.std(unbiased=False) for s in parts) / 3
    users, items = m.embeddings()
    assert users.shape == (ds.num_users, 3 * d + (d if scorer == "id" else 0))
    got = (users[:, :3 * d] @ items[:, :3 * d].t()).double()
    cold = ~m.warm_mask
    if scorer == "id":  # warm rows of the joint part are 0; the branch scores them
        torch.testing.assert_close(got[:, cold], expect[:, cold], rtol=1e-4, atol=1e-5)
        assert float(got[:, ~cold].abs().max()) == 0.0
        torch.testing.assert_close(m.cold_part_scorer().score(torch.arange(ds.num_users)).double(), expect,
                                   rtol=1e-4, atol=1e-5)
    else:
        torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-5)
    m.train()
    assert m.embeddings()[0].shape[1] == d + (d if scorer == "id" else 0)
    # cold_ensemble 1 keeps no snapshots
    one = _model(ds, "motorec", cold_ensemble=1)
    one.on_epoch_start(1)
    assert one.snapshots is None and not any(k.startswith("snapshots.") for k in one.state_dict())


def test_snapshots_keep_the_last_epochs_travel_in_the_state_and_refuse_bad_state(ds):
    """At most cold_ensemble - 1 snapshots, the newest kept; the first joint epoch takes none (nothing trained
    yet); they load with the state (a fresh model scores as the trained one) and are shared, not copied, by the
    trainer's selected states; a bad or oversized snapshot state is refused."""
    from motorec.models.motorec import ScoreSnapshots

    m = _with_snapshots(ds, epochs=5)
    assert [x["epoch"] for x in m.snapshots.members] == [2, 3]
    users = torch.arange(ds.num_users)
    other = _model(ds, "motorec", cold_ensemble=3)
    other.load_state_dict(m.state_dict())
    other.eval()
    torch.testing.assert_close(other.score(users), m.score(users))
    shared = m.shared_state_tensors()
    assert shared and all(any(t is s for s in shared) for t in
                          [x["state"]["lightgcn.user_embedding.weight"] for x in m.snapshots.members])
    state = m.state_dict()
    snap = copy.deepcopy(state, {id(t): t for t in shared})
    a, b = state["snapshots._extra_state"]["members"], snap["snapshots._extra_state"]["members"]
    assert all(x["state"][k] is y["state"][k] for x, y in zip(a, b) for k in x["state"] if torch.is_tensor(x["state"][k]))
    assert snap["lightgcn.user_embedding.weight"] is not state["lightgcn.user_embedding.weight"]
    s = ScoreSnapshots(2)
    with pytest.raises(ValueError, match="must be"):
        s.set_extra_state({"members": [{"epoch": "x", "state": {}}]})
    with pytest.raises(ValueError, match="holds 3 snapshots, this model keeps 2"):
        s.set_extra_state({"members": [{"epoch": i, "state": {}} for i in range(3)]})
    with pytest.raises(ValueError, match="capacity"):
        ScoreSnapshots(0)
    with pytest.raises(ConfigError, match="cold_ensemble"):
        ModelConfig(cold_ensemble=0).validate()
    # a run saved before the key existed loads as it was trained: no ensemble
    assert Config.from_dict({"model": {"name": "motorec", "dim": 8}}, saved=True).model.cold_ensemble == 1
    assert Config.from_dict({"model": {"name": "motorec", "dim": 8}}).model.cold_ensemble == 20


def test_with_new_items_scores_new_items_through_every_snapshot(ds):
    """A grown model's snapshots score the new items through their own weights: with the same trained weights and
    snapshots, the grown model scores every item as the model that had them in its catalog from the start."""
    full, trunc, n_warm = _cold_last(ds)
    over = dict(cold_ensemble=3, item_item=False)  # no kNN graphs: nothing is rebuilt differently
    m_full = _with_snapshots(full, epochs=4, **over)
    assert len(m_full.snapshots.members) == 2

    def cut(state):
        state = dict(state)
        state["lightgcn.item_embedding.weight"] = state["lightgcn.item_embedding.weight"][:n_warm]
        return state

    m_warm = _model(trunc, "motorec", **over)
    state = cut(m_full.state_dict())
    state["snapshots._extra_state"] = {"members": [{"epoch": x["epoch"], "state": cut(x["state"])}
                                                   for x in m_full.snapshots.members]}
    m_warm.load_state_dict(state)
    m_warm.eval()
    grown = m_warm.with_new_items({k: f[n_warm:] for k, f in full.features.items()})
    assert [x["epoch"] for x in grown.snapshots.members] == [1, 2]
    assert m_warm.snapshots.members[0]["state"]["lightgcn.item_embedding.weight"].shape[0] == n_warm
    users = torch.arange(full.num_users)
    torch.testing.assert_close(grown.score(users), m_full.score(users), rtol=1e-5, atol=1e-5)
