"""``motorec::source_attention`` on every backend available here, against float64 (the tanh form under
autograd, :func:`motorec.reference.source_attention.source_attention_autograd`, on upcast inputs).

Tolerance after flash-attention: a backend's relative error against float64 may be at most about twice that of
the torch path at the same precision, plus a rounding floor.
"""
from __future__ import annotations

import math

import pytest
import torch

import motorec
from motorec import _ext
from motorec.ops.source_attention import source_attention, source_attention_backward_op, source_attention_op
from motorec.reference import source_attention as ref
from motorec.testing import WORK_U, backend_params, backends_here, rel_error, tol_vs_torch

OP = "source_attention"
PARAMS = backend_params(OP)


def _inputs(m, n, d, *, dtype=torch.float32, device="cpu", seed=0, scale=1.0):
    """Sources of unit scale and a projection of the nn.Linear init's scale: logits of a few units, weights
    neither uniform nor one-hot."""
    g = torch.Generator().manual_seed(seed)
    hs = [torch.randn(n, d, dtype=torch.float64, generator=g) * scale for _ in range(m)]
    w = (torch.rand(d, d, dtype=torch.float64, generator=g) * 2 - 1) / math.sqrt(d)
    b = (torch.rand(d, dtype=torch.float64, generator=g) * 2 - 1) / math.sqrt(d)
    q = torch.randn(d, dtype=torch.float64, generator=g)
    return [h.to(dtype=dtype, device=device) for h in hs], *(t.to(dtype=dtype, device=device) for t in (w, b, q))


def _run(hs, w, b, q, backend, g_out, g_attn, fn=source_attention):
    leaves = [t.detach().clone().requires_grad_() for t in (*hs, w, b, q)]
    out, attn = fn(leaves[:len(hs)], *leaves[len(hs):], backend=backend) if backend else \
        fn(leaves[:len(hs)], *leaves[len(hs):])
    loss = (out * g_out.to(out)).sum()
    if g_attn is not None:
        loss = loss + (attn * g_attn.to(attn)).sum()
    grads = torch.autograd.grad(loss, leaves)
    return (out.detach(), attn.detach(), *grads)


def _check_all(hs, w, b, q, backend, *, with_g_attn=True, floor=None):
    n, d = hs[0].shape
    g = torch.Generator().manual_seed(5)
    g_out = torch.randn(n, d, dtype=torch.float64, generator=g)
    g_attn = torch.randn(n, len(hs), dtype=torch.float64, generator=g) if with_g_attn else None
    up = [t.detach().double().cpu() for t in (*hs, w, b, q)]
    want = _run(up[:len(hs)], *up[len(hs):], None, g_out, g_attn, fn=ref.source_attention_autograd)
    got = _run(hs, w, b, q, backend, g_out, g_attn)
    same = _run(hs, w, b, q, "torch", g_out, g_attn) if hs[0].device.type == "cpu" else None
    u = WORK_U[hs[0].dtype]
    if floor is None:
        # the parameters' gradients reduce over N * M rows: another summation order costs ~sqrt(N) u
        floor = 256 * u * max(1.0, math.sqrt(n))
    names = ["out", "attn"] + [f"grad_hs[{i}]" for i in range(len(hs))] + ["grad_weight", "grad_bias", "grad_query"]
    for i, (name, a, wv) in enumerate(zip(names, got, want)):
        assert a.shape == wv.shape and a.dtype == hs[0].dtype, name
        assert torch.isfinite(a).all(), f"{name}: non-finite values"
        terr = rel_error(same[i], wv) if same is not None else 0.0
        err = rel_error(a, wv)
        assert err <= tol_vs_torch(terr, floor, add_floor=True), \
            f"{backend} {name}: relative error {err:.2e} (torch path {terr:.2e})"


