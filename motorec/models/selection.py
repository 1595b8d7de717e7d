"""Checkpoint selection strategies: which validated epoch's weights a run keeps and restores.

The trainer asks the model for its strategy (:meth:`motorec.models.base.Recommender.selection`) and, after each
validation, calls :meth:`Selection.update`; it stops early once ``update`` has returned ``False`` for
``train.patience`` validations in a row (the same count for every strategy), and restores
:attr:`Selection.best_state` at the end. The strategy's own state (:meth:`Selection.state_dict`) travels in the
checkpoint, so a resumed run selects as an uninterrupted one.

* :class:`Selection` (every model): one state, kept at the best value of the run's rule (``train.select``).
* :class:`PartsSelection` (a model made of a warm part and a cold part scored apart,
  :class:`~motorec.models.decoupled.Decoupled`, under ``warm_cold_mean``): each part kept at its own best epoch.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

__all__ = ["Selection", "PartsSelection"]

Metrics = Dict[str, Dict[str, Any]]


class Selection:
    """Keeps the state of the validation with the highest ``score(valid)``.

    Args:
        score: the number selection maximizes, from the validation metrics (``train.select``'s rule).
    """

    def __init__(self, score: Callable[[Metrics], float]) -> None:
        self.score = score
        self.best, self.best_epoch = -1.0, -1
        self.best_state: Optional[Dict[str, Any]] = None

    def update(self, *, epoch: int, valid: Metrics, snapshot: Callable[[], Dict[str, Any]],
               evaluate: Callable[[Callable], Metrics], row: Dict[str, Any]) -> bool:
        """Take one validation into account; ``True`` when it improved the selected model.

        Args:
            epoch: the epoch just validated. valid: its validation metrics.
            snapshot: a copy of the model's current ``state_dict``. evaluate: validation metrics of a score
                function (for a strategy that scores a part on its own). row: the epoch's log row (a strategy
                may add values).
        """
        v = self.score(valid)
        if v <= self.best:
            return False
        self.best, self.best_epoch, self.best_state = v, epoch, snapshot()
        return True

    def summary(self) -> Optional[Dict[str, int]]:
        """The epoch each part was selected at (``None``: one state for the whole model)."""
        return None

    def describe(self) -> List[str]:
        """Phrases for the run's log about what was selected beyond the best epoch (none here)."""
        return []

    def state_dict(self) -> Dict[str, Any]:
        return {"kind": type(self).__name__, "best": self.best, "best_epoch": self.best_epoch,
                "best_state": self.best_state}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("kind") != type(self).__name__:
            raise ValueError(f"the checkpoint's selection state is a {state.get('kind')!r}, this run uses "
                             f"{type(self).__name__}")
        self.best, self.best_epoch, self.best_state = state["best"], state["best_epoch"], state["best_state"]


class PartsSelection(Selection):
    """Selection of a model whose warm items are scored by one part and cold items by another, under
    ``warm_cold_mean``: the mean of two separable terms is maximized term by term.

    The warm part keeps the epoch of its best validation warm ``metric``. The cold part keeps the epoch of its
    best own ``warm_cold_mean``: the mean of its validation cold ``metric`` and the warm ``metric`` of its own
    scores of warm items (``cold_scorer()``, one more ranking pass), the rule a model scoring both settings is
    selected by; cold recall alone would pick the epoch on the noise of a few hundred validation cold items.
    The selected score is the merged model's ``warm_cold_mean``: the warm part's warm recall and the cold part's
    cold recall. Improved: either part improved. A validation without users in both settings falls back to
    ``fallback`` (the common rule).

    Args:
        score: the common rule (used when a setting has no validation users).
        metric: the metric key, e.g. ``"recall@20"``.
        cold_scorer: a scorer (``.score``, ``.ranking_parts``) of every item by the cold part's current weights.
        merge: ``(warm_state, cold_state) -> state``: the model state whose warm scores are ``warm_state``'s and
            cold scores ``cold_state``'s.
        warm_keys: the state keys the warm part owns (all the merge reads of a warm state).
    """

    def __init__(self, score: Callable[[Metrics], float], metric: str, *, cold_scorer: Callable[[], Any],
                 merge: Callable[[Dict[str, Any], Dict[str, Any]], Dict[str, Any]],
                 warm_keys: Callable[[str], bool]) -> None:
        super().__init__(score)
        self.metric, self.cold_scorer, self.merge, self.warm_keys = metric, cold_scorer, merge, warm_keys
        self.parts: Dict[str, Dict[str, Any]] = {p: {"score": -1.0, "epoch": -1, "state": None}
                                                 for p in ("warm", "cold")}

    def update(self, *, epoch: int, valid: Metrics, snapshot: Callable[[], Dict[str, Any]],
               evaluate: Callable[[Callable], Metrics], row: Dict[str, Any]) -> bool:
        if not (valid["warm"].get("num_users") and valid["cold"].get("num_users")):
            return super().update(epoch=epoch, valid=valid, snapshot=snapshot, evaluate=evaluate, row=row)
        m = self.metric
        cold = valid["cold"][m]
        own_warm = evaluate(self.cold_scorer())["warm"][m]
        row[f"valid_cold_part_warm_{m}"] = own_warm
        improved, snap = False, None
        for part, v in (("warm", valid["warm"][m]), ("cold", 0.5 * (own_warm + cold))):
            if v > self.parts[part]["score"]:
                snap = snap or snapshot()
                kept = {k: t for k, t in snap.items() if self.warm_keys(k)} if part == "warm" else snap
                self.parts[part] = {"score": v, "epoch": epoch, "state": kept,
                                    **({"cold": cold} if part == "cold" else {})}
                improved = True
        if improved:
            self.best = 0.5 * (self.parts["warm"]["score"] + self.parts["cold"]["cold"])
            self.best_epoch = epoch
            self.best_state = self.merge(self.parts["warm"]["state"], self.parts["cold"]["state"])
        return improved

    def summary(self) -> Optional[Dict[str, int]]:
        if self.parts["warm"]["epoch"] < 0:
            return None
        return {p: self.parts[p]["epoch"] for p in ("warm", "cold")}

    def describe(self) -> List[str]:
        """One log phrase per part: its epoch and validation score."""
        if self.summary() is None:
            return []
        w, c = self.parts["warm"], self.parts["cold"]
        return [f"warm part selected at epoch {w['epoch']} (valid warm {self.metric} {w['score']:.4f})",
                f"cold part at epoch {c['epoch']} (valid cold {self.metric} {c['cold']:.4f}; its own warm_cold_mean "
                f"{c['score']:.4f})"]

    def state_dict(self) -> Dict[str, Any]:
        # a best_state merged from the parts is not stored twice
        merged = self.summary() is not None
        return {**super().state_dict(), "best_state": None if merged else self.best_state, "parts": self.parts}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.parts = state["parts"]
        if self.parts["warm"]["state"] is not None and self.parts["cold"]["state"] is not None:
            self.best_state = self.merge(self.parts["warm"]["state"], self.parts["cold"]["state"])
