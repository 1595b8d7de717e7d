"""``motorec::residual_quantize`` on every backend available here, against a float64 oracle.

The oracle (:func:`motorec.testing.rq_oracle`) quantizes in float64 with exact distances ``||r - c||^2``
(difference of vectors, so identical codewords get identical distances and the lowest index wins) and returns,
per row and level, the margin between the best distance and the best distance of a codeword that differs from
the winner. :func:`motorec.testing.check_codes` requires a backend's code to equal the oracle's wherever that
margin is above the rounding of the backend's working precision; where it is not, the backend's codeword must
itself be within that rounding of the best. Later levels of such a row follow a different residual and are not
compared.

Triton runs under ``TRITON_INTERPRET=1``, which must be set before triton is imported: on a machine without a
GPU, :func:`test_triton_interpreter` re-runs this file's ``triton`` cases in a subprocess with the variable set
(tiny shapes). On a GPU machine the ``cuda-triton`` cases run compiled in this process.
"""
from __future__ import annotations

import pytest
import torch

import motorec
from motorec import _ext
from motorec.ops.residual_quantize import residual_quantize, residual_quantize_backward_op, residual_quantize_op
from motorec.reference import residual_quantize as ref
from motorec.testing import (
    STORE_U,
    WORK_U,
    backend_params,
    backends_here,
    check_codes,
    rel_error,
    rq_decode_oracle,
    rq_oracle,
    run_triton_cases_under_interpreter,
)

OP = "residual_quantize"
PARAMS = backend_params(OP)


def _interpreted(device, backend) -> bool:
    return backend == "triton" and torch.device(device).type == "cpu"


def _size(device, backend, big, small):
    """Shapes for compiled backends, and tiny ones for the Triton interpreter (N<=70, K<=40, D<=100, L<=3)."""
    return small if _interpreted(device, backend) else big


def _serves(device, backend, dtype) -> bool:
    return backend in backends_here(OP, device, dtype)


def _codebooks(levels, k, d, *, dtype, device, scale=1.0, generator=None):
    # Later levels get smaller codewords, as trained residual codebooks do.
    s = torch.tensor([scale * 0.5 ** lvl for lvl in range(levels)], dtype=torch.float64).view(-1, 1, 1)
    return (torch.randn(levels, k, d, dtype=torch.float64, generator=generator) * s).to(dtype=dtype, device=device)


def _check_codes(codes, x, cb, *, max_excused=0.05):
    """Assert the codes are exact up to the rounding of ``x``'s working precision; return the [N, L] mask of
    positions excused as near-ties."""
    rounding = 32 * (x.shape[1] + cb.shape[0]) * WORK_U[x.dtype]
    return check_codes(codes, x, cb, rounding=rounding, max_excused=max_excused).excused


def _forward_errors(out, x, cb):
    q64, r64 = rq_decode_oracle(x, cb, out.codes)
    return rel_error(out.quantized, q64), rel_error(out.residual_sq, r64)


def _check_forward(out, x, cb, backend, **kw):
    n, d = x.shape
    num_levels = cb.shape[0]
    assert out.quantized.shape == (n, d) and out.quantized.dtype == x.dtype
    want_rdtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    assert out.residual_sq.shape == (n, num_levels) and out.residual_sq.dtype == want_rdtype
    assert out.codes.device == x.device and out.quantized.device == x.device
    excused = _check_codes(out.codes, x, cb, **kw)
    # Tolerance after flash-attention: at most ~2x the error of the torch path at the same precision.
    q_err, r_err = _forward_errors(out, x, cb)
    t_q, t_r = _forward_errors(residual_quantize(x, cb, backend="torch"), x, cb)
    floor = 2 * STORE_U[x.dtype] + 8 * d * WORK_U[x.dtype]
    assert q_err <= 2 * t_q + floor, f"quantized: relative error {q_err:.2e} (torch path {t_q:.2e})"
    assert r_err <= 2 * t_r + 8 * d * WORK_U[x.dtype], f"residual_sq: relative error {r_err:.2e} (torch path {t_r:.2e})"
    return excused


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).split(".")[-1])
@pytest.mark.parametrize("shape", [(1823, 48, 37, 3), (517, 100, 200, 2)], ids=["d48-k37-l3", "d100-k200-l2"])
@pytest.mark.parametrize("device,backend", PARAMS)
def test_forward_matches_float64(device, backend, shape, dtype):
    if not _serves(device, backend, dtype):
        pytest.skip(f"{backend} does not serve {dtype}")
    n, d, k, num_levels = shape
    if _interpreted(device, backend):
        n, k = (70, 37) if k < 40 else (45, 40)
        if dtype in (torch.float16, torch.bfloat16):
            n = 33
    x = torch.randn(n, d, dtype=torch.float64).to(dtype=dtype, device=device)
    cb = _codebooks(num_levels, k, d, dtype=dtype, device=device, scale=0.7)
    out = residual_quantize(x, cb, backend=backend)
    _check_forward(out, x, cb, backend)
    # Deterministic: the same inputs give the same codes.
    assert torch.equal(residual_quantize(x, cb, backend=backend).codes, out.codes)


