"""The cold-start baselines on the LightGCN backbone: ``knn`` (cold item = mean of its nearest warm items' trained
embeddings) and ``aldi`` (content student distilled from a LightGCN teacher that trains as ``lightgcn`` does)."""
from __future__ import annotations

import math

import pytest
import torch

from motorec.config import Config, ConfigError, ModelConfig
from motorec.data import synthetic
from motorec.models import build_model
from motorec.models.aldi import aldi_distill_losses, aldi_item_weights
from motorec.models.baselines import LightGCNRec
from motorec.models.knn import KNNRec, content_neighbours
from motorec.train import BPRSampler, Trainer

SMALL = dict(dim=16, content_hidden=32)


@pytest.fixture(scope="module")
def ds():
    return synthetic(120, 90, num_topics=6, modalities={"image": 24, "text": 12}, seed=3)


def _build(ds, name, seed=0, **over):
    torch.manual_seed(seed)
    return build_model(ds, ModelConfig(name=name, **{**SMALL, **over}))


def _batch(ds, seed=0, size=64):
    g = torch.Generator().manual_seed(seed)
    return next(BPRSampler(ds.train, ds.num_items, batch_size=size).epoch(g))


# --------------------------------------------------------------------------- knn
# Items 0-3 warm, 4-5 cold; two modalities. Sum of per-modality cosines of cold item 4 (a=[1,0], b=[1,0]):
# item 0: 1 + 0 = 1.0, item 1: 0.6 + 1 = 1.6, item 2 (no b features): 0.8 + 0 = 0.8, item 3: -1 + 0 = -1.
# Cold item 5 (a=[0,1], b=[0,-1]): item 0: 0 - 1 = -1, item 1: 0.8 + 0 = 0.8, item 2: 0.6, item 3: 0 + 1 = 1.
# With k=2: item 4 -> {1, 0}, item 5 -> {3, 1}. (Cosine of the concatenated rows would rank item 2 above item 0
# for item 4, because item 2's missing modality shrinks its norm.)
TINY_FEATS = {
    "a": torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [-1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]),
    "b": torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 0.0], [0.0, -1.0], [3.0, 0.0], [0.0, -1.0]]),
}
TINY_TRAIN = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 3], [2, 0], [2, 3], [2, 1]])
TINY_NEIGHBOURS = {4: [1, 0], 5: [3, 1]}


def _tiny(cls, **over):
    torch.manual_seed(0)
    cfg = ModelConfig(name="knn" if cls is KNNRec else "lightgcn", dim=8, **over)
    return cls(num_users=3, num_items=6, train=TINY_TRAIN, features=TINY_FEATS, config=cfg)


def test_knn_neighbours_hand_checked():
    idx = content_neighbours(TINY_FEATS, torch.tensor([4, 5]), torch.arange(4), 2)
    assert idx.tolist() == [TINY_NEIGHBOURS[4], TINY_NEIGHBOURS[5]]
    # k beyond the warm items: all of them, best first
    assert content_neighbours(TINY_FEATS, torch.tensor([4]), torch.arange(4), 10).tolist() == [[1, 0, 2, 3]]


def test_knn_cold_embedding_is_mean_of_nearest_warm_and_warm_unchanged():
    knn, base = _tiny(KNNRec, knn_cold_k=2), _tiny(LightGCNRec)
    knn.eval(), base.eval()
    assert knn.cold_items.tolist() == [4, 5]
    for name, p in base.named_parameters():  # same seed, same backbone: same initial weights
        assert torch.equal(p, dict(knn.named_parameters())[name])
    u_b, i_b = base.embeddings()
    u_k, i_k = knn.embeddings()
    assert torch.equal(u_k, u_b)
    assert torch.equal(i_k[:4], i_b[:4])
    for c, nb in TINY_NEIGHBOURS.items():
        assert torch.allclose(i_k[c], (i_b[nb[0]] + i_b[nb[1]]) / 2, atol=1e-7)
        assert not torch.allclose(i_k[c], i_b[c])
    s = knn.score(torch.tensor([0, 2]))
    assert torch.allclose(s, u_k[[0, 2]] @ i_k.t(), atol=1e-6)


