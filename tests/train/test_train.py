"""Training-layer tests: the vectorized sampler, atomic checkpoints, exact resume, refusal of foreign
checkpoints, and a short end-to-end run where MoToRec ranks cold items far better than chance and than the
ID-only LightGCN."""
from __future__ import annotations

import copy
import logging

import pytest
import torch

from motorec.config import Config, ConfigError
from motorec.data import synthetic
from motorec.eval import evaluate
from motorec.train import BPRSampler, CheckpointError, Trainer, load_checkpoint, save_checkpoint
from motorec.train.checkpoint import FORMAT_VERSION

# each model's own small settings (the shared model.dim is 32)
SMALL_MODEL = {"motorec": dict(codebook_size=16, latent_dim=16, hidden_dims=[32], knn_k=5),
               "content": dict(hidden=64), "lightgcn_content": dict(hidden=64)}


@pytest.fixture(scope="module")
def ds():
    return synthetic(300, 200, num_topics=8, modalities={"image": 32, "text": 16}, seed=1)


def _cfg(name="motorec", epochs=4, dim=32, **own):
    # the models as they are: the trainer's mechanics (wrapped models have their own tests)
    return Config().replace(model={"name": name, "dim": dim}, **SMALL_MODEL,
                            **({name: own} if own else {}), wrappers={"ensemble": 1, "decoupled": False},
                            train={"epochs": epochs, "pretrain_epochs": 2, "batch_size": 512, "patience": 0,
                                   "lr": 5e-3})


# ---------------------------------------------------------------------------------------------- sampler
def test_sampler_covers_every_pair_once_and_negatives_avoid_positives(ds):
    s = BPRSampler(ds.train, ds.num_items, batch_size=257)
    g = torch.Generator().manual_seed(0)
    batches = list(s.epoch(g))
    assert len(batches) == len(s)
    users = torch.cat([b["users"] for b in batches])
    pos = torch.cat([b["pos"] for b in batches])
    neg = torch.cat([b["neg"] for b in batches])
    key = torch.sort(users * ds.num_items + pos).values
    expect = torch.unique(ds.train[:, 0] * ds.num_items + ds.train[:, 1])
    assert torch.equal(key, expect)
    assert not s.is_positive(users, neg).any()
    warm = ds.warm_items()
    assert warm[neg].all()  # cold items are never sampled
    # the membership test agrees with a set
    truth = {(int(u), int(i)) for u, i in ds.train.tolist()}
    q_u = torch.randint(ds.num_users, (500,), generator=g)
    q_i = torch.randint(ds.num_items, (500,), generator=g)
    assert s.is_positive(q_u, q_i).tolist() == [(int(u), int(i)) in truth for u, i in zip(q_u, q_i)]


