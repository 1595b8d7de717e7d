"""The helpers tests and benchmarks share (:mod:`motorec.testing`): their checks must be able to fail."""
import pytest
import torch

from motorec.reference import code_usage as ref_cu
from motorec.reference.residual_quantize import residual_quantize_forward
from motorec.reference.spmm import spmm as torch_csr_spmm
from motorec.testing import (
    WORK_U,
    CheckFailed,
    assert_close_rel,
    check_codes,
    code_usage_oracle,
    power_law_graph,
    propagate_oracle,
    random_directed_graph,
    random_interactions,
    rel_error,
    rq_decode_oracle,
    rq_oracle,
    spmm_oracle,
    tol_vs_torch,
)


def _brute_oracle(x, cb):
    """Exact float64 distances to every codeword: (codes, margin) [N, L]."""
    x64, cb64 = x.double(), cb.double()
    r = x64.clone()
    codes, margins = [], []
    for c in cb64:
        dist = ((r[:, None, :] - c[None]) ** 2).sum(-1)
        best = dist.argmin(1)
        same = (c[None] == c[best][:, None]).all(-1)
        margins.append(dist.masked_fill(same, float("inf")).min(1).values - dist.gather(1, best[:, None]).squeeze(1))
        codes.append(best)
        r = r - c[best]
    return torch.stack(codes, 1), torch.stack(margins, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_rq_oracle_is_exact(dtype):
    """The matmul-narrowed search gives the brute-force exact argmin (lowest index among duplicates), margins
    and gaps, also at duplicated codewords and on rows next to them."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(401, 24, generator=g).to(dtype)
    cb = (torch.randn(3, 57, 24, generator=g) * torch.tensor([1.0, 0.5, 0.25]).view(3, 1, 1)).to(dtype)
    cb[0, [9, 12, 40]] = cb[0, 4].clone()
    cb[1, 30] = cb[1, 2].clone()
    x[:150] = cb[0, 4] + 0.05 * x[:150]
    codes = torch.randint(0, 57, (401, 3), generator=g)
    orc = rq_oracle(x, cb, codes, chunk_elems=1000)  # many row chunks
    want, margin = _brute_oracle(x, cb)
    assert torch.equal(orc.codes, want)
    assert torch.equal(orc.margin, margin)
    assert (orc.codes[:150, 0] == 4).all()
    r = x.double()
    for lvl in range(3):
        c = cb[lvl].double()
        best = ((r - c[want[:, lvl]]) ** 2).sum(1)
        assert torch.equal(orc.gap[:, lvl], ((r - c[codes[:, lvl]]) ** 2).sum(1) - best)
        r = r - c[want[:, lvl]]
    q, rsq = rq_decode_oracle(x, cb, want)
    ref = residual_quantize_forward(x.double(), cb.double())
    assert torch.equal(ref[0], want)
    assert rel_error(q, ref[1]) < 1e-14 and rel_error(rsq, ref[2]) < 1e-14


def test_check_codes_margin():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 16, generator=g, dtype=torch.float64)
    cb = torch.randn(2, 40, 16, generator=g, dtype=torch.float64)
    cb[0, 39] = cb[0, 7]  # duplicate codeword: the lowest index, except at a near-tie with another codeword
    ref = residual_quantize_forward(x, cb)[0]
    rounding = 2 * 16 * torch.finfo(torch.float32).eps
    res = check_codes(ref.clone(), x, cb, rounding=rounding)
    assert res.differing_rows == 0 and res.excused.shape == (300, 2)
    tied = ref.clone()
    rows = (tied[:, 0] == 7).nonzero().squeeze(1)
    assert rows.numel() > 0
    tied[rows, 0] = 39  # the same codeword at a higher index, where the choice is not a near-tie
    tied[rows, 1] = (tied[rows, 1] + 1) % 40
    with pytest.raises(CheckFailed, match="identical codewords resolve to the lowest index"):
        check_codes(tied, x, cb, rounding=rounding)
    # With a bound that makes every choice a near-tie, the tie is accepted and later levels are then exempt.
    assert check_codes(tied, x, cb, rounding=1.0).differing_rows == rows.numel()
    bad = ref.clone()
    bad[5, 1] = (bad[5, 1] + 1) % 40  # a clearly farther codeword
    with pytest.raises(CheckFailed, match="farther than the float64 best"):
        check_codes(bad, x, cb, rounding=rounding)
    with pytest.raises(CheckFailed, match="out of range"):
        check_codes(ref.clone().fill_(40), x, cb, rounding=rounding)
    with pytest.raises(CheckFailed, match="dtype"):
        check_codes(ref.int(), x, cb, rounding=rounding)
    # A cached oracle gives the same verdicts (the chosen codeword's gap is measured by the check itself).
    orc = rq_oracle(x, cb)
    with pytest.raises(CheckFailed, match="farther than the float64 best"):
        check_codes(bad, x, cb, rounding=rounding, oracle=orc)
    with pytest.raises(CheckFailed, match="identical codewords resolve to the lowest index"):
        check_codes(tied, x, cb, rounding=rounding, oracle=orc)


def test_check_codes_near_ties_and_vacuous_tolerance():
    """Rows on the bisector of two codewords are excused (margin computed, not assumed); a rounding bound
    so loose that most rows are excused fails the check."""
    g = torch.Generator().manual_seed(1)
    cb = torch.randn(1, 20, 32, generator=g, dtype=torch.float64)
    x = torch.randn(200, 32, generator=g, dtype=torch.float64) * 0.3
    x[:10] = 0.5 * (cb[0, 2] + cb[0, 11]) + 1e-9 * torch.randn(10, 32, generator=g, dtype=torch.float64)
    rounding = 32 * (32 + 1) * WORK_U[torch.float32]
    codes = rq_oracle(x, cb).codes
    res = check_codes(codes, x, cb, rounding=rounding, max_excused=0.1)
    assert res.excused[:10, 0].all() and int(res.excused[10:].sum()) <= 3
    swapped = codes.clone()
    swapped[:10, 0] = torch.where(codes[:10, 0] == 2, 11, 2)  # the other side of each tie: within rounding
    assert check_codes(swapped, x, cb, rounding=rounding).differing_rows == 10
    with pytest.raises(CheckFailed, match="excused as near-ties"):
        check_codes(codes, x, cb, rounding=10.0, max_excused=0.05)


def test_assert_close_rel_and_tolerances():
    ref = torch.randn(50, 7, dtype=torch.float64)
    assert assert_close_rel(ref.float(), ref, 1e-6) <= 1e-6
    with pytest.raises(CheckFailed, match="relative error"):
        assert_close_rel(ref.float() * 1.01, ref, 1e-3)
    with pytest.raises(CheckFailed, match="shape"):
        assert_close_rel(ref[:, :6], ref, 1.0)
    bad = ref.clone()
    bad[3, 3] = float("nan")
    with pytest.raises(CheckFailed, match="non-finite"):
        assert_close_rel(bad, ref, 1.0)
    assert isinstance(CheckFailed("x"), AssertionError)
    assert rel_error(torch.zeros(0), torch.zeros(0)) == 0.0
    assert rel_error(torch.ones(3), torch.zeros(3)) == pytest.approx(3 ** 0.5)  # absolute where ref is 0
    assert tol_vs_torch(1e-7, 1e-6) == 1e-6 and tol_vs_torch(1e-5, 1e-6) == 2e-5
    assert tol_vs_torch(1e-5, 1e-6, add_floor=True) == pytest.approx(2.1e-5)


def test_graph_oracles():
    g = power_law_graph(60, 45, 500, seed=4)
    d = random_directed_graph(23, 90)
    for graph in (g, d):
        x = torch.randn(graph.num_cols, 9, dtype=torch.float64)
        dense = graph.to_dense().double()
        torch.testing.assert_close(spmm_oracle(graph, x), dense @ x, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(spmm_oracle(graph, x, chunk_elems=20), dense @ x, rtol=1e-13, atol=1e-13)
    x = torch.randn(g.num_nodes, 5)
    a = g.to_dense().double()
    want = (x.double() + a @ x.double() + a @ a @ x.double()) / 3
    torch.testing.assert_close(propagate_oracle(g, x, 2), want, rtol=1e-12, atol=1e-12)
    assert rel_error(torch_csr_spmm(g.rowptr, g.col, g.val, x), spmm_oracle(g, x)) < 1e-6


def test_random_interactions():
    u, i = random_interactions(50, 30, 400, seed=2)
    assert u.shape == i.shape == (400,) and u.dtype == torch.int64
    assert int(u.max()) < 50 and int(i.max()) < 30
    assert torch.equal(u, random_interactions(50, 30, 400, seed=2)[0])  # reproducible
    # Power law: the most popular user holds far more than the 400 / 50 = 8 a uniform draw gives.
    assert int(u.bincount().max()) > 3 * 8
    u, i = random_interactions(50, 30, 900, seed=2, alpha=0.5, alpha_items=0.7, distinct=True)
    keys = u * 30 + i
    assert keys.numel() == 900 and torch.equal(keys, keys.unique())  # distinct, sorted
    with pytest.raises(ValueError, match="exceed"):
        random_interactions(5, 4, 21, distinct=True)
    e = random_interactions(0, 4, 10)
    assert e[0].numel() == 0 and e[1].numel() == 0


@pytest.mark.parametrize("mode", ["softmax", "sigmoid"])
def test_code_usage_oracle_chunks_rows(mode):
    """One chunk is the float64 reference itself; many chunks sum the same rows in another order."""
    g = torch.Generator().manual_seed(6)
    z, cb = torch.randn(97, 12, generator=g), torch.randn(2, 23, 12, generator=g)
    codes, grad = torch.randint(0, 23, (97, 2), generator=g), torch.randn(2, 23, generator=g, dtype=torch.float64)
    whole = code_usage_oracle(z, codes, cb, 0.7, mode, grad)
    rho, aux = ref_cu.code_usage_forward(z.double(), codes, cb.double(), 0.7, mode)
    want = (rho, *ref_cu.code_usage_backward(grad, z.double(), codes, cb.double(), aux, 0.7, mode))
    for a, w in zip(whole, want):
        assert a.dtype == torch.float64 and torch.equal(a, w)
    for a, w in zip(code_usage_oracle(z, codes, cb, 0.7, mode, grad, chunk_elems=23 * 10), want):
        assert rel_error(a, w) < 1e-13
    empty = code_usage_oracle(z[:0], codes[:0], cb, 0.7, mode, grad)
    assert empty[1].shape == (0, 12) and empty[2].shape == cb.shape
