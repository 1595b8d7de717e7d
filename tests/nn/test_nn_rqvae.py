"""motorec.nn.RQVAE: losses, training on clustered data, the sparsity KL by hand, API round trips."""
import math

import pytest
import torch
import torch.nn.functional as F

from motorec.nn import RQVAE, bernoulli_kl


def _features(n=256, dim=48, clusters=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(clusters, dim, generator=g)
    labels = torch.randint(clusters, (n,), generator=g)
    return centers[labels] + 0.1 * torch.randn(n, dim, generator=g)


def _model(**kw):
    args = dict(input_dim=48, latent_dim=8, hidden_dims=(32,), num_levels=2, codebook_size=16, backend="torch")
    args.update(kw)
    return RQVAE(**args)


@pytest.mark.parametrize("mode", ["softmax", "sigmoid"])
def test_losses_finite_and_total_composition(mode):
    m = _model(sparse_mode=mode, sparse_weight=0.5)
    x = _features(61)
    out = m(x)
    assert out.z_e.shape == (61, 8) and out.z_q.shape == (61, 8)
    assert out.codes.shape == (61, 2) and out.recon.shape == (61, 48)
    lo = out.losses
    for v in lo:
        assert v.dim() == 0 and bool(torch.isfinite(v))
    torch.testing.assert_close(lo.total, lo.reconstruction + lo.codebook + lo.commitment + 0.5 * lo.sparsity)
    xn = F.normalize(x, dim=1)
    torch.testing.assert_close(lo.reconstruction, ((out.recon - xn) ** 2).sum(1).mean())
    lo.total.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
    assert float(m.quantizer.codebooks.grad.abs().sum()) > 0


def test_reconstruction_decreases_with_training():
    torch.manual_seed(0)
    x = _features(256)
    m = _model()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        out = m(x)
        opt.zero_grad()
        out.losses.total.backward()
        opt.step()
        if first is None:
            first = float(out.losses.reconstruction.detach())
    m.eval()
    last = float(m(x).losses.reconstruction.detach())
    assert last < 0.5 * first, (first, last)


def test_sparsity_kl_by_hand_softmax():
    m = _model(input_dim=3, latent_dim=2, hidden_dims=(), num_levels=1, codebook_size=2, temperature=0.5,
               sparse_rho=0.3)
    with torch.no_grad():
        m.quantizer.codebooks.copy_(torch.tensor([[[0.0, 0.0], [1.0, 1.0]]]))
    z = torch.tensor([[0.0, 0.5], [1.0, 2.0]])
    codes = torch.tensor([[0], [1]])
    # item 0: d = (0.25, 1.25) -> p = softmax(-(0.5, 2.5)); item 1: d = (5, 1) -> p = softmax(-(10, 2))
    def sm(a, b):
        ea, eb = math.exp(-a), math.exp(-b)
        return ea / (ea + eb), eb / (ea + eb)
    p0, p1 = sm(0.5, 2.5), sm(10.0, 2.0)
    rho_hat = [(p0[0] + p1[0]) / 2, (p0[1] + p1[1]) / 2]
    kl = sum(0.3 * math.log(0.3 / q) + 0.7 * math.log(0.7 / (1 - q)) for q in rho_hat)
    assert abs(float(m.sparsity_loss(z, codes)) - kl) < 1e-6
    p = m.soft_assignments(z, codes)
    torch.testing.assert_close(p[0], torch.tensor([p0, p1]), check_dtype=False)


def test_sparsity_kl_by_hand_sigmoid_two_levels():
    m = _model(input_dim=3, latent_dim=1, hidden_dims=(), num_levels=2, codebook_size=2, sparse_mode="sigmoid",
               temperature=2.0, sparse_rho=0.1)
    with torch.no_grad():
        m.quantizer.codebooks.copy_(torch.tensor([[[0.0], [2.0]], [[0.5], [-0.5]]]))
    z = torch.tensor([[1.5], [-1.0]])
    codes = torch.tensor([[1, 0], [0, 1]])
    def sig(t):
        return 1 / (1 + math.exp(-t))

    # level 0: r = z. item 0: d = (2.25, 0.25), mean 1.25; item 1: d = (1, 9), mean 5.
    l0 = [[sig((1.25 - 2.25) / 2), sig((1.25 - 0.25) / 2)], [sig((5 - 1) / 2), sig((5 - 9) / 2)]]
    # level 1: r = z - C0[code]: item 0: -0.5 -> d = (1, 0), mean 0.5; item 1: -1 -> d = (2.25, 0.25), mean 1.25.
    l1 = [[sig((0.5 - 1) / 2), sig((0.5 - 0) / 2)], [sig((1.25 - 2.25) / 2), sig((1.25 - 0.25) / 2)]]
    kl = 0.0
    for lv in (l0, l1):
        for j in range(2):
            q = (lv[0][j] + lv[1][j]) / 2
            kl += 0.1 * math.log(0.1 / q) + 0.9 * math.log(0.9 / (1 - q))
    assert abs(float(m.sparsity_loss(z, codes)) - kl) < 1e-6


def test_bernoulli_kl_properties():
    q = torch.tensor([0.01, 0.2, 0.5, 0.9])
    kl = bernoulli_kl(0.2, q)
    assert float(kl[1]) == pytest.approx(0.0, abs=1e-7)
    assert bool((kl >= 0).all())
    assert bool(torch.isfinite(bernoulli_kl(0.2, torch.tensor([0.0, 1.0]))).all())


def test_softmax_sparsity_is_usage_balancing():
    # With rho = 1/K the KL is smallest when the soft usage is uniform over codes.
    m = _model(input_dim=3, latent_dim=2, hidden_dims=(), num_levels=1, codebook_size=4)
    assert m.sparse_rho == pytest.approx(0.25)
    uniform = bernoulli_kl(0.25, torch.full((4,), 0.25)).sum()
    skewed = bernoulli_kl(0.25, torch.tensor([0.7, 0.1, 0.1, 0.1])).sum()
    assert float(uniform) < 1e-7 < float(skewed)


def test_encode_decode_quantize_consistent():
    m = _model()
    x = _features(50)
    m.train()
    m(x)  # k-means init on this batch
    m.eval()
    z_q, codes = m.quantize(x)
    assert torch.equal(m.encode(x), codes)
    torch.testing.assert_close(m.decode_codes(codes), z_q)
    out = m(x)
    assert torch.equal(out.codes, codes)
    torch.testing.assert_close(out.z_q, z_q)
    torch.testing.assert_close(out.recon, m.reconstruct(z_q))
    torch.testing.assert_close(m.reconstruct(m.decode_codes(codes)), out.recon)
    assert not hasattr(m, "decode")  # no name that could mean codes or latents


def test_continuous_ablation():
    m = _model(continuous=True)
    x = _features(20)
    out = m(x)
    assert out.codes is None
    assert out.z_q is out.z_e
    assert float(out.losses.codebook) == 0 and float(out.losses.commitment) == 0 and float(out.losses.sparsity) == 0
    torch.testing.assert_close(out.losses.total, out.losses.reconstruction)
    with pytest.raises(RuntimeError, match="continuous"):
        m.quantize(x)


def test_zero_sparse_weight_skips_the_term(monkeypatch):
    """With weight 0 the sparsity term is not computed at all (it costs a pass over [N, K] per level)."""
    m = _model(sparse_weight=0.0)
    monkeypatch.setattr(m, "sparsity_loss", lambda *a: (_ for _ in ()).throw(AssertionError("computed")))
    out = m(_features(30))
    assert not out.losses.sparsity.requires_grad
    assert float(out.losses.sparsity) == 0.0
    torch.testing.assert_close(out.losses.total,
                               out.losses.reconstruction + out.losses.codebook + out.losses.commitment)


def test_init_codebooks_on_catalog_and_empty_batch():
    m = _model()
    x = _features(200)
    m.init_codebooks(x)
    assert bool(m.quantizer.initialized)
    out = m(torch.randn(0, 48))
    assert out.codes.shape == (0, 2)
    for v in out.losses:
        assert bool(torch.isfinite(v))


def test_bad_arguments():
    with pytest.raises(ValueError, match="sparse_mode"):
        _model(sparse_mode="l1")
    with pytest.raises(ValueError, match="sparse_rho"):
        _model(sparse_rho=1.5)
    with pytest.raises(ValueError, match="temperature"):
        _model(temperature=0)
    with pytest.raises(ValueError, match="input_dim=48"):
        _model()(torch.randn(4, 47))