@pytest.mark.parametrize("with_g_attn", [True, False], ids=["g_attn", "no_g_attn"])
@pytest.mark.parametrize("shape", ["model", "odd", "one_source", "tiny"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("device,backend", PARAMS)
def test_matches_float64(device, backend, dtype, shape, with_g_attn):
    if backend not in backends_here(OP, device, dtype):
        pytest.skip(f"{backend} does not serve {dtype}")
    # "model": MoToRec's two modalities at d = 64 over several row blocks and a ragged last one; "odd": three
    # sources, odd sizes; "tiny": fewer rows than a block
    m, n, d = {"model": (2, 2500, 64), "odd": (3, 1031, 37), "one_source": (1, 300, 16), "tiny": (2, 3, 5)}[shape]
    hs, w, b, q = _inputs(m, n, d, dtype=dtype, device=device, seed=n)
    _check_all(hs, w, b, q, backend, with_g_attn=with_g_attn)


@pytest.mark.parametrize("device,backend", PARAMS)
def test_near_ties_and_saturated_weights(device, backend):
    """Identical sources: every logit ties, the weights are exactly uniform up to rounding and the output is
    the source itself; large logits (sources 30x the usual scale): the softmax saturates, nothing overflows."""
    hs, w, b, q = _inputs(3, 200, 12, device=device, seed=3)
    same = [hs[0]] * 3
    out, attn = source_attention(same, w, b, q, backend=backend)
    torch.testing.assert_close(attn, torch.full_like(attn, 1 / 3), rtol=0, atol=1e-6)
    torch.testing.assert_close(out, hs[0], rtol=1e-6, atol=1e-6)
    _check_all(same, w, b, q, backend)
    big, w, b, q = _inputs(2, 300, 16, device=device, seed=4, scale=30.0)
    _check_all(big, w, b, 30.0 * q, backend)


@pytest.mark.parametrize("device,backend", PARAMS)
def test_empty_input(device, backend):
    hs, w, b, q = _inputs(2, 0, 8, device=device)
    leaves = [t.clone().requires_grad_() for t in (*hs, w, b, q)]
    out, attn = source_attention(leaves[:2], *leaves[2:], backend=backend)
    assert out.shape == (0, 8) and attn.shape == (0, 2)
    grads = torch.autograd.grad(out.sum() + attn.sum(), leaves, allow_unused=False)
    assert grads[0].shape == (0, 8) and all(torch.equal(g, torch.zeros_like(g)) for g in grads[2:])


@pytest.mark.parametrize("device,backend", PARAMS)
def test_gradcheck_float64(device, backend):
    hs, w, b, q = _inputs(3, 11, 5, dtype=torch.float64, device=device)
    leaves = [t.clone().requires_grad_() for t in (w, b, q, *hs)]
    assert torch.autograd.gradcheck(lambda w, b, q, *hs: source_attention(list(hs), w, b, q, backend=backend),
                                    leaves)


@pytest.mark.parametrize("device,backend", PARAMS)
def test_opcheck(device, backend):
    hs, w, b, q = _inputs(2, 70, 9, device=device)
    hs = [h.requires_grad_() for h in hs]
    w, b, q = (t.requires_grad_() for t in (w, b, q))
    # aux is not differentiable by design, so opcheck's AOT test (which differentiates every output) is left to
    # test_torch_compile_fullgraph
    torch.library.opcheck(source_attention_op, (hs, w, b, q, backend),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    plain = [h.detach() for h in hs]
    out, attn, aux = source_attention_op(plain, w.detach(), b.detach(), q.detach(), backend)
    for g_attn in (torch.randn(70, 2, device=device), None):
        torch.library.opcheck(source_attention_backward_op,
                              (torch.randn(70, 9, device=device), g_attn, plain, w.detach(), b.detach(), q.detach(),
                               attn, aux, backend))


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("device,backend", PARAMS)
def test_torch_compile_fullgraph(device, backend, dynamic):
    torch._dynamo.reset()
    hs, w, b, q = _inputs(2, 130, 16, device=device)
    leaves = [t.requires_grad_() for t in (*hs, w, b, q)]

    def step(h0, h1, w, b, q):
        out, attn = motorec.ops.source_attention([h0, h1], w, b, q, backend=backend)
        return (out ** 2).sum() + attn[:, 0].sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    loss_c = compiled(*leaves)
    grads_c = torch.autograd.grad(loss_c, leaves)
    loss_e = step(*leaves)
    grads_e = torch.autograd.grad(loss_e, leaves)
    torch.testing.assert_close(loss_c, loss_e)
    for a, e in zip(grads_c, grads_e):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("device,backend", PARAMS)
def test_thread_counts_agree(device, backend):
    """The C++ kernel splits rows over threads and reduces the parameters' gradients per thread: one and two
    threads give the same values up to that summation order."""
    hs, w, b, q = _inputs(2, 3000, 32, device=device, seed=9)
    g_out = torch.randn(3000, 32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(hs, w, b, q, backend, g_out, None)
        torch.set_num_threads(2)
        two = _run(hs, w, b, q, backend, g_out, None)
    finally:
        torch.set_num_threads(before)
    for a, c in zip(one, two):  # float32 sums over 6,000 rows in another order: a few ulp, relative
        assert rel_error(a, c) <= 1e-5


def test_bad_inputs_name_the_argument():
    hs, w, b, q = _inputs(2, 10, 6)
    with pytest.raises(TypeError, match="hs must be a list or tuple"):
        source_attention(torch.stack(hs), w, b, q)
    with pytest.raises(ValueError, match="at least one"):
        source_attention([], w, b, q)
    with pytest.raises(ValueError, match=r"hs\[1\] is \(10, 5\)"):
        source_attention([hs[0], hs[1][:, :5]], w, b, q)
    with pytest.raises(ValueError, match=r"hs\[1\] is .*float64"):
        source_attention([hs[0], hs[1].double()], w, b, q)
    with pytest.raises(ValueError, match=r"hs\[0\] must be 2-D"):
        source_attention([hs[0][0], hs[1][0]], w, b, q)
    with pytest.raises(TypeError, match=r"hs\[0\] must be float"):
        source_attention([hs[0].long(), hs[1].long()], w, b, q)
    with pytest.raises(ValueError, match=r"weight must be \[6, 6\]"):
        source_attention(hs, w[:5], b, q)
    with pytest.raises(ValueError, match=r"bias and query \[6\]"):
        source_attention(hs, w, b[:3], q)
    with pytest.raises(ValueError, match="query is torch.float64"):
        source_attention(hs, w, b, q.double())


@pytest.mark.skipif(not _ext.HAS_C or "cpu" not in backends_here(OP, "cpu"),
                    reason=_ext.C_REASON or "motorec._C has no source_attention")
def test_cpu_kernel_rejects_bad_inputs():
    fwd, bwd = torch.ops.motorec_C.source_attention_fwd, torch.ops.motorec_C.source_attention_bwd
    hs, w, b, q = _inputs(2, 10, 6)
    with pytest.raises(RuntimeError, match="hs must hold at least one"):
        fwd([], w, b, q)
    with pytest.raises(RuntimeError, match=r"hs\[1\] must be \[N, d\] = \[10, 6\]"):
        fwd([hs[0], hs[1][:4]], w, b, q)
    with pytest.raises(RuntimeError, match="hs must be float32 or float64"):
        fwd([h.half() for h in hs], w.half(), b.half(), q.half())
    with pytest.raises(RuntimeError, match=r"weight must be \[d, d\]"):
        fwd(hs, w[:, :3], b, q)
    with pytest.raises(RuntimeError, match="dtype of hs"):
        fwd(hs, w.double(), b, q)
    out, attn = fwd(hs, w, b, q)
    with pytest.raises(RuntimeError, match=r"grad_out must be a CPU \[N, d\]"):
        bwd(out[:3], None, hs, w, b, q, attn)
    with pytest.raises(RuntimeError, match=r"attn must be a CPU \[N, M\]"):
        bwd(out, None, hs, w, b, q, attn[:, :1])
    with pytest.raises(RuntimeError, match=r"grad_attn must be a CPU \[N, M\]"):
        bwd(out, attn[:2], hs, w, b, q, attn)


def test_explain_names_every_backend():
    text = motorec.ops.explain(OP)
    for name in ("torch", "cpu", "triton", "cuda"):
        assert name in text
    assert "no GPU kernel for source_attention" in text


@pytest.mark.skipif("cpu" not in backends_here(OP, "cpu"), reason=_ext.C_REASON or "motorec._C has no source_attention")
def test_auto_takes_the_kernel_from_catalog_size(no_backend_env):
    """``auto`` runs the C++ kernel from N * M * d = 4M elements and the torch path below (as fast there)."""
    from motorec.ops.source_attention import CPU_AUTO_MIN_ELEMENTS

    pick = motorec.ops.select_backend
    assert pick(OP, device="cpu", dtype=torch.float32, n=100_000, dim=64, sources=2) == "cpu"
    assert pick(OP, device="cpu", dtype=torch.float32, n=CPU_AUTO_MIN_ELEMENTS // 128, dim=64, sources=2) == "cpu"
    assert pick(OP, device="cpu", dtype=torch.float32, n=CPU_AUTO_MIN_ELEMENTS // 128 - 1, dim=64,
                sources=2) == "torch"
    assert pick(OP, "cpu", device="cpu", dtype=torch.float32, n=10, dim=64, sources=2) == "cpu"
    assert pick(OP, device="cpu", dtype=torch.float16, n=100_000, dim=64, sources=2) == "torch"
