"""The loss terms of ``motorec.models.losses`` against hand computations: BPR, InfoNCE (full and the sampled
contrastive form), rarity weights, ALDI's alignment terms, and the squared norms with hand-written backwards."""
from __future__ import annotations

import math

import pytest
import torch

from motorec.models.losses import (
    aldi_distill_losses,
    bpr_loss,
    contrastive_loss,
    info_nce,
    rarity_weights,
    row_sq_norms,
    sq_sum,
)


def test_bpr_loss_matches_formula():
    g = torch.Generator().manual_seed(1)
    p, n, w = torch.randn(37, generator=g), torch.randn(37, generator=g), torch.rand(37, generator=g) + 0.5
    expect = -(w * torch.log(torch.sigmoid(p.double() - n.double()))).mean()
    assert torch.allclose(bpr_loss(p, n, w).double(), expect, atol=1e-6)
    assert torch.allclose(bpr_loss(p, n).double(), -torch.log(torch.sigmoid(p.double() - n.double())).mean(), atol=1e-6)
    assert bpr_loss(torch.zeros(0), torch.zeros(0)).item() == 0.0


def _info_nce_reference(a, b, tau):
    an, bn = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    sim = an @ bn.t() / tau
    l1 = -(sim.diag() - torch.logsumexp(sim, dim=1))
    l2 = -(sim.diag() - torch.logsumexp(sim, dim=0))
    return 0.5 * (l1 + l2)


def test_info_nce_matches_formula():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(11, 7, generator=g).double(), torch.randn(11, 7, generator=g).double()
    w = torch.rand(11, generator=g).double()
    ref = _info_nce_reference(a, b, 0.2)
    assert torch.allclose(info_nce(a, b, 0.2), ref.mean(), atol=1e-10)
    assert torch.allclose(info_nce(a, b, 0.2, w), (ref * w).mean(), atol=1e-10)
    assert info_nce(a, a, 0.2) < info_nce(a, b, 0.2)  # aligned views give a lower loss than shuffled ones
    assert info_nce(a[:0], b[:0], 0.2).item() == 0.0


def test_contrastive_loss_is_info_nce_over_the_distinct_positives():
    """With at most ``max_items`` distinct positives, exactly InfoNCE over them (repeats and padding ignored);
    with more, InfoNCE over ``max_items`` of them."""
    g = torch.Generator().manual_seed(3)
    collab, content = torch.randn(30, 6, generator=g).double(), torch.randn(30, 6, generator=g).double()
    pos = torch.tensor([4, 9, 4, 17, 2, 9, 25])
    distinct = torch.unique(pos)
    expect = _info_nce_reference(collab[distinct], content[distinct], 0.3).mean()
    got = contrastive_loss(collab, content, pos, 0.3, 16)
    assert torch.allclose(got, expect, atol=1e-9)
    # capped: InfoNCE over some 3 of the 5 distinct positives (the order of the rows does not matter)
    capped = float(contrastive_loss(collab, content, pos, 0.3, 3))
    subsets = [torch.tensor(s) for s in ([2, 4, 9], [2, 4, 17], [2, 4, 25], [2, 9, 17], [2, 9, 25], [2, 17, 25],
                                         [4, 9, 17], [4, 9, 25], [4, 17, 25], [9, 17, 25])]
    assert any(math.isclose(capped, float(_info_nce_reference(collab[s], content[s], 0.3).mean()), abs_tol=1e-9)
               for s in subsets)
    assert contrastive_loss(collab, content, pos[:0], 0.3, 16).item() == 0.0


