"""``Decoupled`` (``motorec/models/decoupled.py``) around LightGCN-with-features and MoToRec: the warm part trains
exactly as a standalone ``lightgcn`` seeded with the global seed + ``WARM_SEED_OFFSET``, the cold part exactly as
the unwrapped model; warm items are scored by the warm part, cold items by the cold part; under
``warm_cold_mean`` each part is selected at its own best epoch (checked against the trainer's history rows), the
restored weights of each part are that part's at its epoch, and a resumed run selects and restores the same."""
from __future__ import annotations

import pytest
import torch
from _model_helpers import SMALL, make_batch, small_config

from motorec.config import Config, WrapperConfig, model_config
from motorec.models import Decoupled, SnapshotEnsemble, build_model, unwrap, wrap
from motorec.models.decoupled import WARM_SEED_OFFSET
from motorec.models.selection import PartsSelection, Selection
from motorec.train import Trainer, load_checkpoint, make_optimizer

NAMES = ("lightgcn_content", "motorec")


def _state(module):
    return {k: v for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("name", NAMES)
def test_parts_train_exactly_as_their_models_alone_and_score_their_items(ds, name):
    seed = 4
    over = dict(cold_calibration=0.0, lambda_reg=3e-4)
    torch.manual_seed(seed)
    dec = build_model(ds, small_config(name, **over), wrappers=WrapperConfig(ensemble=1, decoupled=True))
    after = torch.get_rng_state()
    assert isinstance(dec, Decoupled) and unwrap(dec) is dec.cold_model
    torch.manual_seed(seed)
    cold = build_model(ds, small_config(name, **over))
    assert torch.equal(torch.get_rng_state(), after)  # building the warm part leaves the global stream alone
    torch.manual_seed(seed + WARM_SEED_OFFSET)
    warm = build_model(ds, model_config("lightgcn", dim=16, lambda_reg=3e-4))
    assert dec.warm_model.config == warm.config
    for part, ref in ((dec.cold_model, cold), (dec.warm_model, warm)):
        a, b = _state(part), _state(ref)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    opts = [make_optimizer(m, lr=1e-2) for m in (dec, cold, warm)]
    for step in range(3):
        for m in (dec, cold, warm):
            m.train()
            if step == 0:
                m.on_epoch_start(0)
        b = make_batch(ds, seed=step)
        torch.manual_seed(100 + step)
        loss, parts = dec.loss(b)
        torch.manual_seed(100 + step)
        lc, pc = cold.loss(b)
        lw, pw = warm.loss(b)
        assert torch.equal(parts["bpr"], pc["bpr"]) and torch.equal(parts["warm_bpr"], pw["bpr"])
        assert torch.equal(parts["warm_reg"], pw["reg"])
        for opt, lo in zip(opts, (loss, lc, lw)):
            opt.zero_grad()
            lo.backward()
            opt.step()
    for part, ref in ((dec.cold_model, cold), (dec.warm_model, warm)):
        a, b = _state(part), _state(ref)
        moved = False
        for k in a:
            assert torch.equal(a[k], b[k]), k
        moved = any(not torch.equal(a[k], v) for k, v in _state(build_model(ds, part.config)).items() if k in a)
        assert moved
    for m in (dec, cold, warm):
        m.eval()
    users = torch.arange(ds.num_users)
    s, sc, sw = dec.score(users), cold.score(users), warm.score(users)
    w = dec.warm_mask
    torch.testing.assert_close(s[:, w], sw[:, w], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s[:, ~w], sc[:, ~w], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dec.cold_part_scores().score(users), sc, rtol=1e-5, atol=1e-6)


def test_decoupled_takes_feature_models_and_composes_with_the_ensemble(ds):
    torch.manual_seed(0)
    lightgcn = build_model(ds, small_config("lightgcn"))
    assert wrap(lightgcn, WrapperConfig(ensemble=1, decoupled=True)) is lightgcn  # an ID model has no cold part to decouple
    with pytest.raises(ValueError, match="the cold part must score cold items from features"):
        Decoupled(lightgcn, lightgcn)
    content = build_model(ds, small_config("content"))
    small = build_model(ds.__class__(num_users=ds.num_users, num_items=ds.num_items - 1, train=ds.train[
        ds.train[:, 1] < ds.num_items - 1], valid=ds.valid[:0], test=ds.test[:0],
        features={k: f[:-1] for k, f in ds.features.items()}, name="smaller"), small_config("lightgcn"))
    with pytest.raises(ValueError, match="share a catalog"):
        Decoupled(small, content)
    both = wrap(build_model(ds, small_config("motorec")), WrapperConfig(ensemble=3, decoupled=True))
    assert isinstance(both, Decoupled) and isinstance(both.cold_model, SnapshotEnsemble)
    assert unwrap(both) is both.cold_model.model
    assert isinstance(both.selection("warm_cold_mean", lambda v: 0.0, "recall@20"), PartsSelection)
    assert type(both.selection("warm", lambda v: 0.0, "recall@20")) is Selection


@pytest.mark.parametrize("ensemble", [1, 3])
def test_with_new_items_scores_new_items_by_the_cold_part(ds, ensemble):
    torch.manual_seed(0)
    dec = build_model(ds, small_config("motorec", item_item=False),
                      wrappers=WrapperConfig(ensemble=ensemble, decoupled=True))
    dec.train()
    for e in range(3):
        dec.on_epoch_start(e)
    dec.eval()
    users = torch.arange(ds.num_users)
    before = dec.score(users).clone()
    new = {k: torch.randn(3, f.shape[1]) for k, f in ds.features.items()}
    rng = torch.get_rng_state()
    grown = dec.with_new_items(new)
    assert torch.equal(torch.get_rng_state(), rng), "with_new_items draws from the caller's random stream"
    assert isinstance(grown, Decoupled) and grown.num_items == ds.num_items + 3 and not grown.training
    s = grown.score(users)
    cold_part = grown.cold_part_scores().score(users)
    torch.testing.assert_close(s[:, ds.num_items:], cold_part[:, ds.num_items:])
    w = dec.warm_mask
    torch.testing.assert_close(s[:, :ds.num_items][:, w], before[:, w])  # the warm part's scores are unchanged


# ---------------------------------------------------------------------------------------------- with the trainer
def _cfg(name, epochs, ensemble=1, **train):
    return Config().replace(model={"name": name, "dim": 16}, **{name: {k: v for k, v in SMALL[name].items()
                                                                       if k != "dim"}},
                            wrappers={"ensemble": ensemble, "decoupled": True},
                            train={"epochs": epochs, "pretrain_epochs": 1, "batch_size": 256, "patience": 0,
                                   "lr": 1e-2, **train})


def _parts(state, prefix):
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def _same(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{k}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("name,ensemble,epochs", [("lightgcn_content", 1, 8), ("motorec", 3, 5)])
def test_trainer_selects_each_part_at_its_own_best_epoch_and_resumes(ds, tmp_path, name, ensemble, epochs):
    full = Trainer(_cfg(name, epochs, ensemble), ds, checkpoint_dir=tmp_path / "a", quiet=True)
    r = full.fit()
    pre = 1 if name == "motorec" else 0
    rows = [h for h in r["history"] if "select_score" in h]
    sel = r["selected_epochs"]
    warm = [h["valid_warm_recall@20"] for h in rows]
    own = [(h["valid_cold_recall@20"] + h["valid_cold_part_warm_recall@20"]) / 2 for h in rows]
    assert sel == {"warm": rows[warm.index(max(warm))]["epoch"], "cold": rows[own.index(max(own))]["epoch"]}
    if name == "lightgcn_content":  # on this data the parts peak apart, so the merge of two epochs is exercised
        assert sel["warm"] != sel["cold"]
    assert r["best_epoch"] == max(sel.values())
    cold_row = next(h for h in rows if h["epoch"] == sel["cold"])
    assert r["valid"]["warm"]["recall@20"] == pytest.approx(max(warm), abs=1e-9)
    assert r["valid"]["cold"]["recall@20"] == pytest.approx(cold_row["valid_cold_recall@20"], abs=1e-9)
    restored = full.model.state_dict()
    # each part's weights are its own at its epoch: the last weights of a run stopped there
    for part, prefix in (("warm", "warm_model."), ("cold", "cold_model.")):
        stop = tmp_path / f"stop-{part}"
        Trainer(_cfg(name, sel[part] - pre + 1, ensemble), ds, checkpoint_dir=stop, quiet=True).fit()
        _same(_parts(restored, prefix), _parts(load_checkpoint(stop / "last.pt")["model"], prefix), part)
    # checkpoint + resume: the same selection and the same restored model
    Trainer(_cfg(name, epochs // 2, ensemble), ds, checkpoint_dir=tmp_path / "b", quiet=True).fit()
    resumed = Trainer(_cfg(name, epochs, ensemble), ds, checkpoint_dir=tmp_path / "b", quiet=True)
    rb = resumed.fit(resume=True)
    assert rb["selected_epochs"] == sel and rb["best_epoch"] == r["best_epoch"]
    _same(resumed.model.state_dict(), restored, "restored")
    for split in ("valid", "test"):
        assert rb[split] == r[split]
    if name == "lightgcn_content":  # another rule selects the model as a whole
        assert Trainer(_cfg(name, 2, ensemble, select="warm"), ds, quiet=True).fit()["selected_epochs"] is None


def test_the_wrappers_leave_the_models_training_as_it_was(ds):
    """``wrappers: {ensemble: W, decoupled: true}`` around MoToRec (the configuration that reproduces the model's
    former default, ``warm_scorer: id, cold_ensemble: W``): every loss term of the model, every epoch, equals that
    of the unwrapped model under the same seed; the warm part adds its own terms beside them."""
    wrapped = Trainer(_cfg("motorec", 4, ensemble=3), ds, quiet=True).fit()
    plain = Trainer(_cfg("motorec", 4).replace(wrappers={"decoupled": False}), ds, quiet=True).fit()
    keys = ("bpr", "bpr_cold", "cl", "rq", "sparse", "reg")
    for a, b in zip(wrapped["history"], plain["history"]):
        for k in keys:
            if k in b:
                assert a[k] == b[k], (a["epoch"], k)
        if a["stage"] == "joint":
            assert a["warm_bpr"] > 0 and "warm_bpr" not in b
    assert len(wrapped["history"]) == len(plain["history"]) == 5
