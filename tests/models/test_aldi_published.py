"""``aldi_published`` (``motorec/models/aldi_published.py``): ALDI's published form: a LightGCN teacher trained
alone and then frozen, a content student and a user mapper distilled from it, the teacher kept at its best
validation warm recall and the student selected on validation cold recall."""
from __future__ import annotations

import pytest
import torch
from _coldstart_checks import (
    WRAPPERS,
    build,
    check_feature_scoring,
    check_no_host_sync,
    check_state_round_trip,
    check_trainer,
    grads_after_one_step,
    train_epochs,
)

from motorec.config import ConfigError, model_config
from motorec.models.aldi_published import TeacherStudentSelection

OWN = {"hidden": 32, "teacher_epochs": 2}


def _perturb(model, item):
    with torch.no_grad():
        for m in model.item_features.modalities:
            model.item_features[m][item] += 0.5


def test_each_stage_lowers_its_loss():
    m = build("aldi_published", OWN)
    parts = train_epochs(m, 4)
    assert "bpr" in parts[0] and "student_supervised" not in parts[0]
    assert "bpr" not in parts[2] and "student_supervised" in parts[2]
    assert parts[1]["total"] < parts[0]["total"]
    assert parts[3]["total"] < parts[2]["total"]


def test_teacher_stage_trains_the_teacher_alone_then_it_is_frozen():
    m = build("aldi_published", OWN)
    m.on_epoch_start(0)
    g = grads_after_one_step(m)
    assert g["lightgcn.user_embedding.weight"] and g["lightgcn.item_embedding.weight"]
    assert not any(v for k, v in g.items() if k.startswith(("student.", "mapper.")))
    m.on_epoch_start(2)
    before = [p.detach().clone() for p in m.lightgcn.parameters()]
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    g = grads_after_one_step(m)
    opt.step()
    assert not g["lightgcn.user_embedding.weight"] and not g["lightgcn.item_embedding.weight"]
    assert g["student.mlps.image.0.weight"] and g["mapper.0.weight"]
    assert all(torch.equal(a, b) for a, b in zip(before, m.lightgcn.parameters()))


def test_kept_teacher_is_restored_when_frozen():
    m = build("aldi_published", OWN)
    m.on_epoch_start(0)
    m.keep_teacher()
    kept = m.item_emb.detach().clone()
    with torch.no_grad():
        m.item_emb.add_(1.0)
    m.on_epoch_start(1)  # still the teacher stage: nothing restored
    assert not torch.equal(m.item_emb.detach(), kept)
    m.on_epoch_start(2)
    assert torch.equal(m.item_emb.detach(), kept)


def test_published_selection_keeps_teacher_on_warm_and_selects_student_on_cold():
    kept = []
    sel = TeacherStudentSelection(lambda v: 0.5 * (v["warm"]["r"] + v["cold"]["r"]), "r", 2, lambda: kept.append(1))
    m = build("aldi_published", OWN)
    assert isinstance(m.selection("warm_cold_mean", lambda v: 0.0, "r"), TeacherStudentSelection)

    def valid(w, c):
        return {"warm": {"r": w, "num_users": 5}, "cold": {"r": c, "num_users": 5}}

    snap = lambda: {"x": 1}  # noqa: E731
    kw = dict(snapshot=snap, evaluate=None)
    assert sel.update(epoch=0, valid=valid(0.2, 0.0), row={}, **kw) and kept == [1]
    assert sel.update(epoch=1, valid=valid(0.1, 0.9), row={}, **kw) and kept == [1]  # worse teacher: not kept
    assert sel.best_epoch == -1 and sel.teacher_epoch == 0
    assert sel.update(epoch=2, valid=valid(0.1, 0.1), row={}, **kw) and sel.best_epoch == 2
    assert not sel.update(epoch=3, valid=valid(0.0, 0.2), row={}, **kw)  # mean 0.1, not above 0.1
    # the model's published rule reads validation cold recall alone
    pub = m.selection("warm_cold_mean", lambda v: 0.0, "r")
    pub.update(epoch=2, valid=valid(0.5, 0.1), row={}, **kw)
    assert not pub.update(epoch=3, valid=valid(0.9, 0.05), row={}, **kw)
    assert pub.update(epoch=4, valid=valid(0.0, 0.2), row={}, **kw)
    state = pub.state_dict()
    again = m.selection("warm_cold_mean", lambda v: 0.0, "r")
    again.load_state_dict(state)
    assert (again.best_epoch, again.teacher_epoch) == (4, pub.teacher_epoch)


def test_cold_items_by_mapper_and_student_warm_items_by_teacher():
    m = build("aldi_published", OWN)
    train_epochs(m, 3)
    m.eval()
    with torch.no_grad():
        tu, ti = m.teacher_embeddings()
        s = m.score(torch.arange(6))
        cold = m.cold_items
        warm = m.warm_mask
        assert torch.allclose(s[:, warm], tu[:6] @ ti[warm].t(), atol=1e-5)
        assert torch.allclose(s[:, cold], m.mapper(tu[:6]) @ m.student_embeddings(cold).t(), atol=1e-5)
    check_feature_scoring(m, _perturb, warm_from_features=False)


def test_state_dict_round_trip_keeps_the_kept_teacher():
    m = build("aldi_published", OWN)
    m.keep_teacher()
    assert {"kept_user", "kept_item", "kept"} <= set(m.state_dict())
    check_state_round_trip("aldi_published", OWN)


@pytest.mark.parametrize("wrapped", [False, True])
def test_trainer_fit(wrapped):
    r = check_trainer("aldi_published", {**OWN, "teacher_epochs": 1}, wrapped)
    if not wrapped:  # the published rule: the student is selected in its stage
        assert r["best_epoch"] == 1
        assert r["history"][0].get("teacher_stage") == 1


@pytest.mark.parametrize("wrappers", [None, WRAPPERS], ids=["plain", "wrapped"])
@pytest.mark.parametrize("teacher_epochs", [0, 1], ids=["student-stage", "teacher-stage"])
def test_step_has_no_host_sync(wrappers, teacher_epochs):
    check_no_host_sync("aldi_published", {**OWN, "teacher_epochs": teacher_epochs}, wrappers)


def test_bad_config_named():
    with pytest.raises(ConfigError, match="aldi_published.selection"):
        model_config("aldi_published", selection="cold")
    with pytest.raises(ConfigError, match="aldi_published.teacher_epochs"):
        model_config("aldi_published", teacher_epochs=-1)
    with pytest.raises(ConfigError, match="aldi_published.alpha"):
        model_config("aldi_published", alpha=-1.0)
