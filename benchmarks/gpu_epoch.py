"""One whole training epoch at catalog scale on one device: MoToRec under ``configs/large.yaml`` with
``backend=auto`` against ``backend=torch`` (and ``auto`` with ``train.precision: bf16``), and LightGCN beside
them, on the synthetic catalog of ``bench_scale`` (default 100k users, 1M items, 1M interactions); the rows
``... full`` train both with ``train.propagation: full`` (the whole graph every step) instead of the
config's history steps, whose steps run no propagation kernel (the catalog pass does).

Per configuration one CSV row: the epoch's seconds (the catalog pass at its start, the kNN build apart, and
the steps), seconds per step, peak device memory, and the fraction of the device time of a profiled step spent
inside motorec's ops (every profiler range named ``motorec...``: the custom ops and the compiled extension's
calls, kernels launched inside them included).

Checked before timing: each row's first-batch loss agrees with the same model's under ``backend=torch`` in
float32, from the same seed, weights and kNN graphs (to ``LOSS_TOL`` relative; bf16 to ``BF16_TOL``), or the
row is not timed. Every row starts at joint epoch 1 (epoch 0 would rebuild the kNN graphs again); the first
MoToRec row builds the graphs, its ``seconds_knn``, and the others reuse them.

Run (the GPU check runs it first)::

    python -m benchmarks.gpu_epoch --device cuda --out OUTDIR
    python -m benchmarks.gpu_epoch --device cpu --items 2000 --out /tmp/x      # a small CPU run
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from benchmarks.harness import device_name, git_sha, peak_memory_mb, reset_peak_memory, sync
from motorec.train.trainer import autocast_context

ROOT = Path(__file__).resolve().parents[1]
LOSS_TOL = 1e-3
BF16_TOL = 5e-2
# (row name, model, backend, precision, train.propagation: None for the config's)
CONFIGS = (("motorec torch", "motorec", "torch", "fp32", None), ("motorec auto", "motorec", "auto", "fp32", None),
           ("motorec auto bf16", "motorec", "auto", "bf16", None), ("lightgcn auto", "lightgcn", "auto", "fp32", None),
           ("motorec auto full", "motorec", "auto", "fp32", "full"),
           ("lightgcn auto full", "lightgcn", "auto", "fp32", "full"))
FIELDS = ("device", "torch", "git_sha", "items", "users", "interactions", "row", "model", "backend", "precision",
          "propagation", "fanout", "steps", "batch_size", "seconds_epoch", "seconds_steps", "seconds_step", "seconds_catalog", "seconds_knn",
          "peak_mem_mb", "motorec_op_fraction", "first_loss", "reference_loss")


def _build(ds, cfg, model: str, backend: str, device: torch.device, graphs=None):
    from motorec.models import build_model, unwrap
    torch.manual_seed(cfg.train.seed)
    m = build_model(ds, cfg.replace(model={"name": model}).settings(), wrappers=cfg.wrappers, backend=backend,
                    device=str(device), propagation=cfg.train.propagation, fanout=cfg.train.fanout)
    if graphs is not None and hasattr(unwrap(m), "item_item"):
        unwrap(m).item_item.graphs = dict(graphs)
    return m


def _op_fraction(step, device: torch.device) -> float:
    """Share of one step's device time (CPU time on a CPU) inside profiler ranges named ``motorec...``."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        step()
        sync(device)
    events = prof.key_averages()

    def dev_time(e) -> float:
        if device.type != "cuda":
            return e.self_cpu_time_total
        return getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0))

    def incl_time(e) -> float:
        if device.type != "cuda":
            return e.cpu_time_total
        return getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0.0))

    total = sum(dev_time(e) for e in events)
    ours = sum(incl_time(e) for e in events if e.key.startswith("motorec"))
    return ours / total if total > 0 else float("nan")


def _first_loss(m, batch, seed: int, device: torch.device, precision: str) -> float:
    torch.manual_seed(seed)
    with torch.no_grad(), autocast_context(device, precision):
        return float(m.loss(batch)[0])


def reference_loss(ds, cfg, model: str, device: torch.device, graphs: Optional[dict]) -> float:
    """The first batch's loss of ``model`` under ``backend=torch``, float32 (the check every row passes)."""
    from motorec.train import BPRSampler
    m = _build(ds, cfg, model, "torch", device, graphs)
    m.train()
    m.on_epoch_start(1)
    batch = next(BPRSampler(ds.train, ds.num_items, batch_size=cfg.train.batch_size).epoch(
        torch.Generator(device=device).manual_seed(cfg.train.seed)))
    loss = _first_loss(m, batch, cfg.train.seed + 1, device, "fp32")
    del m
    return loss


