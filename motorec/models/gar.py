"""``gar``: GAR (Chen, Wang, Huang, Wu and Wang, "Generative Adversarial Framework for Cold-Start Item
Recommendation", SIGIR 2022; the authors' TensorFlow code: github.com/zfnWong/GAR; ColdRec's port:
github.com/YuanchenBei/ColdRec, ``model/GAR.py``).

A generator ``G`` maps an item's content to an embedding in the CF space; a recommender (a user transform
``R_U`` and an item transform ``R_I`` over CF embeddings, the item transform shared by real and generated
items) scores ``<R_U(u), R_I(v)>``. The two play an adversarial game on each (user, positive, negative) batch,
``g_i = G(x_i)`` for the positive:

* recommender: ``(1 - beta) BPR(<u, i>, <u, g_i>) + beta BPR(<u, i>, <u, j>)``: rank the real positive above
  its generated twin, and above the negative;
* generator: ``(1 - alpha) BPR(<u, g_i>, <u, i>) + alpha MSE(g_i, v_i)``: make the recommender rank the
  generated embedding above the real one, and stay near the real embedding.

Users and warm items are scored through ``R_U`` and ``R_I`` of their CF embeddings, cold items through
``R_I(G(x_i))``: the recommender that was trained to tell generated from real embeddings ranks them on one scale.

What differs from the authors' code, stated:

* The CF embeddings come from a LightGCN trained in the same run (:class:`~motorec.models.backbone.CFBackbone`,
  exactly ``lightgcn``), seen detached, instead of embeddings pre-trained by another program; the checkpoint the
  trainer selects holds all parts.
* Simultaneous instead of alternating updates: one optimizer step per batch updates both players, each with the
  gradient of its own objective only (the generator's objective reads the recommender through detached
  weights, the recommender's reads the generated embeddings detached), so the step is a simultaneous
  gradient play rather than the authors' alternation of a generator step and a recommender step.
* The transforms are one-hidden-layer tanh MLPs of width ``hidden``; their L2 penalty is left to
  ``train.weight_decay``; one uniform negative per positive from the trainer's sampler; the content is the
  items' L2-normalized modalities side by side.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch
from torch import Tensor, nn
from torch.func import functional_call

from motorec.config import ModelConfig
from motorec.models.backbone import CFBackbone, check_nonneg, check_positive_int, mse
from motorec.models.base import loss_part
from motorec.models.losses import bpr_loss

__all__ = ["GARRec", "GARConfig"]


@dataclass
class GARConfig(ModelConfig):
    """``gar``'s own hyper-parameters (section ``gar:``); defaults are the authors' code defaults."""

    # generator: weight of the similarity (MSE) term against the adversarial term
    alpha: float = 0.05
    # recommender: weight of the real-negative BPR term against the generated-item term
    beta: float = 0.1
    # hidden width of the recommender's transforms
    hidden: int = 200

    def check(self) -> None:
        check_nonneg(self, "alpha", "beta")
        check_positive_int(self, "hidden")


def _mlp(dim: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))


def _frozen(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)`` with its weights as constants: gradients flow to ``x`` only."""
    return functional_call(module, {k: v.detach() for k, v in module.named_parameters()}, (x,))


class GARRec(CFBackbone):
    """LightGCN backbone + GAR (module docstring). Parts: ``lightgcn``, ``generator``, ``user_rec``,
    ``item_rec``.

    Shapes:
        embeddings() -> (users [U, dim], items [I, dim]); generate(items [B]) -> [B, dim].
    """

    def __init__(self, *, features: Dict[str, Tensor], **kw) -> None:
        super().__init__(features=features, **kw)
        c = self.config
        d = c.dim
        self.generator = nn.Sequential(nn.Linear(self.content.shape[1], 2 * d), nn.Tanh(), nn.Linear(2 * d, d),
                                       nn.Tanh()).to(self.device)
        self.user_rec = _mlp(d, c.hidden).to(self.device)
        self.item_rec = _mlp(d, c.hidden).to(self.device)

    def generate(self, items: Tensor) -> Tensor:
        """``G(x_i)``: the generated CF embedding of some items."""
        return self.generator(self.content.index_select(0, items))

    def embeddings(self) -> Tuple[Tensor, Tensor]:
        users, items = self.cf_embeddings()
        g = self.generate(torch.arange(self.num_items, device=self.device))
        return self.user_rec(users), self.item_rec(self.warm_or_cold(items, g))

    def loss(self, batch: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        c = self.config
        backbone, parts, (ue, pe, ne) = self.backbone_loss(batch)
        b = pe.shape[0]
        gen = self.generate(batch["pos"])
        # the recommender's objective: generated embeddings are constants
        ur = self.user_rec(ue)
        ir = self.item_rec(torch.cat([pe, ne, gen.detach()]))
        s_pos, s_neg, s_gen = ((ur * ir[k * b:(k + 1) * b]).sum(1) for k in range(3))
        rec = (1.0 - c.beta) * bpr_loss(s_pos, s_gen) + c.beta * bpr_loss(s_pos, s_neg)
        # as ColdRec: the L2 penalty on the recommender's outputs bounds their scale
        rec_reg = self.reg_loss(ur, ir)
        # the generator's objective: the recommender's weights are constants
        ur_c, g_r = ur.detach(), _frozen(self.item_rec, gen)
        adv = bpr_loss((ur_c * g_r).sum(1), s_pos.detach())
        gen_loss = (1.0 - c.alpha) * adv + c.alpha * mse(gen, pe)
        return backbone + rec + rec_reg + gen_loss, {**parts, "recommender": loss_part(rec), "rec_reg": loss_part(rec_reg),
                                                     "generator": loss_part(gen_loss)}
