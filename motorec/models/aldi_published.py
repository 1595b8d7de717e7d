"""``aldi_published``: ALDI in its published form (Huang, Wang, Zhou, Chen, Wang and He, "Aligning Distillation
For Cold-start Item Recommendation", SIGIR 2023; the authors' TensorFlow code: github.com/zfnWong/ALDI; ColdRec's
port: github.com/YuanchenBei/ColdRec, ``model/ALDI.py``), beside ``aldi`` (``motorec/models/aldi.py``, the
one-run simplification), whose terms and hyper-parameters it shares.

What the published form adds to ``aldi``:

* A frozen pre-trained teacher. The first ``teacher_epochs`` epochs train the teacher alone (a LightGCN, exactly
  ``lightgcn``: BPR and the L2 penalty); from then on the teacher is frozen (no gradient, no update) and the
  student alone trains against it.
* The user mapper ``f_U``: the student scores ``<f_U(u), s(x_i)>`` with ``f_U`` an MLP on the teacher's user
  embedding, and every alignment term compares the teacher's scores with these. Warm items are scored by the
  teacher (``<u, v_i>``), cold items by the student, so :meth:`ALDIPublishedRec.embeddings` gives
  ``[u, f_U(u)]`` for users and ``[v_i, 0]`` (warm) or ``[0, s(x_i)]`` (cold) for items.
* The published selection (``selection: published``): the teacher is kept at its best validation **warm**
  Recall@20 within its stage and restored when it is frozen; the student is selected on validation **cold**
  Recall@20 (:class:`TeacherStudentSelection`). ``selection: common`` selects the student stage by the run's
  ``train.select`` rule like every joint model, and freezes the teacher as it is at the end of its stage.
  In both, the teacher stage is a stage of its own, like a tokenizer's pre-training: its validations neither
  select the model nor count towards ``train.patience``.

What differs from the authors' code, stated:

* The teacher is trained in the same run, for a fixed ``teacher_epochs`` (the authors train it to convergence
  in another program and load its embeddings); the teacher stage's validations only pick its epoch.
* The student ``s`` is the project's feature MLP (:class:`~motorec.models.features.FeatureEncoder`, LeakyReLU,
  width ``hidden``) and ``f_U`` a one-hidden-layer tanh MLP of the same width, where the authors use tanh +
  batch-norm towers; their L2 penalty is left to ``train.weight_decay`` (the authors: 1e-4).
* One uniform negative per positive from the trainer's sampler; Adam with the run's learning rate.
* Under a wrapper (``wrappers:``), the wrapper's selection applies, not the published one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from motorec.config import ConfigError
from motorec.models.aldi import ALDIConfig, ALDIRec
from motorec.models.base import loss_part
from motorec.models.losses import aldi_distill_losses
from motorec.models.selection import Metrics, Selection

__all__ = ["ALDIPublishedRec", "ALDIPublishedConfig", "TeacherStudentSelection", "SELECTIONS"]

# aldi_published.selection: the published rule (teacher on warm, student on cold validation), or the run's rule
SELECTIONS = ("published", "common")


@dataclass
class ALDIPublishedConfig(ALDIConfig):
    """``aldi_published``'s own hyper-parameters (section ``aldi_published:``): ``aldi``'s, plus the teacher
    stage's length and the selection rule."""

    # epochs that train the teacher alone before it is frozen
    teacher_epochs: int = 50
    # "published": teacher on validation warm recall, student on cold; "common": train.select
    selection: str = "published"

    def check(self) -> None:
        super().check()
        t = self.teacher_epochs
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise ConfigError(f"{self.name}.teacher_epochs must be an integer >= 0, got {t!r}")
        if self.selection not in SELECTIONS:
            raise ConfigError(f"{self.name}.selection must be one of {', '.join(SELECTIONS)}, got {self.selection!r}")


