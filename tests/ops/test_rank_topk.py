"""``motorec::rank_topk`` on every backend available here against the reference (:mod:`motorec.reference.rank_topk`).

Two kinds of inputs: integer-valued embeddings with power-of-two scales (every score exact in float32, so the
backends must agree index for index, exact ties included), and random floats, where the backend's ranking is
checked against float64 scores: listed items eligible and distinct, scores non-increasing and no unlisted
eligible item better than the k-th, each up to a rounding margin.
"""
from __future__ import annotations

import pytest
import torch

from motorec import _ext
from motorec.ops import explain, rank_topk
from motorec.ops.rank_topk import rank_topk_op
from motorec.reference import rank_topk as ref
from motorec.testing import backend_params

OP = "rank_topk"
PARAMS = backend_params(OP)
needs_c = pytest.mark.skipif(not _ext.c_has_op("rank_topk"), reason=f"motorec._C has no rank_topk ({_ext.C_REASON})")


def _exclusions(b, n, max_per_row, g, *, unsorted=False):
    counts = torch.randint(0, max_per_row + 1, (b,), generator=g) if n else torch.zeros(b, dtype=torch.int64)
    rowptr = torch.zeros(b + 1, dtype=torch.int64)
    rowptr[1:] = torch.cumsum(counts, 0)
    col = torch.randint(0, max(n, 1), (int(rowptr[-1]),), generator=g) if n else torch.zeros(0, dtype=torch.int64)
    if not unsorted:
        parts = [col[rowptr[r]:rowptr[r + 1]].sort().values for r in range(b)]
        col = torch.cat(parts) if parts else col
    return rowptr, col


def _int_inputs(b, n, d, g, *, dtype=torch.float32, cold_frac=0.3, affine=True):
    users = torch.randint(-3, 4, (b, d), generator=g).to(dtype)
    items = torch.randint(-3, 4, (n, d), generator=g).to(dtype)
    cold = torch.rand(n, generator=g) < cold_frac
    scale = torch.where(cold, 0.5, 1.0).to(dtype) if affine else None
    shift = torch.where(cold, -1.0, 0.0).to(dtype) if affine else None
    return users, items, scale, shift, cold


def _both(backend, users, items, k, scale, shift, rowptr, col, cold):
    kw = dict(item_scale=scale, item_shift=shift, exclude_rowptr=rowptr, exclude_col=col, cold=cold)
    return rank_topk(users, items, k, backend=backend, **kw), ref.rank_topk_forward(users, items, k, scale, shift,
                                                                                   rowptr, col, cold)


def _assert_equal(got, want):
    for name, a, w in zip(("hybrid", "warm", "cold", "nan"), got, want):
        assert a.dtype == w.dtype and a.shape == w.shape, name
        assert torch.equal(a.cpu(), w.cpu()), f"{name}: {a.tolist()} != {w.tolist()}"


