"""The inductive check (``motorec train --inductive``): MoToRec trained on the catalog without the held-out items,
which arrive through ``with_new_items``; metrics on the full catalog in the original item ids."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from motorec.config import Config, ConfigError
from motorec.data import synthetic
from motorec.eval import evaluate
from motorec.train.inductive import fit_inductive, inductive_split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mmrec import small_config, write_mmrec  # noqa: E402

SMALL = dict(codebook_size=8, latent_dim=8, hidden_dims=[16], knn_k=4)


@pytest.fixture(scope="module")
def ds():
    return synthetic(60, 50, num_topics=4, modalities={"image": 12, "text": 6}, seed=5)


def _cfg(epochs=2):
    return Config().replace(model={"name": "motorec", "dim": 16}, motorec=SMALL,
                            train={"epochs": epochs, "pretrain_epochs": 1, "batch_size": 256, "patience": 0})


def test_inductive_split_remaps_and_drops_held_out_items(ds):
    kept_ds, held, new_of_old = inductive_split(ds)
    expect_held = sorted(ds.cold_valid_items.tolist() + ds.cold_test_items.tolist())
    assert held.tolist() == expect_held and held.numel() > 0
    kept = [i for i in range(ds.num_items) if i not in set(expect_held)]
    assert kept_ds.num_items == len(kept)
    # kept items first in their order, then the held-out ones in theirs
    assert [new_of_old[i].item() for i in kept] == list(range(len(kept)))
    assert [new_of_old[h].item() for h in expect_held] == list(range(len(kept), ds.num_items))
    for m, f in ds.features.items():  # the held-out items' features are absent
        assert torch.equal(kept_ds.features[m], f[kept])
    old_of_new = {n: o for o, n in enumerate(new_of_old.tolist())}
    assert sorted((u, old_of_new[i]) for u, i in kept_ds.train.tolist()) == sorted(map(tuple, ds.train.tolist()))
    for split in ("valid", "test"):
        orig = getattr(ds, split).tolist()
        assert sorted((u, old_of_new[i]) for u, i in getattr(kept_ds, split).tolist()) == \
            sorted((u, i) for u, i in orig if i not in set(expect_held))
    assert kept_ds.cold_valid_items.numel() == kept_ds.cold_test_items.numel() == 0
    warm = synthetic(60, 50, num_topics=4, modalities={"image": 12}, seed=5, split="warm")
    with pytest.raises(ConfigError, match="cold-start split"):
        inductive_split(warm)


def test_inductive_scores_of_cold_items_are_what_with_new_items_gives(ds):
    res = fit_inductive(_cfg(), ds, quiet=True)
    trained, grown, new_of_old = res["trained_model"], res["model"], res["new_of_old"]
    _, held, _ = inductive_split(ds)
    n_kept = ds.num_items - held.numel()
    # the trained model never had the held-out items: its catalog and feature rows are the kept items'
    assert trained.num_items == n_kept and res["num_new_items"] == held.numel()
    assert grown.num_items == ds.num_items
    users = torch.arange(ds.num_users)
    # independently: the trained model extended by with_new_items with the held-out features, in held order
    ref = trained.with_new_items({m: f[held] for m, f in ds.features.items()}).score(users)
    got = grown.score(users)[:, new_of_old]  # the score function fit_inductive evaluates, original ids
    for k, h in enumerate(held.tolist()):
        assert torch.equal(got[:, h], ref[:, n_kept + k]), h
    # and its metrics are evaluate() of that score function on the full dataset
    full = evaluate(lambda u: grown.score(u)[:, new_of_old], ds, split="test")
    assert list(res["test"]) == list(full)
    for key in full:
        assert res["test"][key] == pytest.approx(full[key], abs=1e-12), key
    assert res["test"]["cold"]["num_users"] > 0 and res["test"]["hybrid"]["num_users"] > 0


def test_inductive_refuses_other_models(ds):
    with pytest.raises(ConfigError, match="MoToRec"):
        fit_inductive(_cfg().replace(model={"name": "lightgcn"}), ds, quiet=True)


def test_cli_inductive_reports_beside_the_standard_run(tmp_path, capsys):
    from motorec.cli import INDUCTIVE, main

    data = write_mmrec(tmp_path / "data")
    cfg = small_config(tmp_path / "cfg.yaml", train={"pretrain_epochs": 1})
    out = tmp_path / "out"
    args = ["train", "--data", str(data), "--epochs", "1", "--model", "motorec", "--config", str(cfg), "--out",
            str(out), "--quiet", "--inductive"]
    assert main(args) == 0
    text = capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    assert set(m) == {"motorec", INDUCTIVE}
    assert m[INDUCTIVE]["test"]["cold"]["num_users"] == m["motorec"]["test"]["cold"]["num_users"] > 0
    assert m[INDUCTIVE]["new_items"] > 0
    rows = [line.split()[0] for line in text.splitlines() if line.startswith("motorec") and ":" not in line]
    assert rows == ["motorec", INDUCTIVE] and "with_new_items" in text
    assert main(["train", "--data", str(data), "--model", "lightgcn", "--inductive", "--out", str(tmp_path / "o"),
                 "--quiet"]) == 2
    assert "--inductive needs MoToRec" in capsys.readouterr().err
