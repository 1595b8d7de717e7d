"""motorec.nn.ResidualQuantizer, its codebook maintenance (motorec.nn.codebook) and motorec.nn.kmeans against
direct torch computations (torch backend)."""
import copy
import pickle

import pytest
import torch

from motorec.nn import RQVAE, ResidualQuantizer, clustering, codebook, kmeans
from motorec.nn.codebook import REPLICATED, SHARDED, StatisticsSync
from motorec.nn.quantizer import statistics_sync


def _direct(x, codebooks):
    """float64 residual quantization by explicit loops over levels: codes, per-level residuals r^(k)."""
    r = x.double()
    codes, residuals = [], []
    for c in codebooks.double():
        d = ((r.unsqueeze(1) - c.unsqueeze(0)) ** 2).sum(-1)
        idx = d.argmin(1)
        codes.append(idx)
        r = r - c[idx]
        residuals.append(r)
    return torch.stack(codes, 1), residuals


def _quantizer(dim, levels, size, **kw):
    kw.setdefault("kmeans_init", False)
    kw.setdefault("dead_code_threshold", 0)
    return ResidualQuantizer(dim=dim, num_levels=levels, codebook_size=size, backend="torch", **kw)


def _clustered(n, dim, clusters, *, spread=0.05, scale=3.0, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(clusters, dim, generator=g) * scale + shift
    labels = torch.randint(clusters, (n,), generator=g)
    return centers[labels] + spread * torch.randn(n, dim, generator=g), centers, labels


@pytest.mark.parametrize("ema", [False, True])
def test_forward_matches_direct_computation(ema):
    q = _quantizer(13, 3, 11, ema=ema, commitment=0.3)
    x = torch.randn(37, 13, dtype=torch.float64)
    cb = q.codebooks.detach().clone()  # training mode with EMA updates the codebooks after the op
    quantized, codes, losses = q(x)
    ref_codes, residuals = _direct(x, cb)
    assert torch.equal(codes, ref_codes)
    assert codes.dtype == torch.int64 and codes.shape == (37, 3)
    torch.testing.assert_close(quantized, x - residuals[-1])
    per_level = torch.stack([(r ** 2).sum(1).mean() for r in residuals])
    torch.testing.assert_close(losses.per_level.double(), per_level)
    v = per_level.sum()
    expect_codebook = torch.zeros((), dtype=torch.float64) if ema else v
    torch.testing.assert_close(losses.codebook.double(), expect_codebook)
    torch.testing.assert_close(losses.commitment.double(), 0.3 * v)
    torch.testing.assert_close(losses.total.double(), expect_codebook + 0.3 * v)


def test_straight_through_gradient():
    q = _quantizer(8, 2, 5)
    x = torch.randn(21, 8, requires_grad=True)
    quantized, _, _ = q(x)
    g = torch.randn_like(quantized)
    quantized.backward(g)
    torch.testing.assert_close(x.grad, g)
    assert q.codebooks.grad is None or torch.count_nonzero(q.codebooks.grad) == 0


@pytest.mark.parametrize("beta", [0.25, 1.0, 0.0])
def test_commitment_weighting_of_gradients(beta):
    q = _quantizer(9, 3, 7, commitment=beta)
    x = torch.randn(29, 9, requires_grad=True)
    _, codes, losses = q(x)
    losses.total.backward()

    # The VQ-VAE loss written out, per level with the quantized residual detached between levels.
    x2 = x.detach().clone().requires_grad_(True)
    cb = q.codebooks.detach().clone().requires_grad_(True)
    r_in = x2
    codebook_loss = commit_loss = 0.0
    for k in range(3):
        qk = cb[k][codes[:, k]]
        codebook_loss = codebook_loss + ((r_in.detach() - qk) ** 2).sum(1).mean()
        commit_loss = commit_loss + ((r_in - qk.detach()) ** 2).sum(1).mean()
        r_in = (r_in - qk).detach() + (r_in - r_in.detach())  # value r^(k), gradient only to x
    (codebook_loss + beta * commit_loss).backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(q.codebooks.grad, cb.grad)
    torch.testing.assert_close(losses.total.detach(), (codebook_loss + beta * commit_loss).detach())


def test_commitment_gradient_finite_difference():
    # d total / dx at fixed codes is beta * sum_k 2 r^(k) / N; check against a central difference of the
    # commitment term evaluated with the codes frozen (x moved by far less than any decision margin).
    beta = 0.4
    q = _quantizer(6, 2, 5, commitment=beta)
    x = torch.randn(10, 6, dtype=torch.float64, requires_grad=True)
    _, codes, losses = q(x)
    losses.total.backward()
    cb = q.codebooks.detach().double()

    def commit(xv):
        r, total = xv, 0.0
        for k in range(2):
            r = r - cb[k][codes[:, k]]
            total = total + (r ** 2).sum(1).mean()
        return beta * total

    h = 1e-6
    i, j = 3, 4
    e = torch.zeros_like(x)
    e[i, j] = h
    fd = (commit(x.detach() + e) - commit(x.detach() - e)) / (2 * h)
    assert abs(float(fd) - float(x.grad[i, j])) < 1e-6 * max(1.0, abs(float(fd)))


def test_ema_moves_codewords_toward_assigned_means():
    x = torch.randn(300, 5)
    q = _quantizer(5, 2, 6, ema=True, decay=0.5)
    assert not q.codebooks.requires_grad
    with torch.no_grad():
        q.codebooks.copy_(torch.randn(2, 6, 5))
        q.codebooks[:, 5] = 50.0  # never the nearest: an unused code per level
    q.reset_ema()  # codebooks set by hand: restart the EMA sums from them
    before = q.codebooks.detach().clone()
    q.train()
    _, codes, _ = q(x)
    after = q.codebooks.detach()
    r = x.clone()
    for k in range(2):
        used = torch.bincount(codes[:, k], minlength=6) > 0
        assert not bool(used[5])
        means = torch.zeros(6, 5).index_add_(0, codes[:, k], r) / torch.bincount(codes[:, k], minlength=6).clamp_min(1).unsqueeze(1)
        d_before = (before[k][used] - means[used]).norm(dim=1)
        d_after = (after[k][used] - means[used]).norm(dim=1)
        assert bool((d_after < d_before).all())
        torch.testing.assert_close(after[k][~used], before[k][~used], atol=1e-3, rtol=1e-3)
        r = r - before[k][codes[:, k]]


def test_ema_decay_zero_gives_assigned_means():
    x = torch.randn(200, 4)
    q = _quantizer(4, 1, 5, ema=True, decay=0.0, eps=1e-9)
    _, codes, _ = q(x)
    counts = torch.bincount(codes[:, 0], minlength=5)
    means = torch.zeros(5, 4).index_add_(0, codes[:, 0], x) / counts.clamp_min(1).unsqueeze(1)
    used = counts > 0
    torch.testing.assert_close(q.codebooks.detach()[0][used], means[used], atol=1e-5, rtol=1e-5)


def _train(q, data, steps, batch, lr=1e-2, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([p for p in q.parameters() if p.requires_grad], lr=lr) if not q.ema else None
    q.train()
    for _ in range(steps):
        xb = data[torch.randint(data.shape[0], (batch,), generator=g)]
        _, _, losses = q(xb)
        if opt is not None:
            opt.zero_grad()
            losses.total.backward()
            opt.step()
    q.eval()
    return q


@pytest.mark.parametrize("ema", [False, True])
def test_kmeans_and_reseeding_lower_dead_codes_on_clustered_data(ema):
    # Clusters away from the origin, where a default-initialized codebook collapses onto a few codes.
    data, _, _ = _clustered(4096, 16, 48, scale=1.0, shift=4.0)
    dead_limit = 0.1
    good = _train(ResidualQuantizer(dim=16, num_levels=2, codebook_size=32, ema=ema, kmeans_init=True,
                                    dead_code_threshold=1, dead_code_window=4, backend="torch"), data, 24, 512)
    bare = _train(ResidualQuantizer(dim=16, num_levels=2, codebook_size=32, ema=ema, kmeans_init=False,
                                    dead_code_threshold=0, backend="torch"), data, 24, 512)
    good_dead = good.dead_code_fraction(data)
    bare_dead = bare.dead_code_fraction(data)
    assert float(good_dead.max()) <= dead_limit, good_dead
    assert float(bare_dead[0]) >= 0.5, bare_dead
    assert float(good.perplexity(data)[0]) > 2 * float(bare.perplexity(data)[0])
    # Better codes: the residual after all levels is smaller.
    err_good = (data - good.quantize(data)[0]).pow(2).sum(1).mean()
    err_bare = (data - bare.quantize(data)[0]).pow(2).sum(1).mean()
    assert float(err_good) < 0.5 * float(err_bare)


def test_reseeding_alone_revives_dead_codes():
    data, _, _ = _clustered(4096, 16, 48, scale=1.0, shift=4.0)
    args = dict(dim=16, num_levels=1, codebook_size=32, kmeans_init=False, backend="torch")
    revived = _train(ResidualQuantizer(dead_code_threshold=1, dead_code_window=2, **args), data, 20, 512)
    stuck = _train(ResidualQuantizer(dead_code_threshold=0, **args), data, 20, 512)
    assert float(revived.dead_code_fraction(data)[0]) <= 0.1
    assert float(stuck.dead_code_fraction(data)[0]) >= 0.5


def test_reseeding_resets_ema_state_and_counts():
    data, _, _ = _clustered(512, 8, 4)
    q = ResidualQuantizer(dim=8, num_levels=1, codebook_size=16, ema=True, kmeans_init=False,
                          dead_code_threshold=1, dead_code_window=1, backend="torch")
    q.train()
    _, codes, _ = q(data)
    used = torch.bincount(codes[:, 0], minlength=16) > 0
    dead = ~used
    assert int(dead.sum()) > 0
    cb = q.codebooks.detach()[0]
    # Re-seeded rows are data rows (level-0 residuals are x itself) with a fresh EMA state.
    d = (cb[dead].unsqueeze(1) - data.unsqueeze(0)).abs().amax(-1).min(1).values
    assert float(d.max()) == 0.0
    torch.testing.assert_close(q.ema_cluster_size[0][dead], torch.ones(int(dead.sum())))
    torch.testing.assert_close(q.ema_embed_sum[0][dead], cb[dead])
    assert int(q.code_counts[0][dead].sum()) == 0
    assert q._window_step == 0


def test_updates_do_not_change_the_step_gradient():
    # EMA + re-seeding rewrite the codebooks after the op; the gradient must be that of the forward-time ones.
    x = torch.randn(64, 6, requires_grad=True)
    q = _quantizer(6, 2, 8, ema=True, dead_code_threshold=1, dead_code_window=1)
    cb0 = q.codebooks.detach().clone()
    _, codes, losses = q(x)
    losses.total.backward()
    assert not torch.equal(q.codebooks.detach(), cb0)
    r, expect = x.detach(), torch.zeros_like(x)
    for k in range(2):
        r = r - cb0[k][codes[:, k]]
        expect += 2 * q.commitment * r / x.shape[0]
    torch.testing.assert_close(x.grad, expect)


def test_decode_round_trip_and_partial_levels():
    data, _, _ = _clustered(300, 10, 12)
    q = ResidualQuantizer(dim=10, num_levels=3, codebook_size=16, backend="torch")
    q.init_codebooks(data)
    quantized, codes = q.quantize(data)
    torch.testing.assert_close(q.decode(codes), quantized)
    torch.testing.assert_close(q.get_output_from_indices(codes), quantized)
    torch.testing.assert_close(q.decode(codes[:, :1]), q.codebooks.detach()[0][codes[:, 0]])
    assert torch.equal(q.encode(q.decode(codes)), q.encode(quantized))
    q.eval()
    st, fcodes, _ = q(data)
    assert torch.equal(fcodes, codes)
    torch.testing.assert_close(st, quantized)
    with pytest.raises(ValueError, match="codes"):
        q.decode(torch.full((2, 3), 16))
    with pytest.raises(ValueError, match="codes"):
        q.decode(torch.zeros(2, 4, dtype=torch.int64))


def test_decode_is_differentiable_in_codebooks():
    q = _quantizer(4, 2, 3)
    codes = torch.tensor([[0, 1], [0, 2], [2, 2]])
    q.decode(codes).sum().backward()
    counts = torch.zeros(2, 3)
    for k in range(2):
        counts[k] = torch.bincount(codes[:, k], minlength=3).float()
    torch.testing.assert_close(q.codebooks.grad, counts.unsqueeze(-1).expand(2, 3, 4))


def test_kmeans_first_batch_init_and_state_dict():
    data, centers, _ = _clustered(1000, 8, 6, spread=0.01)
    q = ResidualQuantizer(dim=8, num_levels=1, codebook_size=6, kmeans_iters=20, dead_code_threshold=0,
                          backend="torch")
    assert not bool(q.initialized)
    q.train()
    q(data)
    assert bool(q.initialized)
    d = torch.cdist(centers, q.codebooks.detach()[0]).min(1).values
    assert float(d.max()) < 0.05
    q2 = ResidualQuantizer(dim=8, num_levels=1, codebook_size=6, dead_code_threshold=0, backend="torch")
    q2.load_state_dict(q.state_dict())
    before = q2.codebooks.detach().clone()
    q2.train()
    q2(data[:5])  # initialized flag came with the state dict: no k-means on this batch
    assert torch.equal(q2.codebooks.detach(), before)


def test_kmeans_chunked_assignment_matches_brute_force(monkeypatch):
    monkeypatch.setattr(clustering, "_DIST_BUDGET", 7 * 5)  # 7 rows per chunk with K = 5
    x = torch.randn(103, 3)
    c, assign = kmeans(x, 5, 3, backend="torch")
    assert c.shape == (5, 3) and assign.shape == (103,)
    brute = torch.cdist(x.double(), c.double()).argmin(1)
    assert torch.equal(assign, brute)
    # Lloyd fixed point after the last update is not required, but each centroid is a mean of its cluster
    # at the previous step, so it lies inside the data's bounding box.
    assert bool((c >= x.min(0).values - 1e-6).all() and (c <= x.max(0).values + 1e-6).all())


def test_kmeans_more_clusters_than_points():
    x = torch.randn(4, 3)
    c, assign = kmeans(x, 9, 2, backend="torch")
    assert c.shape == (9, 3)
    torch.testing.assert_close(c[assign], x)


def test_usage_statistics():
    x = torch.randn(500, 6)
    q = ResidualQuantizer(dim=6, num_levels=2, codebook_size=8, dead_code_threshold=0, backend="torch")
    q.train()
    _, codes, _ = q(x)
    u = q.usage()
    torch.testing.assert_close(u.sum(1), torch.ones(2))
    expect = torch.stack([torch.bincount(codes[:, k], minlength=8) for k in range(2)]).float() / 500
    torch.testing.assert_close(u, expect)
    p = q.perplexity()
    assert bool((p >= 1).all() and (p <= 8 + 1e-4).all())
    torch.testing.assert_close(p, torch.exp(-(expect * expect.clamp_min(1e-30).log()).sum(1)))
    torch.testing.assert_close(q.dead_code_fraction(), (expect == 0).float().mean(1))
    torch.testing.assert_close(q.usage(x), expect)  # eval on data: same codes (no updates without EMA)
    q.reset_usage()
    assert float(q.usage().sum()) == 0.0


def test_empty_batch_and_bad_inputs():
    q = _quantizer(5, 2, 4)
    x = torch.randn(0, 5, requires_grad=True)
    quantized, codes, losses = q(x)
    assert quantized.shape == (0, 5) and codes.shape == (0, 2)
    assert float(losses.total.detach()) == 0.0
    losses.total.backward()
    with pytest.raises(ValueError, match="x must have dim=5"):
        q(torch.randn(3, 4))
    with pytest.raises(ValueError, match="x must be 2-D"):
        q(torch.randn(3))
    with pytest.raises(ValueError, match="codebook_size"):
        ResidualQuantizer(dim=4, codebook_size=0)
    with pytest.raises(ValueError, match="decay"):
        ResidualQuantizer(dim=4, decay=1.0)
    with pytest.raises(ValueError, match="backend"):
        ResidualQuantizer(dim=4, backend="gpu")


def test_residual_vq_aliases():
    q = ResidualQuantizer(dim=4, num_quantizers=5, commitment_weight=0.5)
    assert q.num_levels == 5 and q.commitment == 0.5 and q.codebooks.shape == (5, 256, 4)
    with pytest.raises(ValueError, match="num_quantizers"):
        ResidualQuantizer(dim=4, num_levels=2, num_quantizers=5)


def test_code_counts_equal_bincount():
    q = _quantizer(6, 3, 17)
    codes = torch.randint(0, 17, (500, 3))
    codes[:, 2] = 4  # one code takes a whole level
    want = torch.stack([torch.bincount(codes[:, k], minlength=17) for k in range(3)])
    got = codebook.code_counts(codes, 17)
    assert got.dtype == torch.int64 and torch.equal(got, want)
    assert torch.equal(codebook.code_counts(codes[:0], 17), torch.zeros(3, 17, dtype=torch.int64))
    q.train()
    _, codes, _ = q(torch.randn(40, 6))
    assert torch.equal(q.code_counts, torch.stack([torch.bincount(codes[:, k], minlength=17) for k in range(3)]))


def _sync_free_backends():
    from motorec.testing import backends_here

    # CPU tensors reach Triton only under the interpreter.
    return [b for b in backends_here("residual_quantize", "cpu", torch.float32) if b != "triton"]


@pytest.mark.parametrize("ema", [False, True], ids=["grad", "ema"])
@pytest.mark.parametrize("backend", _sync_free_backends())
def test_training_steps_issue_no_host_sync(backend, ema):
    """After the first (k-means init) step, forward + backward + usage counts + EMA run without any op that
    would make the host wait for the device; the dead-code re-seed at the end of a window is the one place
    that reads back (the number of dead codes), and only then."""
    from motorec.testing import HostSyncError, no_host_sync

    data, _, _ = _clustered(400, 8, 5)
    q = ResidualQuantizer(dim=8, num_levels=3, codebook_size=16, backend=backend, ema=ema, kmeans_iters=2,
                          dead_code_threshold=1.0, dead_code_window=4)
    opt = torch.optim.SGD([p for p in q.parameters() if p.requires_grad] or [torch.zeros(1, requires_grad=True)],
                          lr=0.01)
    enc = torch.nn.Linear(8, 8)

    def step(i):
        x = enc(data[i * 50:(i + 1) * 50])
        quantized, codes, losses = q(x)
        (losses.total + quantized.pow(2).mean()).backward()
        opt.step()
        opt.zero_grad()

    step(0)  # warm-up: k-means init reads back by design; this step is the window's first
    with no_host_sync():
        for i in range(1, 3):
            step(i)
    assert q._window_step == 3
    with pytest.raises(HostSyncError, match="_local_scalar_dense"), no_host_sync():
        step(3)  # end of the 4-step window: re-seeding sizes its random draw on the host


# ---------------------------------------------------------------------------------------------- statistics sync
class _TwoEqualRanks:
    """Stands in for a process group of two ranks that hold the same tensors: all-reduce doubles, broadcast
    keeps rank 0's value (this rank's). Records which collective ran on what."""

    def __init__(self, monkeypatch):
        self.calls = []
        monkeypatch.setattr(codebook, "_group_active", lambda: True)
        monkeypatch.setattr(torch.distributed, "all_reduce", self.all_reduce)
        monkeypatch.setattr(torch.distributed, "broadcast", self.broadcast)

    def all_reduce(self, t):
        self.calls.append(("all_reduce", tuple(t.shape)))
        t.mul_(2)

    def broadcast(self, t, src):
        assert src == 0
        self.calls.append(("broadcast", tuple(t.shape)))


def test_statistics_sync_sums_counts_over_ranks_by_default(monkeypatch):
    ranks = _TwoEqualRanks(monkeypatch)
    x = torch.randn(50, 4)
    q = ResidualQuantizer(dim=4, num_levels=2, codebook_size=5, kmeans_iters=2, dead_code_threshold=0,
                          backend="torch").train()
    assert q.statistics_sync == SHARDED and q.statistics_sync.reduces
    _, codes, _ = q(x)
    want = torch.stack([torch.bincount(codes[:, k], minlength=5) for k in range(2)])
    assert torch.equal(q.code_counts, 2 * want)  # both ranks' counts
    # k-means centroids and cluster sizes come from rank 0; the counts are all-reduced once per step.
    assert ranks.calls == [("broadcast", (2, 5, 4)), ("broadcast", (2, 5)), ("all_reduce", (2, 5))]


@pytest.mark.parametrize("ema", [False, True])
def test_replicated_statistics_stay_per_rank_and_still_broadcast_reseeds(monkeypatch, ema):
    ranks = _TwoEqualRanks(monkeypatch)
    data, _, _ = _clustered(64, 6, 3)
    model = torch.nn.Sequential(torch.nn.Identity(), ResidualQuantizer(
        dim=6, num_levels=2, codebook_size=16, ema=ema, kmeans_init=False, dead_code_threshold=1,
        dead_code_window=1, backend="torch")).train()
    q = model[1]
    plain = copy.deepcopy(q)
    with statistics_sync(model, REPLICATED):
        assert q.statistics_sync == REPLICATED
        torch.manual_seed(3)
        _, codes, _ = model(data)
    assert q.statistics_sync == SHARDED  # restored
    assert not [c for c in ranks.calls if c[0] == "all_reduce"]
    assert ("broadcast", (int((torch.bincount(codes[:, 0], minlength=16) == 0).sum()), 6)) in ranks.calls
    # Without any process group, a replicated quantizer computes exactly what a single process computes.
    monkeypatch.setattr(codebook, "_group_active", lambda: False)
    torch.manual_seed(3)
    _, plain_codes, _ = plain(data)
    assert torch.equal(codes, plain_codes)
    for k, v in plain.state_dict().items():
        assert torch.equal(v, q.state_dict()[k]) if isinstance(v, torch.Tensor) else v == q.state_dict()[k], k


def test_statistics_sync_reaches_nested_quantizers_and_is_restored_on_error():
    m = RQVAE(input_dim=5, latent_dim=3, hidden_dims=[4], num_levels=1, codebook_size=4)
    with pytest.raises(RuntimeError, match="inside"), statistics_sync(m, REPLICATED):
        assert m.quantizer.statistics_sync == REPLICATED
        raise RuntimeError("inside")
    assert m.quantizer.statistics_sync == SHARDED
    with pytest.raises(TypeError, match="sync must be a StatisticsSync"), statistics_sync(m, "replicated"):
        pass
    with pytest.raises(TypeError, match="reduce must be a bool"):
        StatisticsSync(reduce=1)


def test_statistics_sync_survives_copies_and_is_not_state():
    q = ResidualQuantizer(dim=3, num_levels=1, codebook_size=4)
    q.statistics_sync = REPLICATED
    for other in (copy.deepcopy(q), pickle.loads(pickle.dumps(q))):
        assert other.statistics_sync == REPLICATED and not other.statistics_sync.reduces
    assert list(q.state_dict()) == ["codebooks", "initialized", "code_counts", "window_counts", "ema_cluster_size",
                                    "ema_embed_sum", "_extra_state"]