def test_knn_trains_exactly_like_lightgcn(ds):
    knn, base = _build(ds, "knn", knn_cold_k=3), _build(ds, "lightgcn")
    assert all(torch.equal(p, q) for p, q in zip(knn.parameters(), base.parameters()))
    opts = [torch.optim.Adam(m.parameters(), lr=0.01) for m in (knn, base)]
    for step in range(3):
        batch = _batch(ds, seed=step)
        losses = []
        for m, opt in zip((knn, base), opts):
            opt.zero_grad()
            loss, _ = m.loss(batch)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        assert losses[0] == losses[1]
    assert all(torch.equal(p, q) for p, q in zip(knn.parameters(), base.parameters()))
    knn.eval(), base.eval()
    warm = knn.warm_mask
    assert torch.equal(knn.item_embeddings()[warm], base.item_embeddings()[warm])
    assert torch.equal(knn.user_embeddings(), base.user_embeddings())


def test_knn_neighbours_are_warm_and_nearest(ds):
    m = _build(ds, "knn", knn_cold_k=4)
    nb = m.cold_neighbors
    cold = m.cold_items
    assert cold.numel() > 0 and nb.shape == (cold.numel(), 4)
    assert bool(m.warm_mask[nb].all())
    # dense float64 reference: sum over modalities of cosine similarity, warm items only
    sim = sum(torch.nn.functional.normalize(f.double(), dim=1)[cold] @
              torch.nn.functional.normalize(f.double(), dim=1).t() for f in ds.features.values())
    sim[:, ~m.warm_mask] = -math.inf
    ref = sim.topk(4, dim=1).indices
    assert torch.equal(nb, ref)
    assert len(dict(m.state_dict())) == len(dict(_build(ds, "lightgcn").state_dict()))  # no new state


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
def test_knn_bad_k_rejected(bad):
    with pytest.raises(ConfigError, match="knn_cold_k"):
        Config.from_dict({"model": {"name": "knn", "knn_cold_k": bad}})
    with pytest.raises(ValueError, match="k must be"):
        content_neighbours(TINY_FEATS, torch.tensor([4]), torch.arange(4), bad)


# --------------------------------------------------------------------------- aldi
def test_aldi_tws_weights_hand_checked():
    # users' degrees: u0 2, u1 2, u2 3; item 0: 1/2 + 1/3, item 1: 1/2 + 1/3, item 2: 1/2, item 3: 1/2 + 1/3
    w = aldi_item_weights(TINY_TRAIN, 3, 6, 4.0)
    a = 4.0 * 6 / 3
    f = torch.tensor([5 / 6, 5 / 6, 1 / 2, 5 / 6, 0.0, 0.0], dtype=torch.float64)
    assert torch.allclose(w.double(), torch.tanh(a * f).clamp_max(math.tanh(4.0)), atol=1e-6)
    assert float(aldi_item_weights(TINY_TRAIN, 3, 6, 0.5).max()) <= math.tanh(0.5) + 1e-7


def test_aldi_distill_terms_match_formulas():
    g = torch.Generator().manual_seed(0)
    tu, tp, tn, sp, sn = (torch.randn(7, 5, generator=g, dtype=torch.float64) for _ in range(5))
    w = torch.rand(7, generator=g, dtype=torch.float64)
    parts = aldi_distill_losses(tu, tp, tn, sp, sn, w)
    tpos, tneg, spos, sneg = (tu * tp).sum(1), (tu * tn).sum(1), (tu * sp).sum(1), (tu * sn).sum(1)

    def bce(logit, target):
        p = torch.sigmoid(logit)
        return -(target * p.log() + (1 - target) * (1 - p).log())

    assert torch.allclose(parts["supervised"], -torch.log(torch.sigmoid(spos - sneg)).mean())
    assert torch.allclose(parts["rating"], ((tpos - spos).abs() + (tneg - sneg).abs()).mean())
    assert torch.allclose(parts["ranking"], (w * bce(spos - sneg, torch.sigmoid(tpos - tneg))).mean())
    ti = (tp * tp).sum(1) - torch.stack([(tp[i] * tn).sum(1).mean() for i in range(7)])
    si = (sp * sp).sum(1) - torch.stack([(sp[i] * sn).sum(1).mean() for i in range(7)])
    assert torch.allclose(parts["identification"], (w * bce(si, torch.sigmoid(ti))).mean())


