"""``motorec::code_usage`` on every backend available here, against float64 (:mod:`motorec.reference.code_usage`
run on upcast inputs), and the reference against ``RQVAE.soft_assignments(...).mean(1)`` (the semantics).

Tolerance after flash-attention: a backend's relative error against float64 may be at most about twice that of
the torch reference at the same precision, plus a rounding floor.

Triton runs under ``TRITON_INTERPRET=1``, which must be set before triton is imported: on a machine without a
GPU, :func:`test_triton_interpreter` re-runs this file's ``triton`` cases in a subprocess with the variable set
(tiny shapes). On a GPU machine the ``cuda-triton`` cases run compiled in this process.
"""
from __future__ import annotations

import math
import zlib

import pytest
import torch

import motorec
from motorec import _ext
from motorec.nn.rqvae import RQVAE
from motorec.ops.code_usage import code_usage, code_usage_backward_op, code_usage_op
from motorec.reference import code_usage as ref
from motorec.testing import (
    WORK_U,
    backend_params,
    backends_here,
    code_usage_oracle,
    rel_error,
    run_triton_cases_under_interpreter,
    tol_vs_torch,
)

OP = "code_usage"
PARAMS = backend_params(OP)
MODES = ("softmax", "sigmoid")


def _interpreted(device, backend) -> bool:
    return backend == "triton" and torch.device(device).type == "cpu"


def _size(device, backend, big, small):
    """Shapes for compiled backends, and tiny ones for the Triton interpreter."""
    return small if _interpreted(device, backend) else big


def _inputs(n, d, k, levels, *, dtype=torch.float32, device="cpu", generator=None, scale=1.0):
    """z_e near the codebooks' scale (later levels smaller, as trained residual codebooks are) and random
    tokens: a spread of soft assignments, neither uniform nor one-hot."""
    s = torch.tensor([scale * 0.5 ** lvl for lvl in range(levels)], dtype=torch.float64).view(-1, 1, 1)
    cb = torch.randn(levels, k, d, dtype=torch.float64, generator=generator) * s
    z = torch.randn(n, d, dtype=torch.float64, generator=generator) * scale
    codes = torch.randint(0, k, (n, levels), generator=generator)
    return z.to(dtype=dtype, device=device), codes.to(device), cb.to(dtype=dtype, device=device)


def _run(z, codes, cb, temperature, mode, backend, grad_rho):
    z = z.detach().clone().requires_grad_()
    cb = cb.detach().clone().requires_grad_()
    rho = code_usage(z, codes, cb, temperature, mode, backend=backend)
    gz, gc = torch.autograd.grad(rho, (z, cb), grad_rho.to(device=rho.device, dtype=rho.dtype))
    return rho.detach(), gz, gc


def _check_all(z, codes, cb, temperature, mode, backend, *, floor=None):
    g = torch.randn(cb.shape[0], cb.shape[1], dtype=torch.float64)
    want = code_usage_oracle(z, codes, cb, temperature, mode, g)
    got = _run(z, codes, cb, temperature, mode, backend, g)
    same = _run(z, codes, cb, temperature, mode, "torch", g) if z.device.type == "cpu" else None
    u = WORK_U[z.dtype]
    if floor is None:
        floor = 256 * u
        if z.dtype == torch.float64:
            # here the torch path is the float64 oracle itself (error 0), so the floor alone must cover another
            # summation order over the N rows that rho and the codebook gradient reduce: ~sqrt(N) u typical
            floor *= max(1.0, math.sqrt(z.shape[0]))
    for name, a, w, t in zip(("rho", "grad_z_e", "grad_codebooks"), got, want, same or (None,) * 3):
        assert a.shape == w.shape and a.dtype == (z.dtype if name != "rho" else ref._acc_dtype(z.dtype))
        assert torch.isfinite(a).all(), f"{name}: non-finite values"
        terr = rel_error(t, w) if t is not None else 0.0
        err = rel_error(a, w)
        assert err <= tol_vs_torch(terr, floor, add_floor=True), \
            f"{backend} {mode} {name}: relative error {err:.2e} (torch path {terr:.2e})"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", ["odd", "levels1", "k1"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("device,backend", PARAMS)
