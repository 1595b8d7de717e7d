"""``SnapshotEnsemble`` (``motorec/models/ensemble.py``) around LightGCN-with-features and MoToRec: cold items
scored by the mean of the standardized scores of the current weights and the last ``size - 1`` epochs' weights
(checked against scores computed by hand from copies of the model, standardized over the full score matrix in
float64), warm items by the current weights; snapshots taken at each epoch start >= 1, at most ``size - 1``
kept, holding only [U, d] and [num_cold, d] tensors; state_dict round trip; training unchanged."""
from __future__ import annotations

import copy
import io

import pytest
import torch
from _model_helpers import SMALL, cold_last, make_batch, make_model

from motorec.config import Config, WrapperConfig
from motorec.models import SnapshotEnsemble, unwrap, wrap
from motorec.models.ensemble import standardized
from motorec.models.selection import Selection
from motorec.train import Trainer, load_checkpoint

NAMES = ("lightgcn_content", "motorec")
OVER = {"lightgcn_content": {"cold_calibration": 0.0}, "motorec": {"cold_calibration": 0.0}}


def _full_scores(model) -> torch.Tensor:
    """[U, I] float64 scores of an unwrapped model's eval embeddings."""
    model.eval()
    with torch.no_grad():
        u, i = model.embeddings()
    return u.double() @ i.double().t()


def _standardized(s: torch.Tensor) -> torch.Tensor:
    return s / s.std(unbiased=False)


def _trained_ensemble(ds, name, size=3, epochs=4, **over):
    """An ensemble of ``size`` around ``name`` after ``epochs`` epoch starts with two Adam steps each, and a copy
    of the inner model at every epoch start (before the ensemble's own ``on_epoch_start``: the weights a
    snapshot takes)."""
    ens = make_model(ds, name, wrappers=WrapperConfig(ensemble=size, decoupled=False), **{**OVER[name], **over})
    assert isinstance(ens, SnapshotEnsemble) and ens.size == size
    opt = torch.optim.Adam(ens.parameters(), lr=1e-2)
    copies = {}
    for e in range(epochs):
        ens.train()
        copies[e] = copy.deepcopy(ens.model)
        ens.on_epoch_start(e)
        for s in range(2):
            loss, _ = ens.loss(make_batch(ds, seed=10 * e + s))
            opt.zero_grad()
            loss.backward()
            opt.step()
    ens.eval()
    return ens, copies


@pytest.mark.parametrize("name", NAMES)
def test_cold_scores_are_the_mean_of_standardized_scores_and_warm_scores_the_current_models(ds, name):
    ens, copies = _trained_ensemble(ds, name, size=3, epochs=4)
    assert [m["epoch"] for m in ens.members] == [1, 2]  # the ends of epochs 1 and 2; epoch 3 is the current one
    current = _full_scores(copy.deepcopy(ens.model))
    # snapshot k (taken at the start of epoch k + 1) holds the weights of the copy made then
    parts = [current] + [_full_scores(copies[m["epoch"] + 1]) for m in ens.members]
    assert not torch.allclose(parts[0], parts[1])  # the weights moved between epochs
    expect = sum(_standardized(s) for s in parts) / len(parts)
    got = ens.score(torch.arange(ds.num_users)).double()
    cold = ~ens.warm_mask
    torch.testing.assert_close(got[:, cold], expect[:, cold], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[:, ~cold], _standardized(current)[:, ~cold], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got[:, cold], _standardized(current)[:, cold], rtol=1e-3, atol=1e-4)
    # a few users' scores are the same rows
    some = torch.tensor([3, 0, 17])
    torch.testing.assert_close(ens.score(some), got[some].float())
    # training mode: the model's own embeddings and loss
    ens.train()
    u, i = ens.embeddings()
    uu, ii = ens.model.embeddings()
    assert torch.equal(u, uu) and torch.equal(i, ii)
    b = make_batch(ds, seed=5)
    torch.manual_seed(3)
    la, _ = ens.loss(b)
    torch.manual_seed(3)
    lb, _ = ens.model.loss(b)
    assert torch.equal(la, lb)


@pytest.mark.parametrize("name", NAMES)
def test_snapshots_are_taken_at_epoch_starts_and_hold_only_what_cold_scoring_needs(ds, name):
    ens, _ = _trained_ensemble(ds, name, size=3, epochs=1)
    assert ens.members == []  # epoch 0's start: nothing trained yet
    ens.eval()
    users = torch.arange(ds.num_users)
    # no snapshot yet: the model's own scores
    torch.testing.assert_close(ens.score(users).double(), _full_scores(copy.deepcopy(ens.model)), rtol=1e-5, atol=1e-5)
    ens, _ = _trained_ensemble(ds, name, size=3, epochs=6)
    assert [m["epoch"] for m in ens.members] == [3, 4]  # at most size - 1, the newest kept
    d, num_cold = ens.config.dim, int((~ens.warm_mask).sum())
    assert torch.equal(ens.items, torch.nonzero(~ens.warm_mask).flatten())
    for m in ens.members:
        assert set(m) == {"epoch", "users", "items"}
        assert m["users"].shape == (ds.num_users, d) and m["items"].shape == (num_cold, d)
        # own storage of exactly that size: not a view of a whole table
        for t in (m["users"], m["items"]):
            assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
    with pytest.raises(ValueError, match="size must be an integer >= 2"):
        SnapshotEnsemble(unwrap(ens), 1)
    with pytest.raises(ValueError, match="items must be a 1-d int64"):
        SnapshotEnsemble(unwrap(ens), 2, torch.tensor([1.0]))
    assert wrap(unwrap(ens), WrapperConfig(ensemble=1, decoupled=False)) is unwrap(ens)  # 1: no ensemble