def test_aldi_student_terms_leave_teacher_gradients_alone(ds):
    aldi, base = _build(ds, "aldi"), _build(ds, "lightgcn")
    assert all(torch.equal(p, q) for p, q in zip(aldi.lightgcn.parameters(), base.lightgcn.parameters()))
    batch = _batch(ds)
    total, parts = aldi.loss(batch)
    total.backward()
    ref, _ = base.loss(batch)
    ref.backward()
    assert float(parts["bpr"]) == pytest.approx(float(ref.detach()) - float(parts["reg"]), rel=1e-6)
    for p, q in zip(aldi.lightgcn.parameters(), base.lightgcn.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-7, rtol=0)  # the teacher's gradient is LightGCN's alone
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in aldi.student.parameters())
    # the student terms on their own give the teacher no gradient at all
    aldi.zero_grad()
    users, items = aldi.teacher_embeddings()
    u, p_, n = batch["users"], batch["pos"], batch["neg"]
    s = aldi.student_embeddings(torch.cat([p_, n]))
    sum(aldi_distill_losses(users[u], items[p_], items[n], s[: p_.numel()], s[p_.numel():]).values()).backward()
    assert all(p.grad is None or not bool(p.grad.any()) for p in aldi.lightgcn.parameters())


def test_aldi_cold_items_scored_through_student(ds):
    m = _build(ds, "aldi")
    m.eval()
    users, items = m.user_embeddings(), m.item_embeddings()
    tu, ti = m.teacher_embeddings()
    cold = m.cold_items
    assert cold.numel() > 0
    assert torch.equal(users, tu)
    assert torch.equal(items[m.warm_mask], ti[m.warm_mask])
    feats = {k: f[cold] for k, f in m.item_features.as_dict().items()}
    assert torch.allclose(items[cold], m.student(feats), atol=1e-6)
    s = m.score(torch.arange(5))
    assert torch.allclose(s[:, cold], users[:5] @ m.student(feats).t(), atol=1e-5)
    # another student gives other cold scores, the same warm scores
    with torch.no_grad():
        for p in m.student.parameters():
            p.add_(0.1)
    m.train(), m.eval()
    s2 = m.score(torch.arange(5))
    assert torch.equal(s2[:, m.warm_mask], s[:, m.warm_mask])
    assert not torch.allclose(s2[:, cold], s[:, cold])


@pytest.mark.parametrize("tws", [False, True])
def test_aldi_loss_decreases_and_student_learns_the_teacher(ds, tws):
    m = _build(ds, "aldi", aldi_tws=tws)
    opt = torch.optim.Adam(m.parameters(), lr=0.01)
    sampler = BPRSampler(ds.train, ds.num_items, batch_size=256)
    g = torch.Generator().manual_seed(0)
    means = []
    for _ in range(10):
        tot = []
        for batch in sampler.epoch(g):
            opt.zero_grad()
            loss, _ = m.loss(batch)
            loss.backward()
            opt.step()
            tot.append(float(loss.detach()))
        means.append(sum(tot) / len(tot))
    assert means[-1] < 0.9 * means[0]

    # the teacher's scores grow as it trains, so the student's terms are compared against a fresh student on
    # the final teacher, not against their own first epoch
    fresh = _build(ds, "aldi", seed=1, aldi_tws=tws)
    fresh.lightgcn.load_state_dict(m.lightgcn.state_dict())
    batch = _batch(ds, seed=99, size=512)
    with torch.no_grad():
        (_, trained), (_, untrained) = m.loss(batch), fresh.loss(batch)
    assert trained["bpr"] == untrained["bpr"]
    for k, ratio in (("student_supervised", 0.8), ("student_rating", 0.8), ("student_ranking", 0.9),
                     ("student_identification", 0.8)):
        assert trained[k] < ratio * untrained[k], (k, trained[k], untrained[k])


