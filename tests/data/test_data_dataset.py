"""Dataset container: validation at construction, masks and degrees, fingerprint, to(device), summary."""
import dataclasses

import pytest
import torch

from motorec.data import DataError, Dataset
from motorec.testing import DEVICES


def _make(**kw):
    g = torch.Generator().manual_seed(0)
    args = dict(
        num_users=4, num_items=7,
        train=torch.tensor([[0, 0], [0, 1], [1, 1], [2, 3], [3, 2]]),
        valid=torch.tensor([[0, 4], [1, 3]]),
        test=torch.tensor([[2, 5], [3, 1]]),
        features={"image": torch.randn(7, 5, generator=g), "text": torch.randn(7, 3, generator=g)},
        name="toy", split="cold",
        cold_valid_items=torch.tensor([4]), cold_test_items=torch.tensor([5]),
    )
    args.update(kw)
    return Dataset(**args)


def test_masks_degrees_and_views():
    d = _make()
    assert d.item_interaction_counts().tolist() == [1, 2, 1, 1, 0, 0, 0]
    assert d.user_interaction_counts().tolist() == [2, 1, 1, 1]
    assert d.warm_items().tolist() == [True, True, True, True, False, False, False]
    assert torch.equal(d.cold_items(), ~d.warm_items())
    assert d.modalities == ["image", "text"]
    assert d.interactions("valid") is d.valid
    with pytest.raises(ValueError, match="split"):
        d.interactions("all")


def test_train_graph():
    d = _make()
    g = d.train_graph()
    assert g.num_rows == 11 and g.num_users == 4 and g.num_items == 7
    assert g.col.numel() == 2 * d.train.shape[0]


@pytest.mark.parametrize("kw, match", [
    (dict(train=torch.tensor([[0, 7]])), "item id 7 is out of range"),
    (dict(valid=torch.tensor([[4, 0]])), "valid user id 4"),
    (dict(test=torch.tensor([[-1, 0]])), "negative test user id"),
    (dict(train=torch.tensor([[0, 1]], dtype=torch.int32)), "int64"),
    (dict(train=torch.tensor([0, 1])), r"\[E, 2\]"),
    (dict(train=torch.zeros(0, 2, dtype=torch.int64)), "training split is empty"),
    (dict(features={}), "no item features"),
    (dict(features={"image": torch.randn(6, 5)}), "6 rows"),
    (dict(features={"image": torch.randn(7, 5, dtype=torch.float64)}), "float32"),
    (dict(features={"image": torch.full((7, 2), float("nan"))}), "NaN or Inf"),
    (dict(cold_test_items=torch.tensor([1])), "held-out cold item"),
    (dict(cold_test_items=torch.tensor([4])), "disjoint"),
    (dict(split="warm"), "empty cold_valid_items"),
    (dict(split="hot"), "split"),
    (dict(num_users=-1), "num_users"),
])
def test_validation(kw, match):
    with pytest.raises(DataError, match=match):
        _make(**kw)


def test_fingerprint_tracks_content_not_name():
    a = _make()
    assert a.fingerprint() == _make(name="other", info={"x": 1}).fingerprint()
    assert len(a.fingerprint()) == 32
    f = {m: t.clone() for m, t in a.features.items()}
    f["text"][6, 2] += 1e-3
    assert _make(features=f).fingerprint() != a.fingerprint()
    test = a.test.clone()
    test[0, 1] = 6
    assert _make(test=test).fingerprint() != a.fingerprint()
    renamed = {"img": a.features["image"], "text": a.features["text"]}
    assert _make(features=renamed).fingerprint() != a.fingerprint()


@pytest.mark.parametrize("device", DEVICES, ids=lambda d: d.type)
def test_to_device_keeps_fingerprint(device):
    a = _make()
    b = a.to(device)
    assert b.train.device.type == device.type and b.features["text"].device.type == device.type
    assert b.cold_test_items.device.type == device.type
    assert b.fingerprint() == a.fingerprint()
    assert a.train.device.type == "cpu"  # the original is untouched
    assert torch.equal(b.warm_items().cpu(), a.warm_items())


def test_summary_mentions_sizes():
    s = _make(info={"dropped_no_train_user": 3}).summary()
    assert "toy (cold split): 4 users, 7 items, 9 interactions" in s
    assert "train 5 / valid 2 / test 2" in s
    assert "1 valid / 1 test" in s and "image 5-d, text 3-d" in s and "dropped 3" in s
    assert "toy" in repr(_make())


def test_replace_revalidates():
    a = _make()
    with pytest.raises(DataError):
        dataclasses.replace(a, num_items=3)
