"""The eager fast path (:mod:`motorec.ops._eager`) against the custom ops it bypasses: the same kernels, so
the same outputs and gradients bit for bit, on every backend here; and the custom ops still serve every call
that needs the dispatcher."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import motorec
from motorec.ops._eager import eager, fast_path_enabled
from motorec.testing import backend_params, power_law_graph, random_directed_graph


def _both_paths(monkeypatch, fn, *inputs):
    """(outputs, grads) of ``fn(*leaves)`` with the fast path on, then off (custom ops)."""
    results = []
    for flag in ("1", "0"):
        monkeypatch.setenv("MOTOREC_OP_FASTPATH", flag)
        leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
        outs = fn(*leaves)
        outs = outs if isinstance(outs, tuple) else (outs,)
        float_outs = [o for o in outs if o.is_floating_point()]
        gen = torch.Generator().manual_seed(7)
        loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype).to(o.device)).sum() for o in float_outs)
        grads = torch.autograd.grad(loss, [t for t in leaves if t.requires_grad])
        results.append(([o.detach() for o in outs], grads))
    return results


def _assert_same(a, b):
    for x, y in zip(a[0] + list(a[1]), b[0] + list(b[1])):
        assert torch.equal(x, y)


@pytest.mark.parametrize("device,backend", backend_params("residual_quantize", torch.float32))
def test_residual_quantize_paths_agree(monkeypatch, device, backend):
    x = torch.randn(37, 8, device=device)
    cb = torch.randn(3, 16, 8, device=device)
    fast, op = _both_paths(monkeypatch, lambda a, c: tuple(motorec.ops.residual_quantize(a, c, backend=backend)), x, cb)
    _assert_same(fast, op)


@pytest.mark.parametrize("device,backend", backend_params("code_usage", torch.float32))
def test_code_usage_paths_agree(monkeypatch, device, backend):
    z = torch.randn(29, 8, device=device)
    cb = torch.randn(2, 16, 8, device=device) * 0.5
    codes = torch.randint(0, 16, (29, 2), device=device)
    for mode in ("softmax", "sigmoid"):
        fast, op = _both_paths(monkeypatch, lambda a, c: motorec.ops.code_usage(a, codes, c, 0.7, mode, backend=backend),
                               z, cb)
        _assert_same(fast, op)


@pytest.mark.parametrize("device,backend", backend_params("source_attention", torch.float32))
def test_source_attention_paths_agree(monkeypatch, device, backend):
    hs = [torch.randn(33, 8, device=device) for _ in range(3)]
    w, b, q = torch.randn(8, 8, device=device) / 3, torch.randn(8, device=device), torch.randn(8, device=device)
    fast, op = _both_paths(monkeypatch, lambda w, b, q, *hs: motorec.ops.source_attention(list(hs), w, b, q,
                                                                                          backend=backend),
                           w, b, q, *hs)
    _assert_same(fast, op)


@pytest.mark.parametrize("directed", [False, True])
@pytest.mark.parametrize("op", ["spmm", "propagate"])
def test_graph_ops_paths_agree(monkeypatch, op, directed):
    g = random_directed_graph(41, 300) if directed else power_law_graph(30, 25, 200, seed=1)
    x = torch.randn(g.num_cols, 16)
    for device, backend in [p.values for p in backend_params(op, torch.float32)]:
        gd, xd = g.to(device), x.to(device)
        if op == "spmm":
            fast, ref = _both_paths(monkeypatch, lambda a: motorec.ops.spmm(gd, a, backend=backend), xd)
        elif g.num_rows != g.num_cols:
            continue
        else:
            fast, ref = _both_paths(monkeypatch, lambda a: motorec.ops.propagate(gd, a, 2, backend=backend), xd)
        _assert_same(fast, ref)


def test_graph_fast_path_double_backward():
    g = power_law_graph(20, 15, 120, seed=2)
    x = torch.randn(g.num_cols, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: motorec.ops.propagate(g, t, 2, backend="torch"), (x,))
    assert torch.autograd.gradgradcheck(lambda t: motorec.ops.propagate(g, t, 2, backend="torch") ** 2, (x,))


class _Names(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def test_dispatch_modes_and_env_still_see_the_custom_ops(monkeypatch):
    x, cb = torch.randn(5, 4), torch.randn(2, 3, 4)
    with _Names() as mode:
        motorec.ops.residual_quantize(x, cb)
    assert any(n.startswith("motorec.residual_quantize") for n in mode.names)
    assert eager(x, cb)
    monkeypatch.setenv("MOTOREC_OP_FASTPATH", "0")
    assert not fast_path_enabled() and not eager(x, cb)
    monkeypatch.setenv("MOTOREC_OP_FASTPATH", "maybe")
    with pytest.raises(ValueError, match="MOTOREC_OP_FASTPATH"):
        eager(x)


def test_fast_path_off_for_subclasses_and_transforms():
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = torch.randn(3)
    assert eager(x, None)
    with FakeTensorMode():
        assert not eager(torch.randn(3))
    seen = []
    torch.func.grad(lambda t: (seen.append(eager(t)), t.sum())[1])(x)
    assert seen == [False]
    f = torch.compile(lambda t: t * (2 if eager(t) else 3), backend="eager", fullgraph=True)
    assert torch.equal(f(torch.ones(1)), torch.full((1,), 3.0))


class _Sub(torch.Tensor):
    pass


def test_parameters_take_the_fast_path_other_subclasses_do_not():
    """Modules pass their weights as ``nn.Parameter`` (e.g. the RQ-VAE's codebooks to ``code_usage``): a
    Parameter dispatches as a plain tensor, so it must not send the call through the custom op; any other
    subclass may override dispatch and still does."""
    x = torch.randn(3)
    assert eager(x, torch.nn.Parameter(torch.randn(2)))
    assert not eager(x, torch.randn(2).as_subclass(_Sub))


def test_rqvae_sparsity_term_uses_the_fast_path():
    from motorec.nn import RQVAE

    rq = RQVAE(input_dim=6, latent_dim=4, hidden_dims=[8], num_levels=2, codebook_size=5, kmeans_init=False)
    assert isinstance(rq.quantizer.codebooks, torch.nn.Parameter)
    with torch.profiler.profile() as prof:
        rq(torch.randn(7, 6)).losses.total.backward()
    names = {e.name for e in prof.events()}
    assert "_CodeUsageEager" in names and "motorec::code_usage" not in names
