"""Recall@K / NDCG@K against hand-computed numbers, and evaluate() against a brute-force per-user reference."""
import math

import pytest
import torch

from motorec.data import Dataset, synthetic
from motorec.eval import evaluate, metrics_from_hits, recall_ndcg_at_k
from motorec.testing import DEVICES

# 1 / log2(p + 1) for rank p = 1..5, written out: 1, 0.63093, 0.5, 0.43068, 0.38685
D1, D2, D3, D4, D5 = 1.0, 0.6309297535714574, 0.5, 0.43067655807339306, 0.38685280723454163


def test_recall_ndcg_hand_example():
    topk = torch.tensor([[3, 1, 4, 0, 5],
                         [2, 0, 1, 3, 4],
                         [0, 1, 2, 3, 4],
                         [0, 1, 2, 3, 4],
                         [5, 4, 3, 2, 1]])
    relevant = torch.zeros(5, 6, dtype=torch.bool)
    relevant[0, [1, 5, 2]] = True  # hits at ranks 2 and 5; 3 relevant
    relevant[1, 2] = True  # hit at rank 1; 1 relevant
    relevant[2, 5] = True  # never ranked
    # user 3: no relevant item
    relevant[4, :] = True  # every ranked item is relevant; 6 relevant
    m = recall_ndcg_at_k(topk, relevant, ks=(2, 5))
    # user 0: recall@2 = 1/3, NDCG@2 = D2 / (D1 + D2); recall@5 = 2/3, NDCG@5 = (D2 + D5) / (D1 + D2 + D3)
    # user 4: recall@2 = 2/6, recall@5 = 5/6; NDCG = 1 (ideal ranking)
    exp_r2 = [1 / 3, 1.0, 0.0, 0.0, 2 / 6]
    exp_n2 = [0.38685280723454163, 1.0, 0.0, 0.0, 1.0]
    exp_r5 = [2 / 3, 1.0, 0.0, 0.0, 5 / 6]
    exp_n5 = [1.017782560805999 / 2.1309297535714574, 1.0, 0.0, 0.0, 1.0]
    assert exp_n2[0] == pytest.approx(D2 / (D1 + D2)) and exp_n5[0] == pytest.approx(0.4776237, abs=1e-7)
    for key, exp in (("recall@2", exp_r2), ("ndcg@2", exp_n2), ("recall@5", exp_r5), ("ndcg@5", exp_n5)):
        assert m[key].tolist() == pytest.approx(exp, abs=1e-12), key
    assert m["recall@2"].dtype == torch.float64


def test_metrics_from_hits_checks():
    with pytest.raises(ValueError, match="K_max"):
        metrics_from_hits(torch.zeros(2, 3, dtype=torch.bool), torch.ones(2), ks=(5,))
    with pytest.raises(ValueError, match="num_relevant"):
        metrics_from_hits(torch.zeros(2, 3, dtype=torch.bool), torch.ones(3), ks=(2,))
    with pytest.raises(ValueError, match="ks"):
        metrics_from_hits(torch.zeros(2, 3, dtype=torch.bool), torch.ones(2), ks=(0,))


def _toy(**kw):
    """3 users, 6 items; items 4 and 5 have no training interaction (the cold group)."""
    args = dict(num_users=3, num_items=6,
                train=torch.tensor([[0, 0], [0, 1], [1, 2], [2, 3], [2, 0]]),
                valid=torch.tensor([[0, 2], [1, 4]]),
                test=torch.tensor([[0, 3], [0, 5], [1, 0], [2, 4]]),
                features={"x": torch.randn(6, 2)}, split="warm")
    args.update(kw)
    return Dataset(**args)


SCORES = torch.tensor([[9., 8., 7., 1., 2., 3.],
                       [5., 0., 9., 4., 6., 1.],
                       [0., 1., 2., 9., 3., 4.]])