def test_matches_float64(device, backend, dtype, shape, mode):
    if dtype not in (torch.float32, torch.float64) or backend not in backends_here(OP, device, dtype):
        pytest.skip(f"{backend} does not serve {dtype}")
    big = {"odd": (1823, 123, 37, 3), "levels1": (700, 64, 256, 1), "k1": (300, 17, 1, 2)}[shape]
    small = {"odd": (45, 23, 37, 3), "levels1": (33, 16, 40, 1), "k1": (20, 17, 1, 2)}[shape]
    g = torch.Generator().manual_seed(zlib.crc32(f"{shape}-{mode}".encode()) % 1000)  # hash() is salted per run
    z, codes, cb = _inputs(*_size(device, backend, big, small), dtype=dtype, device=device, generator=g)
    _check_all(z, codes, cb, 0.7, mode, backend)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("device,backend", PARAMS)
def test_extreme_temperatures(device, backend, mode):
    """Small T: logits span hundreds (the online softmax must rescale); large T: nearly uniform."""
    g = torch.Generator().manual_seed(7)
    z, codes, cb = _inputs(*_size(device, backend, (500, 32, 100, 2), (40, 16, 50, 2)), device=device,
                           generator=g, scale=3.0)
    for temperature in (0.02, 50.0):
        # Logits of size |s| ~ ||r|| ||c|| / T carry rounding that grows with 1 / T in every path.
        _check_all(z, codes, cb, temperature, mode, backend, floor=4096 * WORK_U[z.dtype] / min(temperature, 1.0))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("device,backend", PARAMS)
