"""Synthetic generator: sizes, heavy-tailed degrees, content predicting preference, determinism."""
import pytest
import torch
import torch.nn.functional as F

from motorec.data import synthetic


@pytest.fixture(scope="module")
def data():
    return synthetic(800, 1500, num_interactions=16000, seed=5)


def test_sizes_and_types(data):
    d = data
    assert (d.num_users, d.num_items) == (800, 1500)
    assert set(d.features) == {"image", "text"}
    assert d.features["image"].shape == (1500, 64) and d.features["text"].shape == (1500, 32)
    total = sum(p.shape[0] for p in (d.train, d.valid, d.test)) + d.info["dropped_no_train_user"]
    assert total == d.info["num_generated"] == 16000
    assert d.split == "cold" and d.cold_test_items.numel() > 0
    assert not torch.isin(d.train[:, 1], torch.cat([d.cold_valid_items, d.cold_test_items])).any()


def _top10_share_and_peak(d, col, n):
    pairs = torch.cat([d.train, d.valid, d.test])
    deg = torch.bincount(pairs[:, col], minlength=n).double()
    top = deg.sort(descending=True).values
    return (top[: n // 10].sum() / top.sum()).item(), (top[0] / deg.median()).item()


def test_degrees_are_heavy_tailed(data):
    # Uniform (Poisson) degrees at this density: top-10% share 0.14..0.16, peak 2..2.5x the median.
    for col, n in ((1, data.num_items), (0, data.num_users)):
        share, peak = _top10_share_and_peak(data, col, n)
        assert share > 0.24, (col, share)
        assert peak > 6, (col, peak)
    heavy = synthetic(800, 1500, num_interactions=16000, seed=5, alpha=0.4)
    light = synthetic(800, 1500, num_interactions=16000, seed=5, alpha=3.0)
    assert _top10_share_and_peak(heavy, 1, 1500)[0] > _top10_share_and_peak(light, 1, 1500)[0] + 0.05


def test_content_predicts_preference(data):
    """A user's held-out items are closer in feature space to the user's training items than random items
    are: the AUC of a content profile scorer on cold test pairs is far above 0.5."""
    f = F.normalize(torch.cat([data.features["image"], data.features["text"]], 1), dim=1)
    profile = torch.zeros(data.num_users, f.shape[1]).index_add_(0, data.train[:, 0], f[data.train[:, 1]])
    cold = data.test[torch.isin(data.test[:, 1], data.cold_test_items)]
    pos = (profile[cold[:, 0]] * f[cold[:, 1]]).sum(1)
    g = torch.Generator().manual_seed(0)
    rnd = torch.randint(data.num_items, (cold.shape[0],), generator=g)
    neg = (profile[cold[:, 0]] * f[rnd]).sum(1)
    auc = (pos > neg).double().mean()
    assert auc > 0.75, auc


def test_topic_signal_in_features():
    d = synthetic(50, 200, num_interactions=400, noise=0.0, seed=1, modalities={"a": 9})
    topic = d.info["item_topic"]
    f = d.features["a"]
    same = topic[:, None] == topic[None, :]
    dist = (f[:, None, :] - f[None, :, :]).abs().amax(-1)
    assert (dist[same] == 0).all()
    assert dist[~same].min() > 1e-3


def test_deterministic_per_seed():
    a = synthetic(100, 300, seed=2)
    b = synthetic(100, 300, seed=2)
    c = synthetic(100, 300, seed=3)
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()


def test_warm_split_and_fewer_items_than_topics():
    d = synthetic(30, 5, num_interactions=40, num_topics=16, split="warm", seed=0)
    assert d.split == "warm" and d.num_items == 5
    assert d.cold_valid_items.numel() == 0
    assert d.info["item_topic"].max() < 16


def test_large_catalog_is_vectorized():
    d = synthetic(2000, 300_000, num_interactions=60_000, seed=0, modalities={"image": 8})
    assert d.features["image"].shape == (300_000, 8)
    assert d.info["num_generated"] == 60_000


@pytest.mark.parametrize("kw, match", [
    (dict(num_users=0), "num_users"), (dict(num_items=1.5), "num_items"), (dict(num_topics=0), "num_topics"),
    (dict(modalities={}), "modalities"), (dict(modalities={"image": 0}), "modalities"),
    (dict(alpha=0.0), "alpha"), (dict(noise=-1.0), "noise"), (dict(split="x"), "split"),
    (dict(num_interactions=10**9), "num_interactions"),
])
def test_bad_arguments(kw, match):
    args = dict(num_users=10, num_items=20)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        synthetic(args.pop("num_users"), args.pop("num_items"), **args)


def test_split_seed_draws_other_cold_items_of_the_same_catalog():
    a = synthetic(300, 200, num_interactions=4000, seed=2)
    b = synthetic(300, 200, num_interactions=4000, seed=2, split_seed=2)
    c = synthetic(300, 200, num_interactions=4000, seed=2, split_seed=7)
    assert torch.equal(a.cold_test_items, b.cold_test_items) and torch.equal(a.train, b.train)
    assert torch.equal(a.features["image"], c.features["image"])  # the same catalog...
    assert not torch.equal(a.cold_test_items, c.cold_test_items)  # ...another draw of its cold items
    pairs = lambda d: torch.cat([d.train, d.valid, d.test]).tolist()  # noqa: E731
    assert sorted(map(tuple, pairs(a))) == sorted(map(tuple, pairs(c)))


def test_synthetic_spec_parses_defaults_and_refuses_bad_parts():
    from motorec.data import SYNTHETIC_SPEC, DataError, load_synthetic_spec, parse_synthetic_spec

    assert parse_synthetic_spec("/some/folder") is None
    assert parse_synthetic_spec("synthetic") == {k: d for k, (_, d) in SYNTHETIC_SPEC.items()}
    spec = parse_synthetic_spec("synthetic:noise=3, users=300,items=200,interactions=4000,seed=2")
    assert (spec["noise"], spec["users"], spec["items"], spec["seed"], spec["text"]) == (3.0, 300, 200, 2, 32)
    d = load_synthetic_spec("synthetic:users=300,items=200,interactions=4000,seed=2", seed=7)
    ref = synthetic(300, 200, num_interactions=4000, seed=2, split_seed=7, num_topics=24)
    assert torch.equal(d.train, ref.train) and torch.equal(d.features["text"], ref.features["text"])
    for bad, match in (("synthetic:nois=2", "keys among"), ("synthetic:noise", "keys among"),
                       ("synthetic:users=1.5", "users must be an int"), ("synthetic:noise=-1", "noise must be"),
                       ("synthetic:items=0", "num_items must be a positive int"),
                       ("synthetic:users=10,items=10,interactions=60", "over half")):
        with pytest.raises(DataError, match=match):
            parse_synthetic_spec(bad)
