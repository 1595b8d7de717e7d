"""Property-based fuzzing of the compiled ops (``torch.ops.motorec_C.*``) against float64 torch references.

Hypothesis draws the CSR structure (empty rows, zero rows, all-empty graphs, duplicate columns, repeated
rows), shapes (D from 0), dtypes (float32/float64) and index dtypes (int32/int64), and random codebooks with
exactly duplicated codewords. Properties: no crash, and results equal the reference:

* spmm / propagate: the float64 gather + ``index_add_`` product (which sums duplicate columns, unlike a
  CSR library that may assume them coalesced). float32 tolerance: each output is a sum of at most
  ``deg(r) * (L+1)`` products of O(1) terms, so its rounding error is a few ``deg * eps32``: ``1e-4``
  absolute/relative is 10-100x that bound at these sizes, and any indexing bug is O(1).
* residual_quantize: codes are argmins, so where two codewords are within rounding of each other either
  may win. The test follows the kernel's own codes level by level in float64 and checks that each chosen
  codeword is optimal up to a rounding margin ``tol * (||r||^2 + ||c||^2)``, that exact duplicate codewords
  resolve to the lowest index, and that quantized / residual_sq / the backward agree with the reference
  computed along those codes.
"""
from __future__ import annotations

import pytest
import torch

from motorec import _ext
from motorec.reference.residual_quantize import residual_quantize_backward
from motorec.reference.spmm import spmm_gather

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (_ext.c_has_op("spmm") and _ext.c_has_op("propagate") and _ext.c_has_op("residual_quantize_fwd")),
    reason=f"motorec._C with spmm/propagate/residual_quantize is not built ({_ext.C_REASON or 'ops missing'})",
)

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
FLOATS = [torch.float32, torch.float64]
INDEX = [torch.int32, torch.int64]


def _tols(dtype):
    return (1e-4, 1e-4) if dtype == torch.float32 else (1e-10, 1e-10)


@st.composite
def csr(draw, square: bool = False):
    """(rowptr int64, col, val, num_cols) with hypothesis-chosen structure and values from a seeded generator."""
    num_rows = draw(st.integers(0, 40))
    num_cols = num_rows if square else draw(st.integers(0, 40))
    if num_cols == 0:
        degrees = [0] * num_rows
    else:
        degrees = draw(st.lists(st.integers(0, 9), min_size=num_rows, max_size=num_rows))
    nnz = sum(degrees)
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    pool = draw(st.sampled_from(["any", "few", "one"]))  # "few"/"one" force duplicate columns within rows
    hi = {"any": num_cols, "few": min(num_cols, 3), "one": min(num_cols, 1)}[pool]
    col = torch.randint(0, max(hi, 1), (nnz,), generator=g) if nnz else torch.zeros(0, dtype=torch.long)
    if pool != "any" and num_cols > 0:
        col = col + torch.randint(0, num_cols - hi + 1, (1,), generator=g)  # the pool anywhere in [0, C)
    rowptr = torch.zeros(num_rows + 1, dtype=torch.long)
    if num_rows:
        rowptr[1:] = torch.tensor(degrees).cumsum(0)
    val = torch.randn(nnz, generator=g, dtype=torch.float64)
    return rowptr, col, val, num_cols, g


@FUZZ
@given(a=csr(), d=st.integers(0, 19), dtype=st.sampled_from(FLOATS), index=st.sampled_from(INDEX),
       strided=st.booleans())
def test_fuzz_spmm(a, d, dtype, index, strided):
    rowptr, col, val, num_cols, g = a
    x = torch.randn(num_cols, d, generator=g, dtype=torch.float64)
    xt = x.to(dtype)
    if strided and d > 0:  # a column-major view: the op must handle any strides
        xt = xt.t().contiguous().t()
    out = torch.ops.motorec_C.spmm(rowptr, col.to(index), val.to(dtype), xt)
    assert out.shape == (rowptr.numel() - 1, d) and out.dtype == dtype
    ref = spmm_gather(rowptr, col, val.to(dtype).double(), xt.double())
    rtol, atol = _tols(dtype)
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol)


@FUZZ
@given(a=csr(square=True), d=st.integers(0, 19), layers=st.integers(0, 4), dtype=st.sampled_from(FLOATS),
       index=st.sampled_from(INDEX))
