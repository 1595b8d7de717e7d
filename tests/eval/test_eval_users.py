"""evaluate() on a subset of users and with per-user values; the seeded user sample; standard errors of a mean and
of a mean of two means, against hand-computed numbers."""
import math

import pytest
import torch

from motorec.data import synthetic
from motorec.eval import RESULT_KEYS, evaluate
from motorec.eval.metrics import mean_of_means_se, mean_se, sample_users


@pytest.fixture(scope="module")
def ds():
    return synthetic(120, 80, num_topics=4, modalities={"x": 6}, seed=3)


@pytest.fixture(scope="module")
def score():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(120, 80, generator=g)
    return lambda users: table[users].clone()


def test_default_output_has_only_the_settings(ds, score):
    res = evaluate(score, ds, split="valid")
    assert set(res) == set(RESULT_KEYS)


def test_per_user_values_average_to_the_metrics(ds, score):
    plain = evaluate(score, ds, split="test")
    res = evaluate(score, ds, split="test", per_user=True)
    per = res.pop("per_user")
    assert res == plain  # asking for the per-user values changes nothing else
    for g in RESULT_KEYS:
        assert per[g]["users"].numel() == plain[g]["num_users"]
        assert torch.all(per[g]["users"][1:] > per[g]["users"][:-1])
        for name in ("recall@10", "recall@20", "ndcg@10", "ndcg@20"):
            vals = per[g][name]
            assert vals.dtype == torch.float64 and vals.device.type == "cpu"
            expect = float(vals.mean()) if vals.numel() else 0.0
            assert plain[g][name] == pytest.approx(expect, abs=1e-12), (g, name)


def test_users_subset_is_the_per_user_values_of_those_users(ds, score):
    full = evaluate(score, ds, split="valid", per_user=True)["per_user"]
    users = sample_users(ds, "valid", 25, seed=7)
    sub = evaluate(score, ds, split="valid", users=users, per_user=True, batch_size=7)
    for g in RESULT_KEYS:
        keep = torch.isin(full[g]["users"], users)
        assert torch.equal(sub["per_user"][g]["users"], full[g]["users"][keep])
        assert torch.equal(sub["per_user"][g]["recall@20"], full[g]["recall@20"][keep])
        assert sub[g]["num_users"] == int(keep.sum())
        if keep.any():
            assert sub[g]["recall@20"] == pytest.approx(float(full[g]["recall@20"][keep].mean()), abs=1e-12)
    # every held-out user (and ids without held-out pairs) gives the full evaluation
    everyone = torch.arange(ds.num_users)
    assert evaluate(score, ds, split="valid", users=everyone) == evaluate(score, ds, split="valid")


def test_users_argument_is_checked(ds, score):
    with pytest.raises(ValueError, match="users must be a 1-d int64"):
        evaluate(score, ds, split="valid", users=[0, 1])
    with pytest.raises(ValueError, match="users must be a 1-d int64"):
        evaluate(score, ds, split="valid", users=torch.tensor([0.0, 1.0]))


def test_sample_users_is_fixed_seeded_and_leaves_the_global_stream(ds):
    held = torch.unique(ds.valid[:, 0])
    torch.manual_seed(11)
    before = torch.rand(3)
    torch.manual_seed(11)
    a = sample_users(ds, "valid", 20, seed=5)
    assert torch.equal(torch.rand(3), before)  # its own generator
    b = sample_users(ds, "valid", 20, seed=5)
    c = sample_users(ds, "valid", 20, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.numel() == 20 and a.unique().numel() == 20 and torch.isin(a, held).all()
    assert torch.all(a[1:] > a[:-1])
    assert sample_users(ds, "valid", 0, seed=5) is None
    assert sample_users(ds, "valid", held.numel(), seed=5) is None
    assert sample_users(ds, "valid", held.numel() - 1, seed=5).numel() == held.numel() - 1
    with pytest.raises(ValueError, match="n must be an int >= 0"):
        sample_users(ds, "valid", -1, seed=5)


def test_mean_se_hand_case():
    # mean 0.5, sample variance ((.5^2) * 4) / 3 = 1/3, SE = sqrt(1/3) / sqrt(4)
    assert mean_se(torch.tensor([0.0, 1.0, 1.0, 0.0])) == pytest.approx(math.sqrt(1 / 3) / 2, abs=1e-15)
    assert math.isnan(mean_se(torch.tensor([0.3])))


def test_mean_of_means_se_hand_cases():
    # disjoint but for one user (no covariance term with fewer than two shared users):
    # a = [1, 0, 1]: s^2 = 1/3; b = [0, 1]: s^2 = 1/2; Var = (1/9 + 1/4) / 4 = 13/144
    se = mean_of_means_se(torch.tensor([0, 1, 2]), torch.tensor([1.0, 0.0, 1.0]),
                          torch.tensor([2, 3]), torch.tensor([0.0, 1.0]))
    assert se == pytest.approx(math.sqrt(13) / 12, abs=1e-15)
    # users 0 and 1 in both (b listed out of order): shared values x = [1, 0], y = [1, 0], covariance 1/2;
    # Var = (1/9 + 1/9 + 2 * 2 * (1/2) / 9) / 4 = 1/9
    se = mean_of_means_se(torch.tensor([0, 1, 2]), torch.tensor([1.0, 0.0, 1.0]),
                          torch.tensor([4, 1, 0]), torch.tensor([0.0, 0.0, 1.0]))
    assert se == pytest.approx(1 / 3, abs=1e-15)
    # the same values in both sets: the SE of one mean
    u, v = torch.tensor([3, 5, 8, 9]), torch.tensor([0.2, 0.0, 0.7, 0.1])
    assert mean_of_means_se(u, v, u, v) == pytest.approx(mean_se(v), abs=1e-15)
    assert math.isnan(mean_of_means_se(u[:1], v[:1], u, v))
