"""``aldi`` (``motorec/models/aldi.py``): a LightGCN teacher that trains exactly as ``lightgcn`` and a content
student distilled from it with ALDI's terms, which scores the cold items."""
from __future__ import annotations

import math

import pytest
import torch
from _model_helpers import make_batch, make_model

from motorec.models.aldi import aldi_item_weights
from motorec.models.losses import aldi_distill_losses
from motorec.train import BPRSampler

# users' degrees: u0 2, u1 2, u2 3 (items 4 and 5 have no interaction)
TINY_TRAIN = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 3], [2, 0], [2, 3], [2, 1]])

def test_aldi_tws_weights_hand_checked():
    # users' degrees: u0 2, u1 2, u2 3; item 0: 1/2 + 1/3, item 1: 1/2 + 1/3, item 2: 1/2, item 3: 1/2 + 1/3
    w = aldi_item_weights(TINY_TRAIN, 3, 6, 4.0)
    a = 4.0 * 6 / 3
    f = torch.tensor([5 / 6, 5 / 6, 1 / 2, 5 / 6, 0.0, 0.0], dtype=torch.float64)
    assert torch.allclose(w.double(), torch.tanh(a * f).clamp_max(math.tanh(4.0)), atol=1e-6)
    assert float(aldi_item_weights(TINY_TRAIN, 3, 6, 0.5).max()) <= math.tanh(0.5) + 1e-7


def test_aldi_student_terms_leave_teacher_gradients_alone(ds):
    aldi, base = make_model(ds, "aldi"), make_model(ds, "lightgcn")
    assert all(torch.equal(p, q) for p, q in zip(aldi.lightgcn.parameters(), base.lightgcn.parameters()))
    batch = make_batch(ds)
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
    m = make_model(ds, "aldi")
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
    m = make_model(ds, "aldi", tws=tws)
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
    fresh = make_model(ds, "aldi", seed=1, tws=tws)
    fresh.lightgcn.load_state_dict(m.lightgcn.state_dict())
    batch = make_batch(ds, seed=99, size=512)
    with torch.no_grad():
        (_, trained), (_, untrained) = m.loss(batch), fresh.loss(batch)
    assert trained["bpr"] == untrained["bpr"]
    for k, ratio in (("student_supervised", 0.8), ("student_rating", 0.8), ("student_ranking", 0.9),
                     ("student_identification", 0.8)):
        assert trained[k] < ratio * untrained[k], (k, trained[k], untrained[k])