def test_duplicate_codewords(device, backend, mode):
    g = torch.Generator().manual_seed(11)
    z, codes, cb = _inputs(*_size(device, backend, (400, 20, 30, 2), (30, 20, 30, 2)), device=device, generator=g)
    cb[:, 10:20] = cb[:, :10]
    cb[1, 25:] = cb[1, 3]
    _check_all(z, codes, cb, 1.0, mode, backend)
    rho = code_usage(z, codes, cb, 1.0, mode, backend=backend)
    torch.testing.assert_close(rho[:, 10:20], rho[:, :10], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("device,backend", PARAMS)
def test_empty_input_gives_zeros(device, backend, mode):
    z, codes, cb = _inputs(0, 12, 9, 3, device=device)
    z.requires_grad_()
    cb.requires_grad_()
    rho = code_usage(z, codes, cb, 1.0, mode, backend=backend)
    assert rho.shape == (3, 9) and torch.equal(rho, torch.zeros_like(rho))
    gz, gc = torch.autograd.grad(rho.sum() + 0.0 * cb.sum(), (z, cb))
    assert gz.shape == (0, 12) and torch.equal(gc, torch.zeros_like(gc))


@pytest.mark.parametrize("mode", MODES)
def test_reference_is_rqvae_soft_assignments(mode):
    """The op's definition is the model's: values and gradients of ``soft_assignments(...).mean(1)``."""
    m = RQVAE(input_dim=8, latent_dim=11, num_levels=3, codebook_size=13, sparse_mode=mode,
              temperature=0.6).double()
    z = torch.randn(70, 11, dtype=torch.float64, requires_grad=True)
    codes = torch.randint(0, 13, (70, 3))
    g = torch.randn(3, 13, dtype=torch.float64)
    want = m.soft_assignments(z, codes).mean(1)
    wz, wc = torch.autograd.grad(want, (z, m.quantizer.codebooks), g)
    for backend in backends_here(OP, "cpu", torch.float64):
        if backend == "triton":
            continue
        got = code_usage(z, codes, m.quantizer.codebooks, 0.6, mode, backend=backend)
        gz, gc = torch.autograd.grad(got, (z, m.quantizer.codebooks), g)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(gz, wz, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(gc, wc, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("device,backend", [p for p in PARAMS if p.values[1] in ("torch", "cpu")])
def test_gradcheck_float64(device, backend):
    for mode in MODES:
        z, codes, cb = _inputs(9, 5, 6, 3, dtype=torch.float64, device=device)
        z.requires_grad_()
        cb.requires_grad_()
        assert torch.autograd.gradcheck(lambda z, cb: code_usage(z, codes, cb, 0.8, mode, backend=backend),
                                        (z, cb), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("device,backend", PARAMS)
def test_opcheck(device, backend):
    n, d, k, levels = _size(device, backend, (130, 20, 19, 3), (37, 20, 19, 2))
    z, codes, cb = _inputs(n, d, k, levels, device=device)
    z.requires_grad_()
    cb.requires_grad_()
    for mode in MODES:
        # test_aot_dispatch_dynamic differentiates every output; aux is not differentiable by design
        # (test_torch_compile_fullgraph covers AOT dispatch with dynamic shapes).
        torch.library.opcheck(code_usage_op, (z, codes, cb, 0.9, mode, backend),
                              test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
        _, aux = code_usage_op(z.detach(), codes, cb.detach(), 0.9, mode, backend)
        torch.library.opcheck(code_usage_backward_op,
                              (torch.randn(levels, k, device=device), z.detach(), codes, cb.detach(), aux, 0.9,
                               mode, backend))


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("device,backend", PARAMS)
def test_torch_compile_fullgraph(device, backend, dynamic):
    torch._dynamo.reset()
    z, codes, cb = _inputs(*_size(device, backend, (300, 24, 40, 3), (40, 24, 20, 2)), device=device)
    z.requires_grad_()
    cb.requires_grad_()

    def step(z, cb):
        rho = motorec.ops.code_usage(z, codes, cb, 0.5, "softmax", backend=backend)
        q = rho.clamp(1e-6, 1 - 1e-6)
        return (q * torch.log(q)).sum() + motorec.ops.code_usage(z, codes, cb, 2.0, "sigmoid", backend=backend).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    loss_c = compiled(z, cb)
    gz_c, gcb_c = torch.autograd.grad(loss_c, (z, cb))
    loss_e = step(z, cb)
    gz_e, gcb_e = torch.autograd.grad(loss_e, (z, cb))
    torch.testing.assert_close(loss_c, loss_e)
    torch.testing.assert_close(gz_c, gz_e)
    torch.testing.assert_close(gcb_c, gcb_e)


def test_bad_inputs_name_the_argument():
    z, codes, cb = _inputs(10, 6, 5, 2)
    with pytest.raises(ValueError, match="z_e has D=6 but codebooks have D=5"):
        code_usage(z, codes, cb[..., :5])
    with pytest.raises(TypeError, match="same dtype"):
        code_usage(z, codes, cb.double())
    with pytest.raises(ValueError, match=r"codes must be \[N, L\]"):
        code_usage(z, codes[:, :1], cb)
    with pytest.raises(TypeError, match="codes must be an integer tensor"):
        code_usage(z, codes.float(), cb)
    with pytest.raises(ValueError, match="temperature"):
        code_usage(z, codes, cb, temperature=0.0)
    with pytest.raises(ValueError, match="mode"):
        code_usage(z, codes, cb, mode="relu")
    with pytest.raises(ValueError, match="codebooks must have L >= 1 and K >= 1"):
        code_usage(z, codes[:, :0], cb[:0])


@pytest.mark.skipif(not _ext.HAS_C or "cpu" not in backends_here(OP, "cpu"),
                    reason=_ext.C_REASON or "motorec._C has no code_usage")
def test_cpu_kernel_rejects_bad_inputs():
    fwd, bwd = torch.ops.motorec_C.code_usage_fwd, torch.ops.motorec_C.code_usage_bwd
    z, codes, cb = _inputs(10, 6, 5, 2)
    with pytest.raises(RuntimeError, match=r"codes must lie in \[0, K=5\), got values in \[0, 7\]"):
        fwd(z, codes + 3, cb, 1.0, True)
    with pytest.raises(RuntimeError, match="codes must be int64"):
        fwd(z, codes.int(), cb, 1.0, True)
    with pytest.raises(RuntimeError, match="temperature must be finite and > 0"):
        fwd(z, codes, cb, -1.0, False)
    with pytest.raises(RuntimeError, match="z_e must be float32 or float64"):
        fwd(z.half(), codes, cb.half(), 1.0, True)
    _, aux = fwd(z, codes, cb, 1.0, True)
    with pytest.raises(RuntimeError, match="grad_rho must be"):
        bwd(torch.randn(2, 4), z, codes, cb, aux, 1.0, True)
    with pytest.raises(RuntimeError, match="aux must be"):
        bwd(torch.randn(2, 5), z, codes, cb, aux[:3], 1.0, True)


@pytest.mark.skipif(_ext.TRITON_INTERPRET or _ext.CUDA_AVAILABLE,
                    reason="runs the triton cases in a TRITON_INTERPRET=1 subprocess on machines without a GPU")
def test_triton_interpreter():
    run_triton_cases_under_interpreter(__file__)


@pytest.mark.skipif(not _ext.TRITON_INTERPRET, reason="half inputs on the Triton path: interpreter run only")
def test_triton_half_inputs():
    z, codes, cb = _inputs(40, 16, 20, 2, dtype=torch.float16)
    g = torch.randn(2, 20, dtype=torch.float64)
    want = code_usage_oracle(z, codes, cb, 1.0, "softmax", g)
    got = _run(z, codes, cb, 1.0, "softmax", "triton", g)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float16
    for a, w in zip(got, want):
        assert rel_error(a, w) <= 4e-3  # grads are stored in float16 (2^-11)