@pytest.mark.parametrize("device", DEVICES, ids=lambda d: d.type)
def test_evaluate_hand_example(device):
    """Train items (and, for test, valid items) are masked; without masking every top item is a train item.

    user 0: unmasked 3:1, 4:2, 5:3 -> ranking 5, 4, 3; relevant {3 warm, 5 cold}
    user 1: unmasked 0:5, 1:0, 3:4, 5:1 -> ranking 0, 3, 5, 1; relevant {0 warm}
    user 2: unmasked 1:1, 2:2, 4:3, 5:4 -> ranking 5, 4, 2, 1; relevant {4 cold}
    """
    d = _toy().to(device)
    scores = SCORES.to(device)
    seen = []

    def score_fn(users):
        seen.append(users.device.type)
        return scores[int(users[0]): int(users[-1]) + 1]  # a view: evaluate must not write into `scores`

    r = evaluate(score_fn, d, split="test", ks=(1, 2), device=device)
    assert torch.equal(scores.cpu(), SCORES) and seen == [device.type]
    exp = {
        # cold setting, cold items 4-5 ranked alone: u0 ranks 5, 4 (relevant 5 at rank 1); u2 ranks 5, 4
        # (relevant 4 at rank 2)
        "cold": {"recall@1": 0.5, "ndcg@1": 0.5, "recall@2": 1.0, "ndcg@2": (1 + D2) / 2, "num_users": 2,
                 "num_interactions": 2},
        # warm setting, warm items 0-3 ranked alone: u0's unmasked warm items are {3} -> item 3 at rank 1 (in
        # the hybrid ranking cold items 5 and 4 push it out of the top 2); u1's ranking 0, 3, 1 -> item 0 first
        "warm": {"recall@1": 1.0, "ndcg@1": 1.0, "recall@2": 1.0, "ndcg@2": 1.0, "num_users": 2,
                 "num_interactions": 2},
        # per user (recall@1, ndcg@1, recall@2, ndcg@2): u0 (1/2, 1, 1/2, D1/(D1+D2)), u1 (1, 1, 1, 1), u2 (0, 0, 1, D2)
        "hybrid": {"recall@1": (0.5 + 1 + 0) / 3, "ndcg@1": (1 + 1 + 0) / 3, "recall@2": (0.5 + 1 + 1) / 3,
                   "ndcg@2": (1 / (D1 + D2) + 1 + D2) / 3, "num_users": 3, "num_interactions": 4},
        # hybrid ranking, warm pairs: u0 relevant {3} never in top 2; u1 relevant {0} at rank 1
        "hybrid_warm": {"recall@1": 0.5, "ndcg@1": 0.5, "recall@2": 0.5, "ndcg@2": 0.5, "num_users": 2,
                        "num_interactions": 2},
        # hybrid ranking, cold pairs: u0 relevant {5} at rank 1; u2 relevant {4} at rank 2
        "hybrid_cold": {"recall@1": 0.5, "ndcg@1": 0.5, "recall@2": 1.0, "ndcg@2": (1 + D2) / 2, "num_users": 2,
                        "num_interactions": 2},
    }
    assert list(r) == ["cold", "warm", "hybrid", "hybrid_warm", "hybrid_cold"]
    for g in exp:
        assert list(r[g]) == ["recall@1", "ndcg@1", "recall@2", "ndcg@2", "num_users", "num_interactions"]
        assert r[g] == pytest.approx(exp[g], abs=1e-12), g
    assert r["hybrid"]["ndcg@2"] == pytest.approx(0.7480256487789719, abs=1e-12)


def test_evaluate_valid_split_masks_train_only():
    # user 0: unmasked 2:7, 5:3, 4:2, 3:1 -> top 2 = [2, 5], relevant {2}; user 1: top 2 = [4, 0], relevant {4}
    r = evaluate(lambda u: SCORES[u], _toy(), split="valid", ks=(1,))
    assert r["hybrid"] == {"recall@1": 1.0, "ndcg@1": 1.0, "num_users": 2, "num_interactions": 2}


def test_empty_group_reports_zero_with_counts():
    d = _toy(test=torch.tensor([[0, 3], [1, 0]]))
    r = evaluate(lambda u: SCORES[u], d, ks=(1,))
    for key in ("cold", "hybrid_cold"):
        assert r[key] == {"recall@1": 0.0, "ndcg@1": 0.0, "num_users": 0, "num_interactions": 0}
    assert r["warm"]["num_users"] == r["hybrid_warm"]["num_users"] == 2


