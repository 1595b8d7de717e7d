"""``knn`` (``motorec/models/knn.py``): a LightGCN on IDs whose cold items take the mean final embedding of their
``knn.cold_k`` most content-similar warm items; it trains exactly as ``lightgcn``."""
from __future__ import annotations

import math

import pytest
import torch
from _model_helpers import make_batch, make_model

from motorec.config import Config, ConfigError, model_config
from motorec.models.baselines import LightGCNRec
from motorec.models.knn import KNNRec, content_neighbours

# Items 0-3 warm, 4-5 cold; two modalities. Sum of per-modality cosines of cold item 4 (a=[1,0], b=[1,0]):
# item 0: 1 + 0 = 1.0, item 1: 0.6 + 1 = 1.6, item 2 (no b features): 0.8 + 0 = 0.8, item 3: -1 + 0 = -1.
# Cold item 5 (a=[0,1], b=[0,-1]): item 0: 0 - 1 = -1, item 1: 0.8 + 0 = 0.8, item 2: 0.6, item 3: 0 + 1 = 1.
# With k=2: item 4 -> {1, 0}, item 5 -> {3, 1}. (Cosine of the concatenated rows would rank item 2 above item 0
# for item 4, because item 2's missing modality shrinks its norm.)
TINY_FEATS = {
    "a": torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [-1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]),
    "b": torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 0.0], [0.0, -1.0], [3.0, 0.0], [0.0, -1.0]]),
}
TINY_TRAIN = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 3], [2, 0], [2, 3], [2, 1]])
TINY_NEIGHBOURS = {4: [1, 0], 5: [3, 1]}


def _tiny(cls, **over):
    torch.manual_seed(0)
    cfg = model_config("knn" if cls is KNNRec else "lightgcn", dim=8, **over)
    return cls(num_users=3, num_items=6, train=TINY_TRAIN, features=TINY_FEATS, config=cfg)


def test_knn_neighbours_hand_checked():
    idx = content_neighbours(TINY_FEATS, torch.tensor([4, 5]), torch.arange(4), 2)
    assert idx.tolist() == [TINY_NEIGHBOURS[4], TINY_NEIGHBOURS[5]]
    # k beyond the warm items: all of them, best first
    assert content_neighbours(TINY_FEATS, torch.tensor([4]), torch.arange(4), 10).tolist() == [[1, 0, 2, 3]]


def test_knn_cold_embedding_is_mean_of_nearest_warm_and_warm_unchanged():
    knn, base = _tiny(KNNRec, cold_k=2), _tiny(LightGCNRec)
    knn.eval(), base.eval()
    assert knn.cold_items.tolist() == [4, 5]
    for name, p in base.named_parameters():  # same seed, same backbone: same initial weights
        assert torch.equal(p, dict(knn.named_parameters())[name])
    u_b, i_b = base.embeddings()
    u_k, i_k = knn.embeddings()
    assert torch.equal(u_k, u_b)
    assert torch.equal(i_k[:4], i_b[:4])
    for c, nb in TINY_NEIGHBOURS.items():
        assert torch.allclose(i_k[c], (i_b[nb[0]] + i_b[nb[1]]) / 2, atol=1e-7)
        assert not torch.allclose(i_k[c], i_b[c])
    s = knn.score(torch.tensor([0, 2]))
    assert torch.allclose(s, u_k[[0, 2]] @ i_k.t(), atol=1e-6)


def test_knn_trains_exactly_like_lightgcn(ds):
    knn, base = make_model(ds, "knn", cold_k=3), make_model(ds, "lightgcn")
    assert all(torch.equal(p, q) for p, q in zip(knn.parameters(), base.parameters()))
    opts = [torch.optim.Adam(m.parameters(), lr=0.01) for m in (knn, base)]
    for step in range(3):
        batch = make_batch(ds, seed=step)
        losses = []
        for m, opt in zip((knn, base), opts):
            opt.zero_grad()
            loss, _ = m.loss(batch)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        assert losses[0] == losses[1]
    assert all(torch.equal(p, q) for p, q in zip(knn.parameters(), base.parameters()))
    knn.eval(), base.eval()
    warm = knn.warm_mask
    assert torch.equal(knn.item_embeddings()[warm], base.item_embeddings()[warm])
    assert torch.equal(knn.user_embeddings(), base.user_embeddings())


def test_knn_neighbours_are_warm_and_nearest(ds):
    m = make_model(ds, "knn", cold_k=4)
    nb = m.cold_neighbors
    cold = m.cold_items
    assert cold.numel() > 0 and nb.shape == (cold.numel(), 4)
    assert bool(m.warm_mask[nb].all())
    # dense float64 reference: sum over modalities of cosine similarity, warm items only
    sim = sum(torch.nn.functional.normalize(f.double(), dim=1)[cold] @
              torch.nn.functional.normalize(f.double(), dim=1).t() for f in ds.features.values())
    sim[:, ~m.warm_mask] = -math.inf
    ref = sim.topk(4, dim=1).indices
    assert torch.equal(nb, ref)
    assert len(dict(m.state_dict())) == len(dict(make_model(ds, "lightgcn").state_dict()))  # no new state


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
def test_knn_bad_k_rejected(bad):
    with pytest.raises(ConfigError, match="knn.cold_k must be an integer > 0"):
        Config.from_dict({"model": {"name": "knn"}, "knn": {"cold_k": bad}})
    with pytest.raises(ValueError, match="k must be"):
        content_neighbours(TINY_FEATS, torch.tensor([4]), torch.arange(4), bad)




def test_cli_selects_them_by_name_and_leaves_the_default_list_alone():
    from motorec.cli import build_parser
    from motorec.config import DEFAULT_MODELS, MODEL_NAMES

    args = build_parser().parse_args(["train", "--model", "knn", "--model", "aldi"])
    assert args.model == ["knn", "aldi"]
    assert {"knn", "aldi"} <= set(MODEL_NAMES) and not {"knn", "aldi"} & set(DEFAULT_MODELS)
    cold_start = {"knn", "aldi", "aldi_published", "dropoutnet", "heater", "clcrec", "gar"}
    assert set(DEFAULT_MODELS) == set(MODEL_NAMES) - cold_start