def test_sampler_seeded_and_redraws_collisions():
    # user 0 interacted with all but item 4 of the warm items: every negative must be 4
    train = torch.tensor([[0, i] for i in range(4)] + [[1, 4], [1, 5]])
    s = BPRSampler(train, 8, batch_size=3)
    negs = s.sample_negatives(torch.zeros(200, dtype=torch.long), torch.Generator().manual_seed(1))
    assert set(negs.tolist()) <= {4, 5}
    a = [b["neg"] for b in s.epoch(torch.Generator().manual_seed(3))]
    b = [b["neg"] for b in s.epoch(torch.Generator().manual_seed(3))]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="train"):
        BPRSampler(torch.zeros(0, 2, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="batch_size"):
        BPRSampler(train, 8, batch_size=0)


# ---------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_atomic_roundtrip_and_damaged_files(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    state = {"model": {"w": torch.randn(5, 3)}, "epoch": 3, "name": "x", "nested": [1.5, {"a": torch.arange(4)}]}
    save_checkpoint(state, path)
    back = load_checkpoint(path)
    assert back["epoch"] == 3 and torch.equal(back["model"]["w"], state["model"]["w"])
    assert back["format_version"] == FORMAT_VERSION == 2
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind
    raw = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(tmp_path / "trunc.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"epoch": 1}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="format_version"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_failed_save_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        save_checkpoint({"epoch": 2, "bad": Boom()}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# ---------------------------------------------------------------------------------------------- resume
def _assert_close(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.allclose(a.double(), b.double(), atol=1e-6, rtol=0), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):  # e.g. a snapshot ensemble's members
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{where}[{k}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("name,propagation,fanout", [("motorec", "full", 0), ("lightgcn", "full", 0),
                                                     ("motorec", "history", 0), ("lightgcn", "history", 0),
                                                     ("lightgcn", "history", 3)])
def test_resume_equals_uninterrupted(ds, tmp_path, name, propagation, fanout):
    # history: the epoch start refreshes the history from the weights, so a resumed run has the same one;
    # fanout: the neighbour samples come from the global generator, which the checkpoint restores
    def cfg(epochs):
        return _cfg(name, epochs=epochs).replace(train={"propagation": propagation, "fanout": fanout})

    full = Trainer(cfg(4), ds, checkpoint_dir=tmp_path / "a", quiet=True)
    ra = full.fit()
    part = Trainer(cfg(2), ds, checkpoint_dir=tmp_path / "b", quiet=True)
    part.fit()
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == (2 if name == "lightgcn" else 4)
    resumed = Trainer(cfg(4), ds, checkpoint_dir=tmp_path / "b", quiet=True)
    rb = resumed.fit(resume=True)
    assert rb["epochs_run"] == ra["epochs_run"] and rb["best_epoch"] == ra["best_epoch"]
    for split in ("valid", "test"):
        for g in ("cold", "warm", "hybrid", "hybrid_warm", "hybrid_cold"):
            for k, v in ra[split][g].items():
                assert abs(rb[split][g][k] - v) <= 1e-6, (split, g, k)
    _assert_close(full.model.state_dict(), resumed.model.state_dict(), "best")
    ca = load_checkpoint(tmp_path / "a" / "last.pt")
    cb = load_checkpoint(tmp_path / "b" / "last.pt")
    _assert_close(ca["model"], cb["model"], "last")
    _assert_close(ca["optimizer"], cb["optimizer"], "optimizer")
    assert [r.get("loss") for r in ca["history"]] == pytest.approx([r.get("loss") for r in cb["history"]], abs=1e-6)


def test_resume_refuses_other_config_or_dataset(ds, tmp_path):
    Trainer(_cfg("lightgcn", epochs=1), ds, checkpoint_dir=tmp_path, quiet=True).fit()
    with pytest.raises(CheckpointError, match=r"another configuration \(model 'lightgcn': model.dim: 32 -> 8\)"):
        Trainer(_cfg("lightgcn", epochs=2, dim=8), ds, checkpoint_dir=tmp_path, quiet=True).fit(resume=True)
    other = synthetic(300, 200, num_topics=8, modalities={"image": 32, "text": 16}, seed=2)
    with pytest.raises(CheckpointError, match="another dataset"):
        Trainer(_cfg("lightgcn", epochs=2), other, checkpoint_dir=tmp_path, quiet=True).fit(resume=True)
    ck = tmp_path / "last.pt"
    raw = ck.read_bytes()
    ck.write_bytes(raw[:-100])
    with pytest.raises(CheckpointError, match="damaged"):
        Trainer(_cfg("lightgcn", epochs=2), ds, checkpoint_dir=tmp_path, quiet=True).fit(resume=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        Trainer(_cfg("lightgcn", epochs=2), ds, checkpoint_dir=tmp_path / "none", quiet=True).fit(resume=True)


def test_config_differences_name_the_changed_keys():
    a = Config()
    b = a.replace(model={"dim": 8}, motorec={"hidden_dims": [128, 64]}, wrappers={"ensemble": 3},
                  train={"lr": 0.01, "epochs": 3})
    assert b.differences(a) == ["model.dim: 64 -> 8", "motorec.hidden_dims: [256] -> [128, 64]",
                                "wrappers.ensemble: 20 -> 3",
                                "train.lr: 0.001 -> 0.01"]  # epochs is an epoch budget, not a different model
    assert a.differences(a.to_dict()) == []
    old = a.to_dict()
    del old["motorec"]["rarity_terms"]  # a config without the key
    assert a.differences(old) == ["motorec.rarity_terms: '<missing>' -> 'content'"]


def test_early_stopping_restores_best(ds):
    cfg = _cfg("lightgcn", epochs=30).replace(train={"patience": 2, "lr": 0.05})
    r = Trainer(cfg, ds, quiet=True).fit()
    valid_scores = [h["select_score"] for h in r["history"] if "select_score" in h]
    assert r["epochs_run"] <= 30
    best = max(valid_scores)
    # the default rule: the mean of validation warm and cold Recall@20
    assert cfg.train.select == "warm_cold_mean"
    assert (r["valid"]["warm"]["recall@20"] + r["valid"]["cold"]["recall@20"]) / 2 == pytest.approx(best, abs=1e-9)
    assert r["early_stopped"] == (r["epochs_run"] < 30) and r["hit_epoch_cap"] == (not r["early_stopped"])
    if r["epochs_run"] < 30:  # stopped early: the last `patience` evaluations did not improve
        assert max(valid_scores[-2:]) <= best
    # the history also records each setting's validation Recall@20; the selected epoch's row matches
    row = next(h for h in r["history"] if h.get("epoch") == r["best_epoch"])
    for g in ("warm", "cold", "hybrid"):
        assert row[f"valid_{g}_recall@20"] == pytest.approx(r["valid"][g]["recall@20"], abs=1e-9)


def test_epoch_cap_before_early_stopping_warns(ds, caplog):
    # patience 50 cannot run out in 3 epochs: the cap ends training, and the trainer says so
    log = logging.getLogger("tests.epoch_cap")
    with caplog.at_level(logging.WARNING, logger="tests.epoch_cap"):
        r = Trainer(_cfg("lightgcn", epochs=3).replace(train={"patience": 50}), ds, quiet=True, logger=log).fit()
    assert r["epochs_run"] == 3 and r["early_stopped"] is False and r["hit_epoch_cap"] is True
    msgs = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(msgs) == 1 and "reached the epoch cap (3 joint epochs)" in msgs[0] and "--epochs" in msgs[0]
    # patience 0 (no early stopping asked for): the cap is the plan, nothing to warn about
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tests.epoch_cap"):
        r = Trainer(_cfg("lightgcn", epochs=2), ds, quiet=True, logger=log).fit()
    assert r["early_stopped"] is False and r["hit_epoch_cap"] is False
    assert not [x for x in caplog.records if x.levelno == logging.WARNING]


@pytest.mark.parametrize("rule", ["warm_cold_mean", "warm", "cold", "hybrid"])
def test_select_rule_picks_the_best_epoch_by_that_rule(ds, rule):
    cfg = _cfg("lightgcn_content", epochs=8).replace(train={"patience": 0, "select": rule})
    calls = []

    def counting_evaluate(*a, **k):  # one evaluation pass per validated epoch gives every setting
        from motorec.eval import evaluate

        calls.append(k["split"])
        return evaluate(*a, **k)

    r = Trainer(cfg, ds, quiet=True, evaluate_fn=counting_evaluate).fit()
    rows = [h for h in r["history"] if "select_score" in h]
    assert calls.count("valid") == len(rows) + 1  # + the final report of the restored weights
    if rule == "warm_cold_mean":
        expect = [(h["valid_warm_recall@20"] + h["valid_cold_recall@20"]) / 2 for h in rows]
    else:
        expect = [h[f"valid_{rule}_recall@20"] for h in rows]
    assert [h["select_score"] for h in rows] == pytest.approx(expect, abs=1e-12)
    best = max(expect)
    chosen = next(h for h in rows if h["epoch"] == r["best_epoch"])
    assert chosen["select_score"] == best
    assert min(i for i, h in enumerate(rows) if h["select_score"] == best) == rows.index(chosen)  # first best


def test_select_rule_validation_and_select_score():
    from motorec.train.trainer import select_score

    with pytest.raises(ConfigError, match="train.select must be one of warm_cold_mean, warm, cold, hybrid"):
        _cfg("lightgcn").replace(train={"select": "popular"})
    # a setting without validation users leaves the mean, a single setting falls back to hybrid
    v = {"warm": {"recall@20": 0.4, "num_users": 3}, "cold": {"recall@20": 0.0, "num_users": 0},
         "hybrid": {"recall@20": 0.3, "num_users": 3}}
    assert select_score(v, "warm_cold_mean") == 0.4 and select_score(v, "cold") == 0.3
    v["cold"] = {"recall@20": 0.2, "num_users": 2}
    assert select_score(v, "warm_cold_mean") == pytest.approx(0.3) and select_score(v, "cold") == 0.2


# ---------------------------------------------------------------------------------------------- end to end
def test_end_to_end_motorec_beats_random_and_lightgcn_on_cold_items(ds):
    results = {}
    for name in ("motorec", "lightgcn"):
        cfg = _cfg(name, epochs=20)
        results[name] = Trainer(cfg, ds, quiet=True).fit()["test"]
    g = torch.Generator().manual_seed(0)
    rand = evaluate(lambda u: torch.rand(u.numel(), ds.num_items, generator=g), ds, split="test")
    # cold items in the hybrid ranking (every item ranked, as a user sees them)
    cold = {k: v["hybrid_cold"]["recall@20"] for k, v in results.items()}
    assert results["motorec"]["hybrid_cold"]["num_users"] > 20
    assert cold["motorec"] > 2.0 * rand["hybrid_cold"]["recall@20"], (cold, rand["hybrid_cold"])
    assert cold["motorec"] > 2.0 * cold["lightgcn"] + 0.02, cold
    # ranked alone (the cold setting; ~40 cold items, so chance is high): still well above chance and ID-only
    alone = {k: v["cold"]["recall@20"] for k, v in results.items()}
    assert alone["motorec"] > rand["cold"]["recall@20"] + 0.15 and alone["motorec"] > alone["lightgcn"] + 0.15, \
        (alone, rand["cold"])
    # and it still ranks warm items at least as well as chance by a wide margin
    assert results["motorec"]["hybrid_warm"]["recall@20"] > 2.0 * rand["hybrid_warm"]["recall@20"]


def test_make_optimizer_fused_matches_the_loop_and_loads_its_state():
    """The trainer's Adam is the fused kernel on CPU; it takes the same steps as the per-parameter loop and loads
    a state_dict the loop wrote (checkpoints from before the switch resume)."""
    from motorec.train import make_optimizer

    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 3))
    b = copy.deepcopy(a)
    opt_a = make_optimizer(a, lr=1e-2, weight_decay=1e-3)
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-2, weight_decay=1e-3)
    assert opt_a.defaults["fused"] is True
    x = torch.randn(7, 5)
    for _ in range(3):
        for m, o in ((a, opt_a), (b, opt_b)):
            o.zero_grad()
            m(x).pow(2).sum().backward()
            o.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    fresh = make_optimizer(b, lr=1e-2, weight_decay=1e-3)
    fresh.load_state_dict(opt_b.state_dict())
    b(x).pow(2).sum().backward()
    fresh.step()  # the loaded state steps without error
    assert all(torch.isfinite(p).all() for p in b.parameters())


def test_result_carries_the_models_own_statistics(ds):
    """MoToRec's result holds its codebook usage after the best weights are restored; LightGCN reports none."""
    r = Trainer(_cfg("motorec", epochs=1), ds, quiet=True).fit()
    assert any(k.startswith("perplexity_") for k in r["model_stats"])
    assert Trainer(_cfg("lightgcn", epochs=1), ds, quiet=True).fit()["model_stats"] == {}