def test_k_larger_than_catalog_and_pair_also_in_train():
    # (0, 0) is a test pair and a train pair: it can never be ranked, so it is not counted.
    # Rankings: user 0 -> 5, 4, 3 (item 5 at rank 1); user 1 -> 0, 3, 5, 1 (item 3 at rank 2). K=10 > 6 items.
    d = _toy(test=torch.tensor([[0, 0], [0, 5], [1, 3]]))
    r = evaluate(lambda u: SCORES[u], d, ks=(10,))
    assert r["hybrid"]["num_interactions"] == 2
    assert r["hybrid"]["recall@10"] == 1.0
    assert r["hybrid"]["ndcg@10"] == pytest.approx((1 + D2) / 2, abs=1e-12)


def _brute_force(scores, d, split, ks):
    """Independent per-user reference: Python sets and a full sort of each user's unmasked items."""
    n = d.num_items
    masked = {}
    for p in [d.train] + ([d.valid] if split == "test" else []):
        for u, i in p.tolist():
            masked.setdefault(u, set()).add(i)
    targets = {}
    for u, i in d.interactions(split).tolist():
        if i not in masked.get(u, set()):
            targets.setdefault(u, set()).add(i)
    warm = set(d.train[:, 1].tolist())
    out = {}
    # key: (which pairs count, which items are ranked)
    keys = {"cold": ("cold", "cold"), "warm": ("warm", "warm"), "hybrid": ("all", "all"),
            "hybrid_warm": ("warm", "all"), "hybrid_cold": ("cold", "all")}
    for g, (pairs, ranked_items) in keys.items():
        sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
        users = 0
        for u, rel in targets.items():
            rel = {i for i in rel if pairs == "all" or (pairs == "warm") == (i in warm)}
            if not rel:
                continue
            users += 1
            ranked = sorted((i for i in range(n) if i not in masked.get(u, set())
                             and (ranked_items == "all" or (ranked_items == "warm") == (i in warm))),
                            key=lambda i: -scores[u, i])
            for k in ks:
                top = ranked[:k]
                hits = [p for p, i in enumerate(top) if i in rel]
                sums[f"recall@{k}"] += len(hits) / len(rel)
                idcg = sum(1 / math.log2(p + 2) for p in range(min(k, len(rel))))
                sums[f"ndcg@{k}"] += sum(1 / math.log2(p + 2) for p in hits) / idcg
        out[g] = {key: (v / users if users else 0.0) for key, v in sums.items()}
        out[g]["num_users"] = users
    return out


@pytest.mark.parametrize("split", ["test", "valid"])
def test_evaluate_matches_brute_force(split):
    d = synthetic(61, 47, num_interactions=700, seed=4, modalities={"a": 3})
    g = torch.Generator().manual_seed(11)
    scores = torch.randn(d.num_users, d.num_items, generator=g)
    ks = (1, 5, 13, 50)
    r = evaluate(lambda u: scores[u].clone(), d, split=split, ks=ks, batch_size=7)
    ref = _brute_force(scores, d, split, ks)
    assert list(r) == list(ref)
    for grp in ref:
        assert ref[grp]["num_users"] > 0
        for key, v in ref[grp].items():
            assert r[grp][key] == pytest.approx(v, abs=1e-12), (grp, key)


def test_batch_size_and_dtype_do_not_change_results():
    d = synthetic(40, 30, num_interactions=300, seed=2, modalities={"a": 3})
    scores = torch.randn(d.num_users, d.num_items, dtype=torch.float64)
    a = evaluate(lambda u: scores[u], d, batch_size=1)
    b = evaluate(lambda u: scores[u].float(), d, batch_size=1000, progress=True)
    for grp in a:
        assert a[grp] == pytest.approx(b[grp], abs=1e-12)  # only the summation order differs