def run_row(ds, cfg, name: str, model: str, backend: str, precision: str, device: torch.device,
            graphs: Optional[dict], reference: float, knn_seconds: float = 0.0) -> Dict[str, Any]:
    from motorec.train import BPRSampler
    from motorec.train.trainer import make_optimizer
    m = _build(ds, cfg, model, backend, device, graphs)
    opt = make_optimizer(m, lr=cfg.train.lr)
    sampler = BPRSampler(ds.train, ds.num_items, batch_size=cfg.train.batch_size)
    gen = torch.Generator(device=device).manual_seed(cfg.train.seed)
    m.train()
    reset_peak_memory(device)
    sync(device)
    t0 = time.perf_counter()
    m.on_epoch_start(1)
    sync(device)
    t1 = time.perf_counter()
    log = m.epoch_log() if hasattr(m, "epoch_log") else {}
    batches = list(sampler.epoch(gen))
    first = _first_loss(m, batches[0], cfg.train.seed + 1, device, precision)
    tol = BF16_TOL if precision == "bf16" else LOSS_TOL
    if not math.isfinite(first) or abs(first - reference) > tol * max(1.0, abs(reference)):
        raise RuntimeError(f"{name}: first loss {first:.6f} against the torch reference's {reference:.6f} "
                           f"(tolerance {tol} relative): not timed")

    def step(batch) -> None:
        with autocast_context(device, precision):
            loss, _ = m.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sync(device)
    t2 = time.perf_counter()
    for batch in batches:
        step(batch)
    sync(device)
    t3 = time.perf_counter()
    frac = _op_fraction(lambda: step(batches[0]), device)
    knn = float(log.get("seconds_knn", 0.0))  # 0 here: the graphs were given
    row = {"device": device_name(device), "torch": torch.__version__, "git_sha": git_sha(), "items": ds.num_items,
           "users": ds.num_users, "interactions": int(ds.train.shape[0]), "row": name, "model": model,
           "backend": backend, "precision": precision, "propagation": cfg.train.propagation,
           "fanout": cfg.train.fanout, "steps": len(batches), "batch_size": cfg.train.batch_size,
           "seconds_epoch": (t1 - t0 - knn) + (t3 - t2), "seconds_steps": t3 - t2,
           "seconds_step": (t3 - t2) / max(len(batches), 1), "seconds_catalog": t1 - t0 - knn, "seconds_knn": knn_seconds if model == "motorec" else 0.0,
           "peak_mem_mb": peak_memory_mb(device), "motorec_op_fraction": frac, "first_loss": first,
           "reference_loss": reference}
    return row


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--config", default=str(ROOT / "configs" / "large.yaml"))
    p.add_argument("--rows", default=",".join(c[0] for c in CONFIGS), help="comma-separated rows to run")
    p.add_argument("--out", required=True, help="folder for gpu_epoch.csv")
    p.add_argument("--tiny", action="store_true", help="bench_scale's small model (for tests)")
    args = p.parse_args(argv)
    import motorec.models  # noqa: F401  (registers every model's config section)
    from motorec.config import Config
    from motorec.data.synthetic import load_synthetic_spec

    device = torch.device(args.device)
    want = [c for c in CONFIGS if c[0] in args.rows.split(",")]
    if not want:
        p.error(f"--rows: none of {args.rows!r} is one of {', '.join(c[0] for c in CONFIGS)}")
    n = args.items
    ds = load_synthetic_spec(f"synthetic:users={max(2, n // 10)},items={n},interactions={n}").to(device)
    cfg = Config.load(args.config).replace(train={"device": str(device)})
    if args.tiny:
        from benchmarks.bench_scale import TINY
        cfg = cfg.replace(**TINY)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gpu_epoch.csv"
    new = not path.exists()
    graphs, references, knn_seconds = None, {}, 0.0
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        for name, model, backend, precision, propagation in want:
            # a full step reads every neighbour: the config's history fanout cap does not apply to it
            rcfg = cfg if propagation is None else cfg.replace(
                train={"propagation": propagation, "fanout": cfg.train.fanout if propagation == "history" else 0})
            prop = rcfg.train.propagation
            if model == "motorec" and graphs is None:
                # the first MoToRec model builds the kNN graphs; every other one reuses them
                from motorec.models import unwrap
                m = unwrap(_build(ds, cfg, model, "auto", device))
                m.train()
                m.on_epoch_start(1)
                graphs, knn_seconds = dict(m.item_item.graphs), float(m.epoch_log()["seconds_knn"])
                del m
            if (model, prop) not in references:  # (a history step draws its samples otherwise: its own reference)
                references[model, prop] = reference_loss(ds, rcfg, model, device, graphs)
            row = run_row(ds, rcfg, name, model, backend, precision, device, graphs, references[model, prop],
                          knn_seconds)
            w.writerow(row)
            f.flush()
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