class TeacherStudentSelection(Selection):
    """Selection of a model trained in two stages (module docstring): validations of epochs before
    ``teacher_epochs`` are the teacher stage (with ``keep_teacher``, the teacher's best validation warm
    ``metric`` is kept through it; every such validation counts as an improvement, so patience runs in the
    student stage only); later ones select the model by ``score``.

    Args:
        score: the number the student stage maximizes. metric: the metric key (``"recall@20"``).
        teacher_epochs: the teacher stage's length. keep_teacher: called when the teacher improved (``None``:
            the teacher is not selected).
    """

    def __init__(self, score: Callable[[Metrics], float], metric: str, teacher_epochs: int,
                 keep_teacher: Optional[Callable[[], None]]) -> None:
        super().__init__(score)
        self.metric, self.teacher_epochs, self.keep_teacher = metric, teacher_epochs, keep_teacher
        self.teacher_best, self.teacher_epoch = -1.0, -1

    def update(self, *, epoch: int, valid: Metrics, snapshot: Callable[[], Dict[str, Any]],
               evaluate: Callable[[Callable], Metrics], row: Dict[str, Any]) -> bool:
        if epoch >= self.teacher_epochs:
            return super().update(epoch=epoch, valid=valid, snapshot=snapshot, evaluate=evaluate, row=row)
        if self.keep_teacher is not None and valid["warm"].get("num_users"):
            v = valid["warm"][self.metric]
            if v > self.teacher_best:
                self.teacher_best, self.teacher_epoch = v, epoch
                self.keep_teacher()
        row["teacher_stage"] = 1
        return True

    def describe(self):
        if self.teacher_epoch < 0:
            return []
        return [f"teacher kept at epoch {self.teacher_epoch} (valid warm {self.metric} {self.teacher_best:.4f}), "
                f"student selected at epoch {self.best_epoch}"]

    def state_dict(self) -> Dict[str, Any]:
        return {**super().state_dict(), "teacher_best": self.teacher_best, "teacher_epoch": self.teacher_epoch}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.teacher_best, self.teacher_epoch = state["teacher_best"], state["teacher_epoch"]


class ALDIPublishedRec(ALDIRec):
    """ALDI's published form (module docstring). Parts: ``lightgcn`` (the teacher), ``student`` (content to item
    embedding), ``mapper`` (``f_U``); the teacher's kept weights are the persistent buffers ``kept_user`` and
    ``kept_item`` (so a resumed run restores the same teacher).

    Shapes:
        embeddings() -> (users [U, 2 dim], items [I, 2 dim]); student_embeddings(items [B]) -> [B, dim].
    """

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        c = self.config
        self.mapper = nn.Sequential(nn.Linear(c.dim, c.hidden), nn.Tanh(), nn.Linear(c.hidden, c.dim)).to(self.device)
        self.register_buffer("kept_user", self.user_emb.detach().clone())
        self.register_buffer("kept_item", self.item_emb.detach().clone())
        self.register_buffer("kept", torch.zeros((), dtype=torch.bool, device=self.device))

    @property
    def teacher_frozen(self) -> bool:
        """Whether the current epoch is in the student stage (the teacher no longer trains)."""
        return self.epoch >= self.config.teacher_epochs

    @torch.no_grad()
    def keep_teacher(self) -> None:
        """Copy the teacher's current weights to ``kept_user``/``kept_item`` (the published selection calls it
        when the teacher's validation warm recall improved)."""
        self.kept_user.copy_(self.user_emb)
        self.kept_item.copy_(self.item_emb)
        self.kept.fill_(True)

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        # at the stage boundary (a host read once, at an epoch start): the kept teacher replaces the last one
        if epoch == self.config.teacher_epochs and bool(self.kept):
            with torch.no_grad():
                self.user_emb.copy_(self.kept_user)
                self.item_emb.copy_(self.kept_item)
            self.drop_caches()
        for p in self.lightgcn.parameters():
            p.requires_grad_(not self.teacher_frozen)

    def selection(self, rule: str, score: Callable[[Metrics], float], metric: str) -> Selection:
        c = self.config
        if c.selection == "published":
            return TeacherStudentSelection(lambda v: v["cold"][metric] if v["cold"].get("num_users")
                                           else score(v), metric, c.teacher_epochs, self.keep_teacher)
        return TeacherStudentSelection(score, metric, c.teacher_epochs, None)

    def embeddings(self) -> Tuple[Tensor, Tensor]:
        users, items = self.teacher_embeddings()
        warm = self.warm_mask.unsqueeze(1).to(items.dtype)
        s = self.student_embeddings(torch.arange(self.num_items, device=self.device))
        return torch.cat([users, self.mapper(users)], 1), torch.cat([items * warm, s * (1.0 - warm)], 1)

    def loss(self, batch: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        c = self.config
        u, p, n = batch["users"], batch["pos"], batch["neg"]
        sel = torch.index_select
        if not self.teacher_frozen:
            teacher, reg, _ = self.bpr_terms(batch, *self.teacher_embeddings())
            return teacher + reg, {"bpr": loss_part(teacher), "reg": loss_part(reg)}
        with torch.no_grad():
            users, items = self.teacher_embeddings()
        ue, tp, tn = sel(users, 0, u), sel(items, 0, p), sel(items, 0, n)
        s = self.student_embeddings(torch.cat([p, n]))
        parts = aldi_distill_losses(ue, tp, tn, s[: p.numel()], s[p.numel():],
                                    self.tws_weights[p] if c.tws else None, su=self.mapper(ue))
        student = (c.supervised * parts["supervised"] + c.gamma * parts["rating"]
                   + c.alpha * parts["ranking"] + c.beta * parts["identification"])
        return student, {f"student_{k}": loss_part(v) for k, v in parts.items()}