def test_evaluate_input_errors():
    d = _toy()
    with pytest.raises(ValueError, match="shape"):
        evaluate(lambda u: SCORES[u][:, :5], d)
    with pytest.raises(ValueError, match="floating"):
        evaluate(lambda u: SCORES[u].long(), d)
    nan = SCORES.clone()
    nan[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        evaluate(lambda u: nan[u], d)
    with pytest.raises(ValueError, match="split"):
        evaluate(lambda u: SCORES[u], d, split="train")
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(lambda u: SCORES[u], d, batch_size=0)
    with pytest.raises(ValueError, match="ks"):
        evaluate(lambda u: SCORES[u], d, ks=())


def test_settings_equal_rankings_with_the_other_group_masked():
    """cold / warm are, by definition, the hybrid ranking's cold / warm pairs once every item of the other group
    scores -inf; checked on random scores of a synthetic cold-start dataset, several batch sizes."""
    ds = synthetic(60, 90, num_interactions=900, seed=3, modalities={"a": 3})
    scores = torch.randn(ds.num_users, ds.num_items, generator=torch.Generator().manual_seed(0))
    warm = ds.warm_items()
    assert warm.any() and (~warm).any()
    for bs in (1, 7, 1024):
        r = evaluate(lambda u: scores[u].clone(), ds, split="test", ks=(5, 20), batch_size=bs)
        w = scores.clone()
        w[:, ~warm] = float("-inf")
        c = scores.clone()
        c[:, warm] = float("-inf")
        rw = evaluate(lambda u: w[u].clone(), ds, split="test", ks=(5, 20), batch_size=bs)
        rc = evaluate(lambda u: c[u].clone(), ds, split="test", ks=(5, 20), batch_size=bs)
        assert r["warm"] == pytest.approx(rw["hybrid_warm"], abs=1e-12)
        assert r["cold"] == pytest.approx(rc["hybrid_cold"], abs=1e-12)
        assert r["cold"]["recall@20"] >= r["hybrid_cold"]["recall@20"]  # fewer competitors, never fewer hits


def test_warm_split_has_no_cold_setting():
    """Without cold items (data split 'warm'), the cold setting is empty and warm equals hybrid."""
    d2 = _toy(train=torch.tensor([[0, 0], [0, 1], [1, 2], [2, 3], [2, 0], [1, 4], [1, 5]]))
    assert d2.warm_items().all()
    r = evaluate(lambda u: SCORES[u], d2, ks=(1, 2))
    assert r["cold"]["num_users"] == 0 and r["hybrid_cold"]["num_users"] == 0
    assert r["warm"] == r["hybrid"] == r["hybrid_warm"]


def test_pairs_csr_and_mask_pairs_match_a_dense_mask():
    from motorec.eval.metrics import mask_pairs_, pairs_csr

    g = torch.Generator().manual_seed(7)
    a = torch.stack([torch.randint(0, 9, (40,), generator=g), torch.randint(0, 13, (40,), generator=g)], 1)
    b = torch.cat([a[:5], torch.tensor([[8, 12], [0, 0]])])  # repeats across parts, and the corner ids
    keys, rowptr, items = pairs_csr([a, b], 9, 13)
    dense = torch.zeros(9, 13, dtype=torch.bool)
    dense[torch.cat([a, b])[:, 0], torch.cat([a, b])[:, 1]] = True
    assert keys.tolist() == sorted(set((torch.cat([a, b])[:, 0] * 13 + torch.cat([a, b])[:, 1]).tolist()))
    assert rowptr[-1] == keys.numel() == int(dense.sum())
    users = torch.tensor([5, 0, 8, 5, 3])  # unsorted, with a repeat
    scores = torch.randn(5, 13, generator=g)
    expect = scores.masked_fill(dense[users], float("-inf"))
    assert torch.equal(mask_pairs_(scores, users, rowptr, items), expect)
    empty_keys, empty_ptr, empty_items = pairs_csr([a[:0]], 9, 13)
    s = torch.randn(2, 13, generator=g)
    assert empty_keys.numel() == 0 and torch.equal(mask_pairs_(s.clone(), torch.tensor([1, 2]), empty_ptr, empty_items), s)