@pytest.mark.parametrize("name", NAMES)
def test_a_snapshot_reuses_the_validation_at_the_same_weights_and_nothing_else(ds, name, monkeypatch):
    ens, _ = _trained_ensemble(ds, name, size=3, epochs=2)
    calls = []
    inner = ens.model.embeddings
    monkeypatch.setattr(ens.model, "embeddings", lambda: calls.append(1) or inner())

    def step(seed):
        opt = torch.optim.SGD(ens.parameters(), lr=1e-2)
        loss, _ = ens.loss(make_batch(ds, seed=seed))
        opt.zero_grad()
        loss.backward()
        opt.step()

    def fresh_member():  # the snapshot computed from the current weights, as without reuse
        with torch.no_grad(), ens.model.eval_mode():
            u, i = inner()
        return standardized(u, i)[0], i.index_select(0, ens.items)

    # validation at the end of epoch 2, then epoch 3's start at the same weights: the snapshot is the validation's
    ens.eval()
    ens.score(torch.arange(4))
    want = fresh_member()
    calls.clear()
    ens.train()
    ens.on_epoch_start(3)
    assert calls == [] and ens.members[-1]["epoch"] == 2
    torch.testing.assert_close(ens.members[-1]["users"], want[0], rtol=0, atol=0)
    torch.testing.assert_close(ens.members[-1]["items"], want[1], rtol=0, atol=0)
    # a step after validation moves the weights: the snapshot is computed again, from the new weights
    for moved in ("step", "loss", "load_state_dict"):
        ens.eval()
        ens.score(torch.arange(4))
        ens.train()
        if moved == "step":
            step(7)
        elif moved == "loss":  # a training forward alone (EMA codebooks move through .data)
            ens.loss(make_batch(ds, seed=8))
        else:
            ens.load_state_dict(ens.state_dict())
        want = fresh_member()
        calls.clear()
        ens.on_epoch_start(4)
        assert calls == [1], moved
        torch.testing.assert_close(ens.members[-1]["users"], want[0])
        torch.testing.assert_close(ens.members[-1]["items"], want[1])
    # kept once: a second epoch start without a validation between computes its own
    ens.on_epoch_start(5)
    assert calls == [1, 1]


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_and_bad_state_refused(ds, name):
    ens, _ = _trained_ensemble(ds, name, size=3, epochs=4)
    buf = io.BytesIO()
    torch.save(ens.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    other = make_model(ds, name, seed=9, wrappers=WrapperConfig(ensemble=3, decoupled=False), **OVER[name])
    other.load_state_dict(state)
    other.eval()
    assert [m["epoch"] for m in other.members] == [1, 2]
    users = torch.arange(ds.num_users)
    assert torch.equal(other.score(users), ens.score(users))
    extra = state["_extra_state"]
    small = make_model(ds, name, wrappers=WrapperConfig(ensemble=2, decoupled=False), **OVER[name])
    with pytest.raises(ValueError, match="holds 2 snapshots, this ensemble keeps 1"):
        small.set_extra_state(extra)
    with pytest.raises(ValueError, match="averages other items"):
        other.set_extra_state({**extra, "items": extra["items"][:-1]})
    bad = [{**extra["members"][0], "users": extra["members"][0]["users"][:-1]}]
    with pytest.raises(ValueError, match="has 119 users"):
        other.set_extra_state({**extra, "members": bad})
    with pytest.raises(ValueError, match="must be"):
        other.set_extra_state({"items": extra["items"], "members": [{"epoch": "x"}]})


def test_calibration_applies_once_to_the_ensembles_cold_scores(ds):
    """The ensemble calibrates its own scores with the wrapped model's setting (MoToRec's default: on)."""
    ens, _ = _trained_ensemble(ds, "motorec", size=3, epochs=3, cold_calibration=None)
    assert ens.cold is not None and ens.cold.strength() == 1.0
    users = torch.arange(ds.num_users)
    u, i = ens.user_embeddings(), ens.item_embeddings()
    raw = (u.double() @ i.double().t())
    cold = ~ens.warm_mask
    w, c = raw[:, ~cold], raw[:, cold]
    expect = (c - c.mean()) / c.std(unbiased=False) * w.std(unbiased=False) + w.mean()
    s = ens.score(users).double()
    torch.testing.assert_close(s[:, cold], expect, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s[:, ~cold], w, rtol=1e-5, atol=1e-5)


def test_with_new_items_scores_new_items_by_the_current_weights(ds):
    full, trunc, n_warm = cold_last(ds)
    ens, _ = _trained_ensemble(full, "motorec", size=3, epochs=3, item_item=False)
    members = [m["epoch"] for m in ens.members]
    assert members == [0, 1]
    new = {k: torch.randn(4, f.shape[1]) for k, f in full.features.items()}
    rng = torch.get_rng_state()
    grown = ens.with_new_items(new)
    assert torch.equal(torch.get_rng_state(), rng)
    assert isinstance(grown, SnapshotEnsemble) and not grown.training and grown.num_items == full.num_items + 4
    assert [m["epoch"] for m in grown.members] == members and torch.equal(grown.items, ens.items)
    scores = grown.score(torch.arange(full.num_users)).double()
    own = _standardized(_full_scores(copy.deepcopy(grown.model)))
    torch.testing.assert_close(scores[:, full.num_items:], own[:, full.num_items:], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------- with the trainer
def _cfg(name, epochs, ensemble):
    own = {k: v for k, v in SMALL[name].items() if k != "dim"}
    return Config().replace(model={"name": name, "dim": 16, "cold_calibration": 0.0}, **{name: own},
                            wrappers={"ensemble": ensemble, "decoupled": False},
                            train={"epochs": epochs, "pretrain_epochs": 1, "batch_size": 256, "patience": 0,
                                   "lr": 1e-2})


@pytest.mark.parametrize("name,epochs", [("lightgcn_content", 5), ("motorec", 4)])
def test_trainer_trains_as_without_the_ensemble_and_resumes_to_the_same_scores(ds, tmp_path, name, epochs):
    """The ensemble changes how the trained model scores, not how it trains: every epoch's loss is the unwrapped
    model's under the same seed; the checkpoint holds the last ``size - 1`` snapshots; a run interrupted and
    resumed restores the same model (snapshots included) and reports the same metrics."""
    full = Trainer(_cfg(name, epochs, 3), ds, checkpoint_dir=tmp_path / "a", quiet=True)
    r = full.fit()
    plain = Trainer(_cfg(name, epochs, 1), ds, quiet=True).fit()
    assert [h.get("loss") for h in r["history"]] == [h.get("loss") for h in plain["history"]]
    pre = 1 if name == "motorec" else 0
    last = load_checkpoint(tmp_path / "a" / "last.pt")
    assert [m["epoch"] for m in last["model"]["_extra_state"]["members"]] == [epochs - 3, epochs - 2]
    best = r["best_epoch"] - pre
    assert [m["epoch"] for m in full.model.members] == [e for e in (best - 2, best - 1) if e >= 0]
    Trainer(_cfg(name, epochs - 2, 3), ds, checkpoint_dir=tmp_path / "b", quiet=True).fit()
    resumed = Trainer(_cfg(name, epochs, 3), ds, checkpoint_dir=tmp_path / "b", quiet=True)
    rb = resumed.fit(resume=True)
    assert rb["best_epoch"] == r["best_epoch"] and rb["valid"] == r["valid"] and rb["test"] == r["test"]
    users = torch.arange(ds.num_users)
    assert torch.equal(resumed.model.eval().score(users), full.model.eval().score(users))


def test_selected_states_share_the_snapshots_instead_of_copying_them(ds):
    """Snapshots are inference tensors (torch refuses to change them in place), so the trainer's copies of the
    state share them: the selected state and the checkpoint hold each snapshot once, whatever ``size``."""
    t = Trainer(_cfg("lightgcn_content", 4, 3), ds, quiet=True)
    t.fit()
    members = t.model.members
    assert members and all(m["users"].is_inference() and m["items"].is_inference() for m in members)
    copied = t._snapshot()["_extra_state"]["members"]
    assert all(a["users"] is b["users"] and a["items"] is b["items"] for a, b in zip(copied, members))
    with pytest.raises(RuntimeError, match="[Ii]nference"):
        members[0]["users"].add_(1.0)
    buf = io.BytesIO()  # they still round-trip through a checkpoint, and load back as inference tensors
    torch.save(t.model.state_dict(), buf)
    buf.seek(0)
    other = copy.deepcopy(t.model)
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert all(m["users"].is_inference() for m in other.members)
    assert all(torch.equal(a["users"], b["users"]) for a, b in zip(other.members, members))


def test_the_ensemble_runs_the_wrapped_models_own_selection(ds):
    """A model with a selection rule of its own (aldi_published's teacher/student rule) keeps it when wrapped in
    the ensemble; a plain model keeps the common rule."""

    def score(valid):
        return 0.0

    for name in ("aldi_published", "lightgcn_content"):
        model = make_model(ds, name)
        own = type(model.selection("warm_cold_mean", score, "recall@20"))
        wrapped = SnapshotEnsemble(model, 3).selection("warm_cold_mean", score, "recall@20")
        assert type(wrapped) is own and isinstance(wrapped, Selection)
    assert own is Selection
