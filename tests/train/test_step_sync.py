"""A training step never makes the host wait for the device: after a warm-up step, sampling a batch, the loss,
its backward and the optimizer step run under :func:`motorec.testing.no_host_sync`, which fails on any
``aten._local_scalar_dense`` (``.item()``, ``float(t)``, ``bool(t)``) and on every op whose output shape
depends on data (``unique``, ``nonzero``, boolean-mask indexing, ``bincount``). On a GPU each of those would
stall the queue once per step (DESIGN.md, "the hot step")."""
import contextlib

import pytest
import torch

from motorec.config import WrapperConfig, model_config
from motorec.data import synthetic
from motorec.models import build_model
from motorec.testing import no_host_sync
from motorec.train import BPRSampler


@pytest.fixture(scope="module")
def ds():
    return synthetic(120, 90, num_topics=4, modalities={"image": 24, "text": 16}, seed=3)


# (model, its own settings, wrappers)
MODELS = [("motorec", {}, None), ("motorec", {"tokenizer_sample": 0}, None),
          ("motorec", {}, WrapperConfig(ensemble=3, decoupled=True)), ("lightgcn", {}, None),
          ("lightgcn_content", {}, None), ("lightgcn_content", {}, WrapperConfig(ensemble=3, decoupled=True)),
          ("content", {}, None), ("knn", {}, None), ("aldi", {}, None)]
IDS = [f"{n}-{'-'.join(o) or 'default'}{'-wrapped' if w else ''}" for n, o, w in MODELS]
OWN = {"motorec": dict(latent_dim=8, hidden_dims=(16,), codebook_size=8, num_levels=2, knn_k=4),
       "content": dict(hidden=16), "lightgcn_content": dict(hidden=16), "aldi": dict(hidden=16)}


def _config(name, over, sample):
    if name == "motorec":
        over = {"tokenizer_sample": sample, **over}
    return model_config(name, **{**OWN.get(name, {}), **over})


@pytest.mark.parametrize("name,over,wrappers", MODELS, ids=IDS)
def test_training_step_has_no_host_sync(ds, name, over, wrappers):
    torch.manual_seed(0)
    model = build_model(ds, _config(name, {"dim": 16, **over}, 32), wrappers=wrappers, backend="auto", device="cpu")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sampler = BPRSampler(ds.train, ds.num_items, batch_size=64)
    gen = torch.Generator().manual_seed(0)
    model.train()
    model.on_epoch_start(0)  # epoch-boundary work (cache refresh, kNN rebuild) may read back; steps may not
    batches = sampler.epoch(gen)

    def step(check: bool):
        with no_host_sync() if check else contextlib.nullcontext():
            loss, parts = model.loss(next(batches))
            opt.zero_grad(set_to_none=True)
            loss.backward()
        # torch's Adam reads its CPU step counter with .item(): a host value, no device sync on a GPU (the
        # counter stays on the CPU unless capturable/fused), but the CPU-only detector cannot tell
        opt.step()
        return parts

    step(False)  # warm-up: lazy initialization (k-means codebooks on the first step) reads back once
    for _ in range(2):
        parts = step(True)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in parts.values())


def test_detector_sees_a_sync_in_a_step(ds):
    """The test above can fail: the same step with a per-step read of the loss raises."""
    model = build_model(ds, model_config("lightgcn", dim=8), backend="auto", device="cpu")
    batch = next(BPRSampler(ds.train, ds.num_items, batch_size=64).epoch(torch.Generator().manual_seed(0)))
    with pytest.raises(AssertionError):
        with no_host_sync():
            loss, _ = model.loss(batch)
            float(loss.detach())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.set_sync_debug_mode)")
@pytest.mark.parametrize("name,over,wrappers", MODELS, ids=IDS)
def test_cuda_training_step_passes_sync_debug_mode(name, over, wrappers):
    """On a GPU, torch's own detector: sampling, loss, backward and Adam's step run with
    ``torch.cuda.set_sync_debug_mode("error")``, which raises on any blocking device-to-host transfer or
    synchronizing call (issue 16's GPU criterion). Shapes large enough that every kernel path is the GPU one."""
    dev = torch.device("cuda")
    data = synthetic(3000, 1500, num_topics=8, modalities={"image": 64, "text": 48}, seed=3).to(dev)
    torch.manual_seed(0)
    cfg = model_config(name, **({"tokenizer_sample": 256, **over} if name == "motorec" else over))
    model = build_model(data, cfg, wrappers=wrappers, backend="auto", device="cuda")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sampler = BPRSampler(data.train, data.num_items, batch_size=512)
    gen = torch.Generator(device=dev).manual_seed(0)
    model.train()
    model.on_epoch_start(0)
    batches = sampler.epoch(gen)

    def step():
        loss, parts = model.loss(next(batches))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return parts

    step()  # warm-up: lazy initialization may read back once
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            parts = step()
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    torch.cuda.synchronize()
    assert all(torch.isfinite(v).item() for v in parts.values())
