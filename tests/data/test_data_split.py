"""Split properties: strict cold start (no held-out item in train), half valid / half test, conservation of
interactions, determinism per seed; per-user warm labels; the warm split follows the given labels."""
import pytest
import torch

from motorec.data import DataError, cold_start_split, per_user_labels, warm_split
from motorec.testing import random_interactions


def _pairs(num_users=157, num_items=301, num_edges=4000, seed=0):
    u, i = random_interactions(num_users, num_items, num_edges, seed=seed)
    return torch.stack([u, i], 1), num_users, num_items


def _keys(p, n):
    return set((p[:, 0] * n + p[:, 1]).tolist())


@pytest.mark.parametrize("seed", [0, 7])
def test_cold_start_split_properties(seed):
    pairs, nu, ni = _pairs(seed=seed)
    res = cold_start_split(pairs, nu, ni, cold_ratio=0.2, seed=seed)
    interacted = torch.unique(pairs[:, 1]).numel()
    n_cold = round(0.2 * interacted)
    assert res.cold_valid_items.numel() == n_cold // 2
    assert res.cold_test_items.numel() == n_cold - n_cold // 2
    held = torch.cat([res.cold_valid_items, res.cold_test_items])
    assert held.unique().numel() == n_cold
    # strict cold start: no interaction of a held-out item in train
    assert not torch.isin(res.train[:, 1], held).any()
    # every interaction of a validation cold item (of a user with train history) is in valid, same for test
    has_train = torch.zeros(nu, dtype=torch.bool)
    has_train[res.train[:, 0]] = True
    for items, part, other in ((res.cold_valid_items, res.valid, res.test), (res.cold_test_items, res.test, res.valid)):
        src = torch.unique(pairs[:, 0] * ni + pairs[:, 1])
        src = torch.stack([src // ni, src % ni], 1)
        sel = src[torch.isin(src[:, 1], items) & has_train[src[:, 0]]]
        assert _keys(sel, ni) == _keys(part[torch.isin(part[:, 1], items)], ni)
        assert not torch.isin(other[:, 1], items).any()
    # no pair appears twice; nothing is lost except the reported drops
    all_keys = [_keys(p, ni) for p in (res.train, res.valid, res.test)]
    assert sum(map(len, all_keys)) == len(set().union(*all_keys))
    assert len(set().union(*all_keys)) + res.info["dropped_no_train_user"] == len(_keys(pairs, ni))
    # valid/test users all have training history; warm valid/test items all appear in train
    for part in (res.valid, res.test):
        assert has_train[part[:, 0]].all()
        warm = part[~torch.isin(part[:, 1], held)]
        assert torch.isin(warm[:, 1], res.train[:, 1]).all()
    # the warm part is split about 80/10/10
    warm_valid = (~torch.isin(res.valid[:, 1], held)).sum().item()
    warm_train = res.train.shape[0]
    assert 0.05 < warm_valid / (warm_train + 2 * warm_valid) < 0.15


def test_cold_start_split_deterministic_per_seed():
    pairs, nu, ni = _pairs()
    a = cold_start_split(pairs, nu, ni, seed=3)
    b = cold_start_split(pairs[torch.randperm(pairs.shape[0])], nu, ni, seed=3)  # input order does not matter
    c = cold_start_split(pairs, nu, ni, seed=4)
    for x, y in zip(a[:5], b[:5]):
        assert torch.equal(x, y)
    assert not torch.equal(a.cold_test_items, c.cold_test_items)


def test_cold_ratio_zero_is_warm_only_and_bad_ratio():
    pairs, nu, ni = _pairs()
    res = cold_start_split(pairs, nu, ni, cold_ratio=0.0)
    assert res.cold_valid_items.numel() == 0 and res.cold_test_items.numel() == 0
    with pytest.raises(ValueError, match="cold_ratio"):
        cold_start_split(pairs, nu, ni, cold_ratio=1.0)


def test_cold_start_split_rejects_out_of_range_and_empty_train():
    pairs, nu, ni = _pairs()
    with pytest.raises(DataError, match="item id 301"):
        cold_start_split(torch.cat([pairs, torch.tensor([[0, 301]])]), nu, ni)
    one_item = torch.tensor([[0, 2], [1, 2], [2, 2]])
    with pytest.raises(DataError, match="no training interaction"):
        cold_start_split(one_item, 3, 5, cold_ratio=0.6)


def test_per_user_labels_counts():
    users = torch.tensor([4] * 10 + [1] * 1 + [2] * 5 + [0] * 23)
    users = users[torch.randperm(users.numel())]
    labels = per_user_labels(users, generator=torch.Generator().manual_seed(0))
    expected = {4: (8, 1, 1), 1: (1, 0, 0), 2: (5, 0, 0), 0: (19, 2, 2)}
    for u, counts in expected.items():
        lab = labels[users == u]
        assert tuple(int((lab == k).sum()) for k in range(3)) == counts
    with pytest.raises(ValueError, match="ratios"):
        per_user_labels(users, ratios=(0.5, 0.2, 0.2))


def test_per_user_labels_is_random_within_user():
    users = torch.zeros(1000, dtype=torch.int64)
    a = per_user_labels(users, generator=torch.Generator().manual_seed(1))
    b = per_user_labels(users, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(a, b)
    assert (a == 2).nonzero().float().mean() < 800  # not simply the last positions


def test_warm_split_follows_labels_dedupes_and_drops_users_without_train():
    pairs = torch.tensor([[0, 1], [0, 2], [0, 3], [1, 1], [1, 4], [2, 0], [0, 2], [3, 3]])
    labels = torch.tensor([0, 0, 2, 0, 1, 2, 1, 0])
    res = warm_split(pairs, labels, 4, 5)
    assert res.train.tolist() == [[0, 1], [0, 2], [1, 1], [3, 3]]
    assert res.valid.tolist() == [[1, 4]]  # (0, 2) is also train: kept as train only
    assert res.test.tolist() == [[0, 3]]  # user 2 has no training interaction: dropped
    assert res.info == {"dropped_no_train_user": 1, "duplicates_removed": 1}
    with pytest.raises(DataError, match="label 5"):
        warm_split(pairs, torch.tensor([0, 0, 5, 0, 1, 2, 1, 0]), 4, 5)
    with pytest.raises(DataError, match="training split is empty"):
        warm_split(pairs, torch.ones(8, dtype=torch.int64), 4, 5)
    with pytest.raises(ValueError, match="labels"):
        warm_split(pairs, labels[:3], 4, 5)