def test_rarity_weights_formula_normalization_clip_and_ramp():
    deg = torch.tensor([0.0, 1.0, 3.0, 50.0, 400.0, 7.0])
    pos = torch.tensor([1, 2, 3, 4, 5, 1, 4])
    s = math.log1p(400.0) / torch.log(2.0 + deg[pos].double())
    s = s / s.mean()
    full = rarity_weights(deg, pos, ramp=1.0, clip=(0.5, 5.0)).double()
    assert torch.allclose(full, s.clamp(0.5, 5.0), atol=1e-6)
    assert full[0] > full[2] > full[3]  # rarer positives weigh more
    assert torch.equal(rarity_weights(deg, pos, ramp=0.0, clip=(0.5, 5.0)), torch.ones(7))
    half = rarity_weights(deg, pos, ramp=0.5, clip=(0.5, 5.0))
    assert torch.allclose(half.double(), 1 + 0.5 * (full - 1), atol=1e-6)
    tight = rarity_weights(deg, pos, ramp=1.0, clip=(0.9, 1.1))
    assert float(tight.min()) >= 0.9 - 1e-6 and float(tight.max()) <= 1.1 + 1e-6
    assert rarity_weights(deg, pos[:0], ramp=1.0, clip=(0.5, 5.0)).numel() == 0


def test_aldi_distill_terms_match_formulas():
    g = torch.Generator().manual_seed(0)
    tu, tp, tn, sp, sn = (torch.randn(7, 5, generator=g, dtype=torch.float64) for _ in range(5))
    w = torch.rand(7, generator=g, dtype=torch.float64)
    parts = aldi_distill_losses(tu, tp, tn, sp, sn, w)
    tpos, tneg, spos, sneg = (tu * tp).sum(1), (tu * tn).sum(1), (tu * sp).sum(1), (tu * sn).sum(1)

    def bce(logit, target):
        p = torch.sigmoid(logit)
        return -(target * p.log() + (1 - target) * (1 - p).log())

    assert torch.allclose(parts["supervised"], -torch.log(torch.sigmoid(spos - sneg)).mean())
    assert torch.allclose(parts["rating"], ((tpos - spos).abs() + (tneg - sneg).abs()).mean())
    assert torch.allclose(parts["ranking"], (w * bce(spos - sneg, torch.sigmoid(tpos - tneg))).mean())
    ti = (tp * tp).sum(1) - torch.stack([(tp[i] * tn).sum(1).mean() for i in range(7)])
    si = (sp * sp).sum(1) - torch.stack([(sp[i] * sn).sum(1).mean() for i in range(7)])
    assert torch.allclose(parts["identification"], (w * bce(si, torch.sigmoid(ti))).mean())
    # the teacher is a constant: no gradient reaches it
    tu.requires_grad_()
    sp.requires_grad_()
    sum(aldi_distill_losses(tu, tp, tn, sp, sn).values()).backward()
    assert tu.grad is None and sp.grad is not None and bool(sp.grad.abs().sum() > 0)
    empty = aldi_distill_losses(*(x[:0].detach() for x in (tu, tp, tn, sp, sn)))
    assert all(v.item() == 0.0 for v in empty.values())


@pytest.mark.parametrize("dim", [None, 1])
@pytest.mark.parametrize("shape", [(37, 5), (0, 3), (1, 1)])
def test_sq_sum_matches_pow_sum_bit_for_bit(dim, shape):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(*shape, generator=g) * 3).requires_grad_()
    y = x.detach().clone().requires_grad_()
    ours = sq_sum(x, dim)
    ref = y.pow(2).sum() if dim is None else y.pow(2).sum(dim)
    assert torch.equal(ours, ref)
    w = torch.randn(ref.shape, generator=g)
    (ours * w).sum().backward()
    (ref * w).sum().backward()
    assert torch.equal(x.grad, y.grad)


def test_row_sq_norms_values_and_gradient():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(row_sq_norms(x), x.detach().pow(2).sum(1))
    assert torch.autograd.gradcheck(row_sq_norms, (x,))
    assert row_sq_norms(torch.zeros(0, 3)).shape == (0,)


def test_sq_sum_gradcheck_float64():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: sq_sum(t, 1), (x,))
    assert torch.autograd.gradcheck(lambda t: sq_sum(t), (x,))
