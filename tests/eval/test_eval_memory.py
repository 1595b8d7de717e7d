"""evaluate()'s batch adapts to a memory budget: the [B, num_items] score blocks stay within it, results do not
change."""
import pytest
import torch

from motorec.data import synthetic
from motorec.eval import evaluate
from motorec.eval import metrics as M


def test_eval_batch_size_caps_by_budget():
    # 1M items: a float32 score row is 4e6 bytes; 1 GiB holds 268 rows, 10 MiB holds 2
    assert M.eval_batch_size(1024, 1_000_000, memory_mb=1024, settings=False) == 268
    assert M.eval_batch_size(1024, 1_000_000, memory_mb=10, settings=False) == 2
    assert M.eval_batch_size(1024, 1_000_000, memory_mb=1024, settings=True) == 134
    assert M.eval_batch_size(64, 1000, memory_mb=1024) == 64  # the asked batch when it fits
    assert M.eval_batch_size(64, 10 ** 9, memory_mb=1) == 1  # never below one user
    assert M.eval_batch_size(8, 1_000_000) == 8
    for bad in (0, -1, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="memory_mb"):
            M.eval_batch_size(8, 10, memory_mb=bad)


def test_small_budget_keeps_score_blocks_within_it_and_results_equal():
    ds = synthetic(70, 400, num_interactions=1500, seed=5, modalities={"a": 4})
    g = torch.Generator().manual_seed(0)
    u, it = torch.randn(ds.num_users, 8, generator=g), torch.randn(ds.num_items, 8, generator=g)
    rows = []

    def score_fn(users):
        rows.append(users.numel())
        return u[users] @ it.t()

    full = evaluate(score_fn, ds, batch_size=1024, memory_mb=1024)
    assert max(rows) > 8
    rows.clear()
    budget_mb = 8 * 400 * 4 / 2**20  # room for 8 float32 score rows of 400 items (4 with the cold copy)
    small = evaluate(score_fn, ds, batch_size=1024, memory_mb=budget_mb)
    per_row = 400 * 4 * 2  # the score row and at most a row of cold columns
    assert max(rows) == int(budget_mb * 2**20) // per_row
    assert max(rows) * per_row <= budget_mb * 2**20
    assert sum(rows) == full["hybrid"]["num_users"]
    assert list(small) == list(full)
    for grp in full:  # the same numbers: only the batching (the order of the sums) changed
        assert small[grp] == pytest.approx(full[grp], rel=1e-12, abs=1e-15), grp
    with pytest.raises(ValueError, match="memory_mb"):
        evaluate(score_fn, ds, memory_mb=0)