@pytest.mark.parametrize("shape", [(37, 500, 16, 20), (1, 7, 1, 10), (64, 3000, 64, 50), (0, 10, 4, 3),
                                   (5, 0, 4, 3), (300, 900, 5, 1)],
                         ids=["odd", "B1-I<k-d1", "wide", "B0", "I0", "k1"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("device,backend", PARAMS)
def test_exact_scores_match_reference(device, backend, dtype, shape):
    """Integer scores: many exact ties, so the tie rule (lower index first) is checked index for index."""
    b, n, d, k = shape
    g = torch.Generator().manual_seed(b * 7 + n + d)
    users, items, scale, shift, cold = _int_inputs(b, n, d, g, dtype=dtype)
    rowptr, col = _exclusions(b, n, 40, g)
    mv = lambda t: None if t is None else t.to(device)  # noqa: E731
    got, want = _both(backend, *(mv(t) for t in (users, items)), k, mv(scale), mv(shift), mv(rowptr), mv(col),
                      mv(cold))
    _assert_equal(got, want)


@pytest.mark.parametrize("cold_frac", [0.0, 1.0, 0.01], ids=["no-cold", "all-cold", "few-cold"])
@pytest.mark.parametrize("affine", [True, False], ids=["scale-shift", "none"])
@pytest.mark.parametrize("device,backend", PARAMS)
def test_groups_and_affine(device, backend, cold_frac, affine):
    g = torch.Generator().manual_seed(3)
    users, items, scale, shift, cold = _int_inputs(50, 700, 8, g, cold_frac=cold_frac, affine=affine)
    rowptr, col = _exclusions(50, 700, 30, g)
    got, want = _both(backend, users.to(device), items.to(device), 20, *(None if t is None else t.to(device)
                                                                          for t in (scale, shift, rowptr, col, cold)))
    _assert_equal(got, want)
    if cold_frac == 0.0:
        assert (got.cold == -1).all() and torch.equal(got.warm, got.hybrid)
    if cold_frac == 1.0:
        assert (got.warm == -1).all() and torch.equal(got.cold, got.hybrid)


@pytest.mark.parametrize("device,backend", PARAMS)
def test_duplicated_items_lower_index_first(device, backend):
    items = torch.randn(5, 6).repeat(4, 1)  # item j == item j + 5 == ...: exact ties
    users = torch.randn(3, 6)
    out = rank_topk(users.to(device), items.to(device), 20, backend=backend)
    for row in out.hybrid.cpu():
        for a in range(0, 20, 4):
            grp = row[a:a + 4]
            assert torch.equal(grp, grp.sort().values) and len(set((grp % 5).tolist())) == 1


@pytest.mark.parametrize("device,backend", PARAMS)
def test_all_excluded_and_unsorted_exclusions(device, backend):
    g = torch.Generator().manual_seed(5)
    users, items, scale, shift, cold = _int_inputs(4, 30, 4, g)
    # row 0: every item (unsorted, with duplicates); row 1: none; row 2: all cold items; row 3: item 0 twice
    rows = [torch.randperm(30, generator=g).repeat(2), torch.zeros(0, dtype=torch.int64),
            cold.nonzero().flatten().flip(0), torch.tensor([0, 0])]
    col = torch.cat(rows)
    rowptr = torch.tensor([0] + torch.cumsum(torch.tensor([len(r) for r in rows]), 0).tolist())
    mv = lambda t: t.to(device)  # noqa: E731
    got, want = _both(backend, mv(users), mv(items), 10, mv(scale), mv(shift), mv(rowptr), mv(col), mv(cold))
    _assert_equal(got, want)
    assert (got.hybrid[0] == -1).all() and (got.warm[0] == -1).all() and (got.cold[0] == -1).all()
    assert (got.cold[2] == -1).all()
    assert 0 not in got.hybrid[3].tolist()


def _check_valid(out, s64, rowptr, col, cold, k, margin):
    """``out`` is a correct ranking of the float64 scores up to ``margin`` per comparison."""
    b, n = s64.shape
    excl = ref.excluded_mask(rowptr, col, b, n)
    for name, group in (("hybrid", torch.ones(n, dtype=torch.bool)), ("warm", ~cold), ("cold", cold)):
        ranked = getattr(out, name)
        for r in range(b):
            elig = group & ~excl[r]
            listed = ranked[r][ranked[r] >= 0]
            assert listed.numel() == min(k, int(elig.sum())), name
            assert (ranked[r][listed.numel():] == -1).all()
            assert listed.unique().numel() == listed.numel() and elig[listed].all(), name
            sc = s64[r, listed]
            assert (sc[1:] <= sc[:-1] + margin).all(), f"{name} row {r}: not sorted"
            rest = elig.clone()
            rest[listed] = False
            if rest.any() and listed.numel():
                assert s64[r, rest].max() <= sc[-1] + margin, f"{name} row {r}: a better item left out"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("device,backend", PARAMS)
def test_random_floats_valid_ranking(device, backend, dtype):
    g = torch.Generator().manual_seed(11)
    b, n, d, k = 123, 1823, 37, 20
    users, items = torch.randn(b, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g,
                                                                                     dtype=torch.float64)
    items[100:110] = items[100] + 1e-9 * torch.randn(10, d, generator=g, dtype=torch.float64)  # near-ties
    cold = torch.rand(n, generator=g) < 0.25
    scale = torch.where(cold, 0.7, 1.0).to(torch.float64)
    shift = torch.where(cold, 0.3, 0.0).to(torch.float64)
    rowptr, col = _exclusions(b, n, 50, g)
    out = rank_topk(users.to(device, dtype), items.to(device, dtype), k, item_scale=scale.to(device, dtype),
                    item_shift=shift.to(device, dtype), exclude_rowptr=rowptr.to(device), exclude_col=col.to(device),
                    cold=cold.to(device), backend=backend)
    out = type(out)(*(t.cpu() for t in out))
    s64 = ref.scores(users, items, scale, shift)
    margin = 64 * torch.finfo(dtype).eps * float(s64.abs().max())
    _check_valid(out, s64, rowptr, col, cold, k, margin)
    assert not out.nan.any()


@pytest.mark.parametrize("device,backend", PARAMS)
def test_nan_detected_and_never_ranked(device, backend):
    g = torch.Generator().manual_seed(2)
    users, items, scale, shift, cold = _int_inputs(6, 40, 4, g)
    users[1, 0] = float("nan")  # every score of row 1
    items[7, 0] = float("nan")  # item 7 for every row ...
    col = torch.tensor([7, 7])  # ... except rows 3 and 4, which exclude it
    rowptr = torch.tensor([0, 0, 0, 0, 1, 2, 2])
    mv = lambda t: t.to(device)  # noqa: E731
    got, want = _both(backend, mv(users), mv(items), 50, mv(scale), mv(shift), mv(rowptr), mv(col), mv(cold))
    _assert_equal(got, want)
    assert got.nan.tolist() == [True, True, True, False, False, True]
    assert (got.hybrid[1] == -1).all() and 7 not in got.hybrid.tolist()


@pytest.mark.parametrize("device,backend", PARAMS)
def test_opcheck(device, backend):
    g = torch.Generator().manual_seed(4)
    users, items, scale, shift, cold = _int_inputs(9, 60, 5, g)
    rowptr, col = _exclusions(9, 60, 6, g)
    mv = lambda t: None if t is None else t.to(device)  # noqa: E731
    for sc, sh in ((scale, shift), (None, None)):
        torch.library.opcheck(rank_topk_op, (mv(users), mv(items), 7, mv(sc), mv(sh), mv(rowptr), mv(col), mv(cold),
                                             backend))


def test_no_gradient():
    users = torch.randn(3, 4, requires_grad=True)
    out = rank_topk(users, torch.randn(10, 4), 3, backend="torch")
    assert not any(t.requires_grad for t in out)


def test_explain_names_the_torch_path_on_cuda():
    text = explain(OP, device="cuda")
    assert "auto picks torch" in text and "no GPU kernel" in text


@pytest.mark.parametrize("backend", ["torch"] + (["cpu"] if _ext.c_has_op("rank_topk") else []))
def test_bad_input(backend):
    u, it = torch.randn(2, 3), torch.randn(5, 3)
    rp, col = torch.tensor([0, 1, 2]), torch.tensor([0, 4])

    def call(**kw):
        args = dict(users=u, items=it, k=2, exclude_rowptr=rp, exclude_col=col)
        args.update(kw)
        return rank_topk(args.pop("users"), args.pop("items"), args.pop("k"), backend=backend, **args)

    with pytest.raises(ValueError, match="users have d=3 but items have d=4"):
        call(items=torch.randn(5, 4))
    with pytest.raises(ValueError, match="users must be 2-D"):
        call(users=torch.randn(3))
    with pytest.raises(TypeError, match="same dtype"):
        call(items=it.double())
    with pytest.raises(ValueError, match="k must be"):
        call(k=0)
    with pytest.raises(ValueError, match="item_scale must be a"):
        call(item_scale=torch.ones(4))
    with pytest.raises(TypeError, match="item_shift must have the dtype"):
        call(item_shift=torch.ones(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="exclude_rowptr must have B \\+ 1"):
        call(exclude_rowptr=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="non-decreasing"):
        call(exclude_rowptr=torch.tensor([0, 2, 1, 2])[[0, 2, 3]].clone().index_fill_(0, torch.tensor([1]), 3),
             exclude_col=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="end at len"):
        call(exclude_rowptr=torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="exclude_col must lie in"):
        call(exclude_col=torch.tensor([0, 5]))
    with pytest.raises(TypeError, match="exclude_col must be a 1-D int64"):
        call(exclude_col=torch.tensor([0, 4], dtype=torch.int32))
    with pytest.raises(ValueError, match="cold must be a bool"):
        call(cold=torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ValueError, match="given together"):
        call(exclude_col=None)


@needs_c
def test_c_kernel_checks_inputs_itself():
    import torch.ops  # noqa: F401

    u, it = torch.randn(2, 3), torch.randn(5, 3)
    cold = torch.zeros(5, dtype=torch.bool)
    c_op = torch.ops.motorec_C.rank_topk
    with pytest.raises(RuntimeError, match="exclude_col must lie in"):
        c_op(u, it, 2, None, None, torch.tensor([0, 1, 2]), torch.tensor([0, 9]), cold)
    with pytest.raises(RuntimeError, match="non-decreasing"):
        c_op(u, it, 2, None, None, torch.tensor([0, 2, 1]), torch.tensor([0]), cold)
    with pytest.raises(RuntimeError, match="k must be >= 1"):
        c_op(u, it, 0, None, None, torch.tensor([0, 0, 0]), torch.zeros(0, dtype=torch.int64), cold)
