"""Distributed data-parallel training on 2 CPU processes (gloo) against a single-process run.

Tolerance for "the same result": with the loss scaling of :mod:`motorec.train.distributed`, a 2-rank step
computes the gradient of the same global-batch loss as one process; only the order of the floating-point
sum differs (two half-batch sums added by the all-reduce instead of one sum), i.e. a relative difference of
a few float32 ulps (~1e-7) per step. Adam divides by sqrt(v), which keeps such differences at the same
relative size, so after ~50 steps parameters differ by ~1e-7..1e-6 (measured: 1.2e-7 for LightGCN, 1e-6 for
MoToRec). We allow 2e-5 absolute on parameters of size O(1) (20x the worst measured) and 1e-4 on the
metrics, whose rankings would only move if two items' scores tied within 1e-5. A real bug (a shard counted
twice, unsynchronized gradients, statistics summed over replicated data) moves parameters by 1e-2 or more.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mmrec import free_port, load_model_state, small_config, subprocess_env, write_mmrec  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

PARAM_TOL = 2e-5
METRIC_TOL = 1e-4


def _run(cmd, cwd, timeout=240):
    p = subprocess.run(cmd, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stderr[-3000:]}"
    return p


def test_torchrun_cli_matches_single_process(tmp_path, capsys):
    """``torchrun --nproc_per_node=2 -m motorec train`` == ``motorec train`` with the same global batch.

    MoToRec runs without the terms that couple the samples of a batch (InfoNCE, batch-normalized rarity
    weights), without per-sample random draws (cold-view dropout: a shard draws other numbers than the global
    batch) and without pre-training (k-means on a shard), so that equality is exact up to rounding; its
    quantizer statistics are then identical too (counted once, not once per rank)."""
    data = write_mmrec(tmp_path / "data")
    cfg = small_config(tmp_path / "cfg.yaml", motorec={"lambda_cl": 0.0, "rarity": False},
                       train={"epochs": 2})
    common = ["train", "--data", str(data), "--config", str(cfg), "--split", "warm", "--model", "lightgcn",
              "--model", "motorec", "--quiet"]
    ddp = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                f"--master_port={free_port()}", "-m", "motorec", *common, "--out", str(tmp_path / "ddp")], tmp_path)
    from motorec.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank (OMP_NUM_THREADS=1): thread count changes summation order
    try:
        assert main([*common, "--out", str(tmp_path / "single")]) == 0  # the same command in this process
    finally:
        torch.set_num_threads(threads)
    assert ddp.stdout.count("test results") == 1, "only rank 0 prints the results table"
    assert capsys.readouterr().out.count("test results") == 1

    m_ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    m_one = json.loads((tmp_path / "single" / "metrics.json").read_text())
    for model in ("lightgcn", "motorec"):
        for split in ("valid", "test"):
            for metric, v in m_one[model][split]["hybrid"].items():
                assert abs(m_ddp[model][split]["hybrid"][metric] - v) <= METRIC_TOL, (model, split, metric)
        a = load_model_state(tmp_path / "ddp" / "checkpoints" / model / "last.pt")
        b = load_model_state(tmp_path / "single" / "checkpoints" / model / "last.pt")
        _assert_state_close(a, b, model)
        assert int(a.get("tokenizer.rqvae.image.quantizer.code_counts", torch.ones(1)).sum()) > 0


def _assert_state_close(a, b, where):
    """Parameters within PARAM_TOL; integer buffers (code usage counts, flags) and host-side extra state (a
    quantizer's window step) exactly equal; nested extra state (MoToRec's kNN graphs) by the same rules."""
    assert a.keys() == b.keys(), where
    for k in a:
        if isinstance(a[k], dict):
            _assert_state_close(a[k], b[k], f"{where}.{k}")
        elif isinstance(a[k], list):  # MoToRec's snapshots: a list of {"epoch", "state"}
            assert isinstance(b[k], list) and len(a[k]) == len(b[k]), f"{where}.{k}"
            for i, (x, y) in enumerate(zip(a[k], b[k])):
                _assert_state_close(x, y, f"{where}.{k}[{i}]")
        elif not isinstance(a[k], torch.Tensor):
            assert a[k] == b[k], f"{where}.{k} differs between 2 ranks and 1 process"
        elif a[k].is_floating_point():
            diff = (a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0
            assert diff <= PARAM_TOL, f"{where}.{k}: 2-rank vs 1-process max |diff| = {diff:.2e}"
        else:
            assert torch.equal(a[k], b[k]), f"{where}.{k} differs between 2 ranks and 1 process"


# ---------------------------------------------------------------------------------------------- spawn
def _worker(rank: int, world: int, port: int, data_seed: int, out: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from motorec.config import Config
    from motorec.data import synthetic
    from motorec.nn.codebook import REPLICATED
    from motorec.nn.quantizer import ResidualQuantizer, statistics_sync
    from motorec.train import Trainer
    from motorec.train import distributed as d

    ctx = d.init_from_env("cpu")
    assert ctx is not None and ctx.world_size == world and d.current() is ctx

    # The quantizer's statistics hook: each rank quantizes its shard; counts must add up to the global batch.
    torch.manual_seed(100 + rank)  # different data per rank
    q = ResidualQuantizer(dim=4, num_levels=2, codebook_size=5, kmeans_iters=3, dead_code_threshold=0).train()
    x = torch.randn(10 + rank, 4)
    q(x)
    counts = q.code_counts.clone()
    with statistics_sync(q, REPLICATED):  # every rank holds the whole data: counts stay this rank's own
        q.reset_usage()
        q(x)
    local = q.code_counts.clone()

    # Full MoToRec: pre-training (sharded items: statistics all-reduced, k-means broadcast from rank 0),
    # InfoNCE, rarity, EMA codebooks and dead-code re-seeding (re-seeded codewords broadcast).
    torch.manual_seed(0)
    ds = synthetic(100, 70, num_interactions=1200, modalities={"image": 12, "text": 6}, seed=data_seed)
    cfg = Config.from_dict({
        "model": {"name": "motorec", "dim": 16}, "wrappers": {"ensemble": 1, "decoupled": False},
        "motorec": {"latent_dim": 8, "hidden_dims": [16], "num_levels": 2, "codebook_size": 8, "knn_k": 4, "ema": True},
        "train": {"epochs": 1, "pretrain_epochs": 1, "batch_size": 48, "lr": 0.01, "patience": 0, "seed": 0}})
    trainer = Trainer(cfg, ds, quiet=True, dist=ctx, device=ctx.device)  # the context is passed, not looked up
    res = trainer.fit()
    torch.save({"counts": counts, "local": local, "codebooks": q.codebooks.detach().clone(), "res": res,
                "model": copy.deepcopy(trainer.model.state_dict())},
               f"{out}.meta.{rank}")
    d.shutdown()


def test_spawned_ranks_stay_synchronized(tmp_path, monkeypatch):
    import torch.multiprocessing as mp

    # The spawned ranks unpickle _worker by this module's name, which pytest's importlib mode makes dotted from
    # the rootdir (tests.train.test_distributed): append that root, after site-packages, so that they find it.
    root = Path(__file__).resolve().parents[len(__name__.split(".")) - 1]
    monkeypatch.setattr(sys, "path", [*sys.path, str(root)])
    out = str(tmp_path / "rank")
    mp.spawn(_worker, args=(2, free_port(), 3, out), nprocs=2, join=True)
    r0 = torch.load(f"{out}.meta.0", weights_only=False)
    r1 = torch.load(f"{out}.meta.1", weights_only=False)
    # 10 + 11 rows quantized across the two ranks: every level counts all 21 on both ranks.
    assert r0["counts"].sum(1).tolist() == [21, 21] and torch.equal(r0["counts"], r1["counts"])
    assert torch.equal(r0["codebooks"], r1["codebooks"]), "k-means init must be broadcast from rank 0"
    assert r0["local"].sum(1).tolist() == [10, 10] and r1["local"].sum(1).tolist() == [11, 11]
    # Gradients averaged, statistics synchronized, random re-seeds broadcast: the replicas are identical,
    # parameters and buffers (EMA sums, usage counts, dead-code windows) alike.
    def same(x, y):
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        return torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y

    for k, v in r0["model"].items():
        assert same(v, r1["model"][k]), f"{k} differs between rank 0 and rank 1"
    assert int(r0["model"]["tokenizer.rqvae.image.quantizer.code_counts"].sum()) > 0
    # Rank 0 evaluated and broadcast: both ranks report the same metrics and the same best epoch.
    assert r0["res"]["test"] == r1["res"]["test"] and r0["res"]["best_epoch"] == r1["res"]["best_epoch"]
