"""Checkpoint selection strategies (``motorec/models/selection.py``) on hand-made validation results:
``Selection`` keeps the state of the best score; ``PartsSelection`` keeps the warm part at its best warm recall
and the cold part at its best own ``warm_cold_mean``, merges them, falls back to the common rule without users
in both settings, and travels through its ``state_dict``."""
from __future__ import annotations

import pytest

from motorec.models.selection import PartsSelection, Selection

M = "recall@20"


def _valid(warm, cold, users=(5, 5)):
    return {"warm": {M: warm, "num_users": users[0]}, "cold": {M: cold, "num_users": users[1]},
            "hybrid": {M: (warm + cold) / 2, "num_users": 5}}


def _mean(v):
    return (v["warm"][M] + v["cold"][M]) / 2


def test_selection_keeps_the_first_best_state():
    sel = Selection(_mean)
    out = []
    for epoch, (w, c) in enumerate([(0.1, 0.1), (0.3, 0.1), (0.2, 0.2), (0.1, 0.2)]):
        out.append(sel.update(epoch=epoch, valid=_valid(w, c), snapshot=lambda e=epoch: {"w": e},
                              evaluate=None, row={}))
    assert out == [True, True, False, False]
    assert (sel.best_epoch, sel.best_state, sel.best) == (1, {"w": 1}, pytest.approx(0.2))
    assert sel.summary() is None and sel.describe() == []
    back = Selection(_mean)
    back.load_state_dict(sel.state_dict())
    assert (back.best, back.best_epoch, back.best_state) == (sel.best, sel.best_epoch, sel.best_state)
    with pytest.raises(ValueError, match="this run uses PartsSelection"):
        _parts().load_state_dict(sel.state_dict())


class _Scorer:
    """Stands for the cold part's scorer: the trainer's ``evaluate`` reads its ``own`` warm recall."""

    def __init__(self, own):
        self.own = own


def _parts(own_warm=None):
    own_warm = own_warm if own_warm is not None else [0.0]
    state = {"i": 0}

    def cold_scorer():
        return _Scorer(own_warm[state["i"]])

    sel = PartsSelection(_mean, M, cold_scorer=cold_scorer, warm_keys=lambda k: k.startswith("warm."),
                         merge=lambda w, c: {**c, **{k: v for k, v in w.items() if k.startswith("warm.")}})
    sel._state = state
    return sel


def test_parts_selection_keeps_each_part_at_its_own_best_epoch():
    # per epoch: valid warm recall (warm part), valid cold recall and the cold part's own warm recall
    warm = [0.10, 0.30, 0.20, 0.25, 0.15]
    cold = [0.10, 0.05, 0.30, 0.10, 0.40]
    own = [0.10, 0.10, 0.20, 0.10, 0.05]  # cold part's own warm_cold_mean: .10 .075 .25 .10 .225
    sel = _parts(own)
    rows, improved = [], []
    for epoch in range(5):
        sel._state["i"] = epoch
        row = {}
        improved.append(sel.update(epoch=epoch, valid=_valid(warm[epoch], cold[epoch]),
                                   snapshot=lambda e=epoch: {"warm.w": e, "cold.w": e},
                                   evaluate=lambda scorer: {"warm": {M: scorer.own}}, row=row))
        rows.append(row)
    assert [r[f"valid_cold_part_warm_{M}"] for r in rows] == own
    assert improved == [True, True, True, False, False]
    assert sel.summary() == {"warm": 1, "cold": 2}
    assert sel.best_state == {"warm.w": 1, "cold.w": 2}
    assert sel.best == pytest.approx((0.30 + 0.30) / 2) and sel.best_epoch == 2
    assert sel.parts["warm"]["state"] == {"warm.w": 1}  # the warm part keeps its own keys only
    phrases = sel.describe()
    assert "warm part selected at epoch 1" in phrases[0] and "cold part at epoch 2" in phrases[1]
    # the state travels: a resumed selection goes on as the uninterrupted one
    back = _parts(own)
    state = sel.state_dict()
    assert state["best_state"] is None  # merged from the parts on load, not stored twice
    back.load_state_dict(state)
    assert back.best_state == sel.best_state and back.summary() == sel.summary() and back.best == sel.best


def test_parts_selection_falls_back_to_the_common_rule_without_users_in_both_settings():
    sel = _parts()
    calls = []
    assert sel.update(epoch=0, valid=_valid(0.2, 0.0, users=(5, 0)), snapshot=lambda: {"warm.w": 0},
                      evaluate=lambda s: calls.append(1), row={})
    assert not calls and sel.summary() is None and sel.best_state == {"warm.w": 0} and sel.best == 0.1