@pytest.mark.parametrize("name", ["knn", "aldi"])
def test_cold_baselines_train_through_trainer(ds, name):
    cfg = Config.from_dict({"model": {"name": name, **SMALL},
                            "train": {"epochs": 1, "batch_size": 512, "pretrain_epochs": 0}})
    r = Trainer(cfg, ds, quiet=True).fit()
    assert r["epochs_run"] == 1
    for group in ("cold", "warm", "hybrid"):
        assert 0.0 <= r["test"][group]["recall@20"] <= 1.0


@pytest.mark.parametrize("name", ["knn", "aldi"])
def test_cold_items_ignore_their_untrained_id_embedding(ds, name):
    m = _build(ds, name)
    m.eval()
    before_u, before_i = m.user_embeddings().clone(), m.item_embeddings().clone()
    cold = ~m.warm_mask
    with torch.no_grad():
        m.item_emb[cold] += 10.0
    m.train(), m.eval()
    assert torch.allclose(m.item_embeddings(), before_i, atol=1e-6)
    assert torch.allclose(m.user_embeddings(), before_u, atol=1e-6)


def test_cli_selects_them_by_name_and_leaves_the_default_list_alone():
    from motorec.cli import build_parser
    from motorec.config import DEFAULT_MODELS, MODEL_NAMES

    args = build_parser().parse_args(["train", "--model", "knn", "--model", "aldi"])
    assert args.model == ["knn", "aldi"]
    assert {"knn", "aldi"} <= set(MODEL_NAMES) and not {"knn", "aldi"} & set(DEFAULT_MODELS)
    assert set(DEFAULT_MODELS) == set(MODEL_NAMES) - {"knn", "aldi"}


# --------------------------------------------------------------------------- MoToRec-only keys
# a valid non-default value for every key that MoToRec alone reads (config.MOTOREC_ONLY_MODEL_KEYS)
MOTOREC_ONLY_OTHER = dict(
    latent_dim=8, hidden_dims=(16, 8), num_levels=2, codebook_size=7, commitment=0.5, sparse_weight=0.3,
    sparse_mode="sigmoid", sparse_temperature=2.0, continuous=True, ema=True, kmeans_init=False,
    token_embeddings=False, rarity=False, rarity_min=0.9, rarity_max=1.5, rarity_warmup_epochs=0,
    rarity_contrastive=True, rarity_gate=True, rarity_terms="all", item_item=False, knn_k=3, knn_rebuild_every=2,
    item_item_ids=True, lambda_cl=0.7, tau=0.9, cl_items=3, lambda_rq=0.1, tokenizer_sample=5,
    freeze_tokenizer=True, id_dropout=0.5, cold_dropout=0.5, lambda_cold=3.0, cold_distill=2.0,
    warm_content_skip=True, warm_content_layer0=False, warm_scorer="sum", cl_target="id", feature_residual=True,
    fusion="attention", cold_ensemble=3,
)


def test_motorec_only_keys_are_exactly_the_keys_no_baseline_reads():
    from motorec.config import MOTOREC_ONLY_MODEL_KEYS

    assert set(MOTOREC_ONLY_OTHER) == set(MOTOREC_ONLY_MODEL_KEYS)
    defaults = ModelConfig()
    assert all(getattr(defaults, k) != v for k, v in MOTOREC_ONLY_OTHER.items())
    ModelConfig(**MOTOREC_ONLY_OTHER).validate()


@pytest.mark.parametrize("name", ["lightgcn", "content", "lightgcn_content", "knn", "aldi"])
def test_baselines_ignore_every_motorec_only_key(ds, name):
    """`motorec compare` reuses a baseline's tuning across changes of these keys: the baseline built with all of
    them changed has the same weights, loss and scores."""
    a, b = _build(ds, name), _build(ds, name, **MOTOREC_ONLY_OTHER)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if isinstance(sa[k], torch.Tensor):
            assert torch.equal(sa[k], sb[k]), k
    batch = _batch(ds)
    for m in (a, b):
        m.train()
        m.on_epoch_start(3)
    torch.manual_seed(5)
    la, pa = a.loss(batch)
    torch.manual_seed(5)
    lb, pb = b.loss(batch)
    assert torch.equal(la, lb) and pa.keys() == pb.keys()
    for m in (a, b):
        m.eval()
    users = torch.arange(7)
    assert torch.equal(a.score(users), b.score(users))