@pytest.mark.parametrize("device,backend", PARAMS)
def test_duplicate_codewords_lowest_index_wins(device, backend):
    n, k = _size(device, backend, (600, 120), (64, 30))
    d, num_levels = 48, 2
    cb = _codebooks(num_levels, k, d, dtype=torch.float32, device=device)
    # Codeword 3 appears 7 times at level 0 (more copies than a top-4 search keeps) and codeword 10 twice at
    # level 1; each is also preceded by a non-duplicate, so the lowest index is not simply 0.
    dup0 = [5, 9, 12, 20, 25, 29]
    cb[0, dup0] = cb[0, 3].clone()
    cb[1, [17, 28]] = cb[1, 10].clone()
    x = torch.randn(n, d, device=device) * 0.3
    x[: n // 2] += cb[0, 3]
    x[: n // 4] += cb[1, 10]
    out = residual_quantize(x, cb, backend=backend)
    _check_forward(out, x, cb, backend, max_excused=0.1)
    assert (out.codes[: n // 2, 0] == 3).all(), "rows next to the duplicated codeword must take its lowest index"
    assert not torch.isin(out.codes[:, 0], torch.tensor(dup0, device=device)).any()
    assert not torch.isin(out.codes[:, 1], torch.tensor([17, 28], device=device)).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("device,backend", PARAMS)
def test_constructed_near_ties(device, backend, dtype):
    """Rows placed almost on the bisector of two codewords; the margin computation must find them."""
    if not _serves(device, backend, dtype):
        pytest.skip(f"{backend} does not serve {dtype}")
    n, k = _size(device, backend, (900, 77), (66, 33))
    d, num_levels = 100, 3
    g = torch.Generator().manual_seed(7)
    cb = _codebooks(num_levels, k, d, dtype=torch.float64, device="cpu", generator=g)
    x = torch.randn(n, d, dtype=torch.float64, generator=g) * 0.3
    ties = n // 3
    a = torch.randint(0, k, (ties,), generator=g)
    b = (a + 1 + torch.randint(0, k - 1, (ties,), generator=g)) % k
    v = cb[0, a] - cb[0, b]
    # x = midpoint + t (c_a - c_b): the distance gap is 2 |t| ||c_a - c_b||^2, |t| from far below the rounding
    # of the working precision up to 0.1.
    t = torch.logspace(-19 if dtype == torch.float64 else -12, -1, ties, dtype=torch.float64) * torch.where(torch.rand(ties, generator=g) < 0.5, -1.0, 1.0)
    x[:ties] = (cb[0, a] + cb[0, b]) / 2 + t[:, None] * v
    x, cb = x.to(dtype=dtype, device=device), cb.to(dtype=dtype, device=device)
    out = residual_quantize(x, cb, backend=backend)
    excused = _check_forward(out, x, cb, backend, max_excused=0.4)
    # The margin computation flags the constructed rows whose gap is below rounding, and only few others.
    gap = 2 * t.abs() * (v * v).sum(1)
    scale = rq_oracle(x, cb).scale.cpu()
    below = gap < (d + num_levels) * WORK_U[dtype] * scale[:ties, 0]
    assert below.sum() >= 3, "the construction must produce ties below rounding"
    assert excused[:ties, 0][below].all(), "near-tie rows below rounding were not found by the margin computation"
    # Constructed rows well above rounding must be decided exactly (they are compared, not excused).
    above = gap > 4 * 32 * (d + num_levels) * WORK_U[dtype] * scale[:ties, 0]
    assert above.sum() >= 3 and not excused[:ties, 0][above].any()


@pytest.mark.parametrize("device,backend", [p for p in PARAMS if p.values[1] in ("cpu", "triton")])
def test_exact_far_from_origin(device, backend):
    """Inputs and codewords around a point of norm 1000: the expanded form ||c||^2 - 2 r.c loses every digit
    of the distances (its rounding, about 0.06, exceeds the distances' spread, about 1e-3), so only an exact
    re-check of the candidates gets the codes right; a top-k search alone cannot (here it keeps too few)."""
    n, k = _size(device, backend, (700, 150), (50, 37))
    d = 16
    g = torch.Generator().manual_seed(11)
    base = torch.randn(d, dtype=torch.float64, generator=g)
    base = base / base.norm() * 1000.0
    cb = (base + 0.01 * torch.randn(1, k, d, dtype=torch.float64, generator=g)).float().to(device)
    x = (base + 0.01 * torch.randn(n, d, dtype=torch.float64, generator=g)).float().to(device)
    out = residual_quantize(x, cb, backend=backend)
    oc, margin, _, gap = (t.cpu() for t in rq_oracle(x, cb, out.codes))
    best = ((x.double().cpu() - cb[0].double().cpu()[oc[:, 0]]) ** 2).sum(1)
    tol = 8 * d * WORK_U[torch.float32] * best  # rounding of the difference-of-vectors distance itself
    strict = margin[:, 0] > tol
    assert strict.float().mean() > 0.9
    assert torch.equal(out.codes.cpu()[strict, 0], oc[strict, 0])
    assert (gap[~strict, 0] <= tol[~strict]).all()


@pytest.mark.parametrize("device,backend", PARAMS)
def test_empty_input(device, backend):
    cb = _codebooks(2, 7, 12, dtype=torch.float32, device=device).requires_grad_()
    x = torch.randn(0, 12, device=device, requires_grad=True)
    out = residual_quantize(x, cb, backend=backend)
    assert out.codes.shape == (0, 2) and out.quantized.shape == (0, 12) and out.residual_sq.shape == (0, 2)
    (out.quantized.sum() + out.residual_sq.sum()).backward()
    assert x.grad.shape == (0, 12)
    assert cb.grad is not None and torch.equal(cb.grad, torch.zeros_like(cb))


def _autograd_oracle(x, cb, codes):
    """The gradient definition of motorec.reference.residual_quantize, written with differentiable torch ops:
    quantized reaches only the codebooks; residual_sq is level-local (earlier levels' codewords detached)."""
    prev = torch.zeros_like(x)
    rsq = []
    for lvl in range(cb.shape[0]):
        c = cb[lvl].index_select(0, codes[:, lvl])
        r = x - prev.detach() - c
        rsq.append((r * r).sum(1))
        prev = prev + c
    return prev, torch.stack(rsq, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("device,backend", PARAMS)
def test_gradients_match_reference_autograd(device, backend, dtype):
    if not _serves(device, backend, dtype):
        pytest.skip(f"{backend} does not serve {dtype}")
    n, d, k, num_levels = _size(device, backend, (1500, 48, 200, 3), (70, 48, 37, 3))
    x = torch.randn(n, d, dtype=dtype, device=device, requires_grad=True)
    cb = _codebooks(num_levels, k, d, dtype=dtype, device=device).requires_grad_()
    wq = torch.randn(n, d, dtype=dtype, device=device)
    wr = torch.rand(n, num_levels, dtype=dtype, device=device) + 0.5
    out = residual_quantize(x, cb, backend=backend)
    ((out.quantized * wq).sum() + (out.residual_sq * wr).sum()).backward()

    x64 = x.detach().double().requires_grad_()
    cb64 = cb.detach().double().requires_grad_()
    q, rsq = _autograd_oracle(x64, cb64, out.codes)
    ((q * wq.double()).sum() + (rsq * wr.double()).sum()).backward()

    # Same-precision torch path, for the tolerance (flash-attention style).
    xt = x.detach().clone().requires_grad_()
    cbt = cb.detach().clone().requires_grad_()
    qt, rt = _autograd_oracle(xt, cbt, out.codes)
    ((qt * wq).sum() + (rt * wr).sum()).backward()
    floor = 64 * WORK_U[dtype]
    for name, got, torch_path, want in (("grad_x", x.grad, xt.grad, x64.grad), ("grad_codebooks", cb.grad, cbt.grad, cb64.grad)):
        assert got.dtype == dtype and got.shape == want.shape
        err, terr = rel_error(got, want), rel_error(torch_path, want)
        assert err <= 2 * terr + floor, f"{name}: relative error {err:.2e} (torch path {terr:.2e})"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=lambda t: str(t).split(".")[-1])
@pytest.mark.parametrize("device,backend", PARAMS)
def test_backward_op_matches_reference(device, backend, dtype):
    """The raw backward op on codes with popular codewords (most rows share a few codes)."""
    if not _serves(device, backend, dtype):
        pytest.skip(f"{backend} does not serve {dtype}")
    n, d, k, num_levels = _size(device, backend, (3001, 100, 37, 3), (69, 100, 37, 2))
    x = torch.randn(n, d, device=device).to(dtype)
    cb = _codebooks(num_levels, k, d, dtype=dtype, device=device)
    codes = torch.randint(0, k, (n, num_levels), device=device)
    codes[: 2 * n // 3] = torch.randint(0, 3, (2 * n // 3, num_levels), device=device)
    gq = torch.randn(n, d, device=device).to(dtype)
    gr = torch.randn(n, num_levels, device=device)
    gx, gc = residual_quantize_backward_op(gq, gr, x, cb, codes, backend)
    assert gx.dtype == dtype and gc.dtype == dtype and gx.shape == x.shape and gc.shape == cb.shape
    gx64, gc64 = ref.residual_quantize_backward(gq.double(), gr.double(), x.double(), cb.double(), codes)
    gxt, gct = ref.residual_quantize_backward(gq, gr, x, cb, codes)
    # The interpreter casts float32 to half types by truncation (compiled Triton rounds to nearest).
    extra = STORE_U[dtype] if _interpreted(device, backend) and dtype != torch.float32 else 0.0
    for name, got, tp, want in (("grad_x", gx, gxt, gx64), ("grad_codebooks", gc, gct, gc64)):
        err, terr = rel_error(got, want), rel_error(tp, want)
        assert err <= 2 * terr + 64 * WORK_U[torch.float32] + extra, f"{name}: relative error {err:.2e} (torch path {terr:.2e})"


@pytest.mark.parametrize("device,backend", PARAMS)
def test_opcheck(device, backend):
    n, d, k, num_levels = _size(device, backend, (130, 20, 19, 3), (37, 20, 19, 2))
    x = torch.randn(n, d, device=device, requires_grad=True)
    cb = _codebooks(num_levels, k, d, dtype=torch.float32, device=device).requires_grad_()
    # test_aot_dispatch_dynamic sums all outputs starting from the int64 codes and fails on the dtype (a
    # limitation of torch's checker); test_torch_compile_fullgraph covers AOT dispatch with dynamic shapes.
    torch.library.opcheck(residual_quantize_op, (x, cb, backend),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    codes = residual_quantize(x, cb, backend=backend).codes
    gq = torch.randn(n, d, device=device)
    gr = torch.randn(n, num_levels, device=device)
    torch.library.opcheck(residual_quantize_backward_op, (gq, gr, x.detach(), cb.detach(), codes, backend))


def _separated(n, d, k, num_levels, device, generator):
    """Inputs whose nearest codeword at every level wins by a wide margin (gradcheck's perturbations of 1e-6
    must not flip a code): x is a sum of one codeword per level plus small noise, codeword scales decreasing."""
    cb = torch.stack([torch.randn(k, d, dtype=torch.float64, generator=generator) * 4.0 * 0.2 ** lvl
                      for lvl in range(num_levels)])
    idx = torch.randint(0, k, (n, num_levels), generator=generator)
    x = sum(cb[lvl][idx[:, lvl]] for lvl in range(num_levels))
    x = x + 0.01 * torch.randn(n, d, dtype=torch.float64, generator=generator)
    return x.to(device), cb.to(device)


@pytest.mark.parametrize("device,backend", [p for p in PARAMS if p.values[1] in ("torch", "cpu")])
def test_gradcheck_float64(device, backend):
    g = torch.Generator().manual_seed(3)
    # One level: the defined gradient is the true derivative for both inputs.
    x, cb = _separated(9, 5, 6, 1, device, g)
    x.requires_grad_()
    cb.requires_grad_()

    def f(x, cb):
        out = residual_quantize(x, cb, backend=backend)
        return out.quantized, out.residual_sq

    assert torch.autograd.gradcheck(f, (x, cb), eps=1e-6, atol=1e-6)
    # Three levels: residual_sq is level-local for the codebooks (not the true derivative) but exact for x.
    x, cb = _separated(8, 5, 6, 3, device, g)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: residual_quantize(x, cb, backend=backend).residual_sq, (x,),
                                    eps=1e-6, atol=1e-6)
    assert torch.equal(residual_quantize(x, cb, backend=backend).codes, residual_quantize(x, cb, backend="torch").codes)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("device,backend", PARAMS)
def test_torch_compile_fullgraph(device, backend, dynamic):
    torch._dynamo.reset()
    n, d, k, num_levels = _size(device, backend, (300, 24, 40, 3), (40, 24, 20, 2))
    x = torch.randn(n, d, device=device, requires_grad=True)
    cb = _codebooks(num_levels, k, d, dtype=torch.float32, device=device).requires_grad_()

    def step(x, cb):
        out = motorec.ops.residual_quantize(x, cb, backend=backend)
        loss = out.residual_sq.mean(0).sum() + (out.quantized * out.quantized).mean()
        return loss, out.codes

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    loss_c, codes_c = compiled(x, cb)
    gx_c, gcb_c = torch.autograd.grad(loss_c, (x, cb))
    loss_e, codes_e = step(x, cb)
    gx_e, gcb_e = torch.autograd.grad(loss_e, (x, cb))
    assert torch.equal(codes_c, codes_e)
    torch.testing.assert_close(loss_c, loss_e)
    torch.testing.assert_close(gx_c, gx_e)
    torch.testing.assert_close(gcb_c, gcb_e)


@pytest.mark.skipif(not _ext.c_has_op("residual_quantize_fwd"), reason=_ext.C_REASON or "no C++ residual_quantize")
def test_cpu_kernel_rejects_bad_inputs():
    fwd = torch.ops.motorec_C.residual_quantize_fwd
    bwd = torch.ops.motorec_C.residual_quantize_bwd
    x, cb = torch.randn(5, 4), torch.randn(2, 3, 4)
    with pytest.raises(RuntimeError, match="codebooks must be 3-D"):
        fwd(x, cb[0])
    with pytest.raises(RuntimeError, match="x has D=4 but codebooks have D=3"):
        fwd(x, cb[..., :3])
    with pytest.raises(RuntimeError, match="codebooks .* must have the dtype of x"):
        fwd(x, cb.double())
    with pytest.raises(RuntimeError, match="x must be float32 or float64"):
        fwd(x.half(), cb.half())
    codes = torch.zeros(5, 2, dtype=torch.int64)
    with pytest.raises(RuntimeError, match=r"codes must lie in \[0, K=3\)"):
        bwd(torch.randn(5, 4), torch.randn(5, 2), x, cb, codes + 3)
    with pytest.raises(RuntimeError, match="grad_residual_sq must be"):
        bwd(torch.randn(5, 4), torch.randn(5, 3), x, cb, codes)
    with pytest.raises(RuntimeError, match="codes must be int64"):
        bwd(torch.randn(5, 4), torch.randn(5, 2), x, cb, codes.int())
    with pytest.raises(RuntimeError, match=r"(?i)codebooks"):
        fwd(x, torch.randn(0, 3, 4))  # L = 0
    with pytest.raises(RuntimeError, match=r"(?i)codebooks|K"):
        fwd(x, torch.randn(2, 0, 4))  # K = 0
    with pytest.raises(RuntimeError, match=r"(?i)x"):
        fwd(x[:, 0], cb)  # x 1-D


@pytest.mark.parametrize(
    "x_shape,cb_shape,kw,exc,match",
    [
        ((5, 4), (0, 3, 4), {}, ValueError, r"codebooks must have at least one level \(L >= 1\), got shape \(0, 3, 4\)"),
        ((5, 4), (2, 0, 4), {}, ValueError, r"at least one codeword per level \(K >= 1\), got shape \(2, 0, 4\)"),
        ((5, 4), (2, 3, 5), {}, ValueError, r"x has D=4 but codebooks have D=5"),
        ((5, 4), (2, 3, 4), {"cb_dtype": torch.float64}, TypeError, r"x \(torch.float32\) and codebooks \(torch.float64\) must have the same dtype"),
        ((5, 4), (2, 3, 4), {"cb_device": "meta"}, ValueError, r"x is on cpu but codebooks are on meta"),
        ((5, 4), (2, 3, 4), {"x_dtype": torch.int64, "cb_dtype": torch.int64}, TypeError, r"x must be float16, bfloat16, float32 or float64, got torch.int64"),
        ((5,), (2, 3, 4), {}, ValueError, r"x must be 2-D, got shape \(5,\)"),
        ((5, 4), (3, 4), {}, ValueError, r"codebooks must be 3-D, got shape \(3, 4\)"),
    ],
    ids=["L=0", "K=0", "D-mismatch", "dtype-mismatch", "device-mismatch", "int-dtype", "x-1-D", "codebooks-2-D"],
)
def test_residual_quantize_refuses(x_shape, cb_shape, kw, exc, match):
    x = torch.randn(x_shape).to(kw.get("x_dtype", torch.float32))
    cb = torch.randn(cb_shape).to(kw.get("cb_dtype", torch.float32)).to(kw.get("cb_device", "cpu"))
    with pytest.raises(exc, match=match):
        residual_quantize(x, cb)


def _non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """Same values as ``t``, but a strided view (column-major with a gap)."""
    wide = torch.empty(t.shape[1], t.shape[0] * 2, dtype=t.dtype).t()[::2]
    wide.copy_(t)
    assert not wide.is_contiguous() and torch.equal(wide, t)
    return wide


def test_residual_quantize_non_contiguous_is_correct():
    xs = _non_contiguous(torch.randn(37, 9))
    cb = torch.randn(3, 9, 11).transpose(1, 2)  # [3, 11, 9] non-contiguous codebooks
    assert not cb.is_contiguous()
    want = ref.residual_quantize_forward(xs.contiguous(), cb.contiguous())
    for backend in backends_here("residual_quantize", "cpu", torch.float32):
        out = residual_quantize(xs, cb, backend=backend)
        torch.testing.assert_close(out.codes, want[0], msg=f"codes backend={backend}")
        torch.testing.assert_close(out.quantized, want[1], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(_ext.TRITON_INTERPRET or _ext.CUDA_AVAILABLE,
                    reason="runs the triton cases in a TRITON_INTERPRET=1 subprocess on machines without a GPU")
def test_triton_interpreter():
    run_triton_cases_under_interpreter(__file__)


@pytest.mark.skipif(not _ext.c_has_op("residual_quantize_fwd"), reason=_ext.C_REASON or "no C++ residual_quantize")
def test_auto_passes_cpu_over_only_for_tiny_float32_codebooks(no_backend_env):
    pick = motorec.ops.select_backend
    assert pick(OP, "auto", device="cpu", dtype=torch.float32, n=20000, dim=64, k=256, levels=3) == "cpu"
    assert pick(OP, "auto", device="cpu", dtype=torch.float64, n=20000, dim=3, k=2, levels=3) == "cpu"
    assert pick(OP, "auto", device="cpu", dtype=torch.float32, n=20000, dim=3, k=2, levels=3) == "torch"
    text = motorec.ops.explain(OP, device="cpu", dtype=torch.float32, n=20000, dim=3, k=2, levels=3)
    assert "auto picks torch" in text
    # An explicit request still runs the kernel.
    x, cb = torch.randn(50, 3), torch.randn(2, 2, 3)
    _check_codes(residual_quantize(x, cb, backend="cpu").codes, x, cb)


@pytest.mark.parametrize("chunk_elems", [1, 97, 1 << 24])
def test_reference_duplicate_map_matches_unique(chunk_elems):
    """The reference's K x K equality map (no torch.unique, no host sync) gives each codeword the lowest index
    of an equal codeword, as the unique-based definition does, for any row chunking."""
    g = torch.Generator().manual_seed(3)
    c = torch.randn(41, 5, generator=g)
    c[[7, 19, 40]] = c[2].clone()
    c[[30, 33]] = c[11].clone()
    c[25] = -0.0 * c[25]  # a zero codeword, with negative zeros
    c[26] = 0.0
    _, inv = torch.unique(c, dim=0, return_inverse=True)
    want = torch.full((41,), 41, dtype=torch.int64).scatter_reduce_(0, inv, torch.arange(41), "amin")[inv]
    got = ref._lowest_duplicate(c, chunk_elems=chunk_elems)
    assert torch.equal(got, want)
    assert got[[2, 7, 19, 40, 11, 30, 33, 26]].tolist() == [2, 2, 2, 2, 11, 11, 11, 25]


def _host_syncing_ops(fn, *args):
    """Names of the aten ops ``fn(*args)`` calls whose output shape or value the host must read back (tags
    ``dynamic_output_shape`` / ``data_dependent_output``: unique, nonzero, bincount, item, ...): each is a
    device-to-host sync on CUDA."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if torch.Tag.dynamic_output_shape in func.tags or torch.Tag.data_dependent_output in func.tags:
                seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Record():
        fn(*args)
    return seen


def test_reference_has_no_host_sync():
    """The reference resolves duplicated codewords without torch.unique: no op with a data-dependent shape or
    value, so no host sync on CUDA, and torch.compile sees the whole search (the fair ``torch_compile`` row)."""
    x, cb = torch.randn(37, 6), torch.randn(2, 9, 6)
    cb[0, 5] = cb[0, 1].clone()
    assert _host_syncing_ops(ref.residual_quantize_forward, x, cb) == []
    codes = ref.residual_quantize_forward(x, cb)[0]
    assert _host_syncing_ops(ref.residual_quantize_backward, torch.randn(37, 6), torch.randn(37, 2), x, cb,
                             codes) == []
    # The recorder does see such ops (the check can fail).
    assert _host_syncing_ops(lambda c: torch.unique(c, dim=0), cb[0]) != []


def test_reference_autograd_form_matches_forward_and_backward():
    """``residual_quantize_autograd`` (the torch.compile training-step baseline) returns the forward's outputs
    bit for bit and, through plain autograd, the reference backward's gradients (float64)."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(53, 7, dtype=torch.float64, generator=g)
    cb = _codebooks(3, 10, 7, dtype=torch.float64, device="cpu", generator=g)
    cb[1, 6] = cb[1, 2].clone()
    xl, cbl = x.clone().requires_grad_(True), cb.clone().requires_grad_(True)
    out = ref.residual_quantize_autograd(xl, cbl)
    for got, want in zip(out, ref.residual_quantize_forward(x, cb)):
        assert torch.equal(got.detach(), want)
    gq = torch.randn(53, 7, dtype=torch.float64, generator=g)
    gr = torch.randn(53, 3, dtype=torch.float64, generator=g)
    gx, gc = torch.autograd.grad((out[1] * gq).sum() + (out[2] * gr).sum(), [xl, cbl])
    wx, wc = ref.residual_quantize_backward(gq, gr, x, cb, out[0])
    torch.testing.assert_close(gx, wx, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gc, wc, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not (_ext.TRITON_INTERPRET or _ext.CUDA_AVAILABLE), reason="needs a GPU or TRITON_INTERPRET=1")
def test_triton_exact_per_row_pass():
    """Rows the search cannot certify are redone by the exact per-row pass from the level that failed. With the
    certificate's bound scaled up, every row goes there; codes, quantized and residual_sq must be the same
    bits as when (almost) every row is certified, and equal the float64 codes away from near-ties."""
    pytest.importorskip("triton")
    from motorec.kernels import residual_quantize as kern

    device = "cuda" if _ext.CUDA_AVAILABLE else "cpu"
    n, k = (2000, 256) if device == "cuda" else (45, 40)
    d, num_levels = 24, 3
    g = torch.Generator().manual_seed(5)
    cb = _codebooks(num_levels, k, d, dtype=torch.float32, device="cpu", generator=g)
    cb[1, [7, 11]] = cb[1, 3].clone()  # duplicates: the search masks them, the exact pass keeps the lowest
    x = torch.randn(n, d, generator=g)
    x[: n // 3] = cb[0, 5] + cb[1, 3] + 0.01 * x[: n // 3]
    x, cb = x.to(device), cb.to(device)
    normal = kern.residual_quantize_fwd(x, cb)
    forced = kern.residual_quantize_fwd(x, cb, bound_scale=1e30)
    for a, b in zip(normal, forced):
        assert torch.equal(a, b)
    # The default GPU mode's code path (hi/lo split of the operands; the interpreter's dot is float32).
    for a, b in zip(kern.residual_quantize_fwd(x, cb, precision="tf32x3"), forced):
        assert torch.equal(a, b)
    _check_codes(forced[0], x, cb)
    assert not torch.isin(forced[0][:, 1].cpu(), torch.tensor([7, 11])).any()
    assert (forced[0][: n // 3, 1] == 3).all()


@pytest.mark.skipif(not (_ext.TRITON_INTERPRET or _ext.CUDA_AVAILABLE), reason="needs a GPU or TRITON_INTERPRET=1")
def test_triton_launchers_have_no_host_sync():
    """The Triton launchers' torch ops (duplicate map, centring, the backward's codeword counts, now a fixed-size
    index_add_ instead of bincount) have no data-dependent shape or value: nothing waits for the device."""
    pytest.importorskip("triton")
    from motorec.kernels import residual_quantize as kern

    device = "cuda" if _ext.CUDA_AVAILABLE else "cpu"
    x, cb = torch.randn(40, 12, device=device), torch.randn(2, 9, 12, device=device)
    assert _host_syncing_ops(kern.residual_quantize_fwd, x, cb) == []
    codes = kern.residual_quantize_fwd(x, cb)[0]
    args = (torch.randn(40, 12, device=device), torch.randn(40, 2, device=device), x, cb, codes)
    assert _host_syncing_ops(kern.residual_quantize_bwd, *args) == []


def test_triton_search_register_cap(monkeypatch):
    """The search runs under a 128-register cap where it fits without spilling (the compile-time gate checks the
    spills), uncapped elsewhere; MOTOREC_RQ_MAXNREG overrides it (0 = no cap) and refuses what is not a count."""
    pytest.importorskip("triton")
    from motorec.kernels import residual_quantize as kern

    monkeypatch.delenv("MOTOREC_RQ_MAXNREG", raising=False)
    assert kern._fwd_maxnreg(64, "tf32x3") == 128
    assert kern._fwd_maxnreg(32, "tf32") == 128
    assert kern._fwd_maxnreg(128, "tf32x3") is None
    assert kern._fwd_maxnreg(64, "ieee") is None
    monkeypatch.setenv("MOTOREC_RQ_MAXNREG", "0")
    assert kern._fwd_maxnreg(64, "tf32x3") is None
    monkeypatch.setenv("MOTOREC_RQ_MAXNREG", "168")
    assert kern._fwd_maxnreg(128, "tf32x3") == 168
    for bad in ("many", "16", "300"):
        monkeypatch.setenv("MOTOREC_RQ_MAXNREG", bad)
        with pytest.raises(ValueError, match="MOTOREC_RQ_MAXNREG"):
            kern._fwd_maxnreg(64, "tf32x3")