def test_fuzz_propagate(a, d, layers, dtype, index):
    rowptr, col, val, n, g = a
    # Row-normalize so that A^L x stays O(1) for every L (an unnormalized random A blows up geometrically
    # and then only relative tolerances would mean anything).
    deg = torch.zeros(n, dtype=torch.float64).index_add_(0, torch.repeat_interleave(torch.arange(n), rowptr.diff()),
                                                          val.abs())
    row = torch.repeat_interleave(torch.arange(n), rowptr.diff())
    val = val / deg.clamp_min(1.0)[row]
    x = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)
    out = torch.ops.motorec_C.propagate(rowptr, col.to(index), val.to(dtype), x, layers)
    assert out.shape == (n, d) and out.dtype == dtype
    v64, h = val.to(dtype).double(), x.double()
    acc = h.clone()
    for _ in range(layers):
        h = spmm_gather(rowptr, col, v64, h)
        acc += h
    rtol, atol = _tols(dtype)
    torch.testing.assert_close(out.double(), acc / (layers + 1), rtol=rtol, atol=atol)


@st.composite
def rq_inputs(draw):
    n = draw(st.integers(0, 50))
    d = draw(st.integers(1, 17))
    levels = draw(st.integers(1, 4))
    k = draw(st.integers(1, 33))
    dtype = draw(st.sampled_from(FLOATS))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    cb = torch.randn(levels, k, d, generator=g, dtype=torch.float64)
    scales = torch.tensor([0.5**lvl for lvl in range(levels)], dtype=torch.float64)
    cb = cb * scales[:, None, None]  # residual levels shrink, as in a trained RQ-VAE
    if k > 1 and draw(st.booleans()):  # exact duplicate codewords: ties must go to the lowest index
        src = torch.randint(0, k, (k // 2 + 1,), generator=g)
        dst = torch.randint(0, k, (k // 2 + 1,), generator=g)
        cb[:, dst] = cb[:, src]
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    if n > 1 and draw(st.booleans()):  # some inputs sit exactly on codewords (distance 0)
        x[: n // 2] = cb[0, torch.randint(0, k, (n // 2,), generator=g)]
    return x.to(dtype), cb.to(dtype), g


@FUZZ
@given(inp=rq_inputs())
def test_fuzz_residual_quantize(inp):
    x, cb, g = inp
    n, d = x.shape
    levels, k, _ = cb.shape
    codes, quantized, res_sq = torch.ops.motorec_C.residual_quantize_fwd(x, cb)
    assert codes.shape == (n, levels) and codes.dtype == torch.int64
    assert quantized.shape == (n, d) and quantized.dtype == x.dtype
    assert res_sq.shape == (n, levels)
    if n == 0:
        return
    assert int(codes.min()) >= 0 and int(codes.max()) < k
    eps = 1e-5 if x.dtype == torch.float32 else 1e-12
    c64 = cb.double()
    r = x.double()
    for lvl in range(levels):
        dist = ((r[:, None, :] - c64[lvl][None]) ** 2).sum(-1)  # [n, K]
        chosen = codes[:, lvl]
        d_chosen = dist.gather(1, chosen[:, None]).squeeze(1)
        margin = eps * (r.pow(2).sum(1) + c64[lvl].pow(2).sum(1).max() + 1.0)
        gap = d_chosen - dist.min(1).values
        assert bool((gap <= margin).all()), f"level {lvl}: a non-nearest codeword won by {gap.max().item():.3e}"
        # Exact duplicates of the chosen codeword at a lower index would have exactly the same distance.
        same = (cb[lvl][None, :, :] == cb[lvl][chosen][:, None, :]).all(-1)  # [n, K]
        lowest = same.float().argmax(1)
        assert torch.equal(lowest, chosen), f"level {lvl}: a tie between duplicate codewords did not go lowest"
        r = r - c64[lvl][chosen]
        rtol, atol = (1e-4, 1e-4) if x.dtype == torch.float32 else (1e-9, 1e-9)
        torch.testing.assert_close(res_sq[:, lvl].double(), r.pow(2).sum(1), rtol=rtol, atol=atol)
    torch.testing.assert_close(quantized.double(), x.double() - r, rtol=1e-4 if x.dtype == torch.float32 else 1e-9,
                               atol=1e-4 if x.dtype == torch.float32 else 1e-9)
    gq = torch.randn(n, d, generator=g, dtype=torch.float64).to(x.dtype)
    gr = torch.randn(n, levels, generator=g, dtype=torch.float64).to(res_sq.dtype)
    gx, gc = torch.ops.motorec_C.residual_quantize_bwd(gq, gr, x, cb, codes)
    rx, rc = residual_quantize_backward(gq.double(), gr.double(), x.double(), cb.double(), codes)
    rtol, atol = (2e-4, 2e-4) if x.dtype == torch.float32 else (1e-9, 1e-9)
    torch.testing.assert_close(gx.double(), rx, rtol=rtol, atol=atol)
    torch.testing.assert_close(gc.double(), rc, rtol=rtol, atol=atol)
