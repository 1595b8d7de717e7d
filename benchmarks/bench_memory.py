"""Peak memory and time of full-ranking evaluation and of the kNN item-graph builder on a 1M-item catalog.

Both are chunked, so their memory must stay bounded by the chunk, not grow with the catalog squared:

* :func:`motorec.eval.evaluate` scores ``batch_size`` users against every item at a time: one
  ``[batch_size, num_items]`` float32 score block plus its top-K; the batch is capped so that the block fits
  ``memory_mb`` (default 1024 MiB: 134 users at 1M items, see :func:`motorec.eval.metrics.eval_batch_size`).
* :func:`motorec.nn.knn_graph` computes ``[block, N]`` similarity tiles (about 16M floats = 64 MiB each),
  reduces each to its top-k at once, then assembles the ``2 N k``-edge graph.

Phases, each measured as the rise of the process's peak resident set (Linux ``VmHWM``, reset before each phase
through ``/proc/self/clear_refs``; elsewhere ``resource.getrusage`` high-water marks, which cannot be reset,
so later phases are then upper bounds) over the resident set at the phase's start:

``catalog``      build the synthetic catalog (:func:`motorec.data.synthetic`, cold-start split) and embeddings
``evaluate``     ``evaluate(score_fn, dataset, split="test", batch_size=B)``: every evaluated user ranked
                 against all ``num_items`` items (``score_fn``: user embeddings @ item embeddings^T)
``knn_tiles``    the similarity-tile loop of ``knn_graph`` for the first ``--knn-rows`` items against all N
                 (``knn_topk``): the memory of the whole build's search phase, and its time per item; the
                 full N^2 d search (1M x 1M x d) takes hours on a few CPU cores, so its time is extrapolated
``knn_assembly`` ``knn_graph`` at N with the top-k lists given (the search stubbed): the O(N k) edge assembly,
                 coalescing and normalization, i.e. the rest of the build's memory
``knn_full``     a real, complete exact ``knn_graph(method="exact")`` at ``--knn-full-items`` (default 50k)
``knn_ivf``      a real, complete approximate ``knn_graph(method="ivf")`` at ``--knn-ivf-items`` (default 100k;
                 ``--knn-ivf-items 1000000`` is the full 1M-item build), then its neighbour recall@k: the
                 top-k lists the build made, for ``--recall-sample`` (default 10,000) random items, against
                 the exact top-k of those items among all N (blockwise brute force, float32)

``--knn-full-items 1000000`` runs the real exact 1M build instead (about 30-40 min on this 2-core CPU).
Run: ``python -m benchmarks.bench_memory`` (defaults: 1M items, 2k users); ``--quick`` is a small smoke run
(20k items, every phase, seconds). The 1M-item approximate graph with its recall and peak memory:
``python -m benchmarks.bench_memory --knn-ivf-items 1000000 --skip evaluate,knn_tiles,knn_assembly,knn_full``.
Not part of ``python -m benchmarks.run``: peak memory needs a process of its own.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import resource
import sys
import time
from typing import Callable, Dict, List

import torch

BENCHES: list = []  # benchmarks.run collects BENCHES; this benchmark runs standalone (see the docstring)

_STATUS = "/proc/self/status"


def _status_kb(field: str) -> int:
    with open(_STATUS) as f:
        m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    return int(m.group(1)) if m else -1


class PeakMeter:
    """Resident-set measurements of this process, in MiB."""

    def __init__(self) -> None:
        self.resettable = os.path.exists(_STATUS) and self._try_reset()
        self.method = "VmHWM (reset per phase)" if self.resettable else "ru_maxrss (not resettable: upper bound)"

    @staticmethod
    def _try_reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            return True
        except OSError:
            return False

    def rss(self) -> float:
        if os.path.exists(_STATUS):
            return _status_kb("VmRSS") / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def reset(self) -> None:
        gc.collect()
        if self.resettable:
            self._try_reset()

    def peak(self) -> float:
        if self.resettable:
            return _status_kb("VmHWM") / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def measure(meter: PeakMeter, name: str, fn: Callable[[], object], note: str = "") -> Dict[str, object]:
    meter.reset()
    start = meter.rss()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = meter.peak()
    # CPU seconds beside wall seconds: on a shared machine the wall time grows with the load, the CPU time
    # much less (it is the work done, all threads together).
    row = {"phase": name, "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 1), "rss_start_mib": round(start, 1),
           "peak_mib": round(peak, 1), "peak_rise_mib": round(peak - start, 1), "note": note}
    print(f"{name:<14} {seconds:>9.2f} s  (cpu {cpu:>8.1f} s)  start {start:>8.0f} MiB  peak {peak:>8.0f} MiB  "
          f"rise {peak - start:>8.0f} MiB  {note}", flush=True)
    row["result"] = out
    return row


def _knn_ivf(meter: PeakMeter, args, feats, knn_mod) -> Dict[str, object]:
    """The complete approximate build at ``--knn-ivf-items`` items and its neighbour recall on a sample."""
    n = args.knn_ivf_items
    if feats is None or feats.shape[0] < n:
        # a catalog of its own (the same generator and features as the main one)
        from motorec.data import synthetic

        feats = synthetic(args.users, n, num_interactions=20 * args.users, modalities={"image": args.dim},
                          seed=0, split="cold").features["image"]
    x = feats[:n].contiguous()
    plan = knn_mod.plan(n, args.k, method="ivf")
    captured = {}
    real = knn_mod.knn_topk_ivf

    def keep(*a, **kw):  # the top-k lists the build makes, for the recall check below
        captured["sim"], captured["idx"] = out = real(*a, **kw)
        return out

    knn_mod.knn_topk_ivf = keep
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    try:
        row = measure(meter, "knn_ivf", lambda: knn_mod.knn_graph(x, k=args.k, method="ivf"), str(plan))
    finally:
        knn_mod.knn_topk_ivf = real
    graph = row.pop("result")
    row.update(items=n, k=args.k, nlist=plan.nlist, nprobe=plan.nprobe, nnz=graph.nnz,
               loadavg_1min_start=round(load0, 2))
    del graph
    m = min(args.recall_sample, n)
    sample = torch.randperm(n, generator=torch.Generator().manual_seed(1))[:m]
    t0 = time.perf_counter()
    _, exact_idx = knn_mod.knn_topk(x[sample], x, args.k + 1)
    # drop each sampled item itself from its exact list (the ivf lists exclude it)
    not_self = exact_idx != sample[:, None]
    exact_idx = torch.stack([r[keep_r][:args.k] for r, keep_r in zip(exact_idx, not_self)])
    approx = captured["idx"][sample]
    recall = (approx[:, :, None] == exact_idx[:, None, :]).any(1).double().mean().item()
    row.update(recall_sample=m, recall_at_k=round(recall, 4), exact_check_seconds=round(time.perf_counter() - t0, 1),
               loadavg_1min_end=round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None)
    print(f"{'':<14} -> neighbour recall@{args.k} {recall:.4f} on {m:,} sampled items against the exact top-{args.k} "
          f"(checked in {row['exact_check_seconds']} s); load average {row['loadavg_1min_start']} -> "
          f"{row['loadavg_1min_end']}", flush=True)
    return row


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000, help="catalog size N (default 1M)")
    p.add_argument("--users", type=int, default=2000, help="users (all of their test items are ranked)")
    p.add_argument("--dim", type=int, default=64, help="embedding / feature width")
    p.add_argument("--eval-batch", default="256,1024", help="evaluate batch sizes (users per block), comma-separated")
    p.add_argument("--eval-memory-mb", type=float, default=None,
                   help="evaluate's score-block budget in MiB (default motorec.eval.metrics.EVAL_MEMORY_MB)")
    p.add_argument("--k", type=int, default=10, help="neighbours per item in the kNN graph")
    p.add_argument("--knn-rows", type=int, default=2048, help="query rows of the measured kNN tile loop")
    p.add_argument("--knn-full-items", type=int, default=50_000, help="items of the complete exact kNN build")
    p.add_argument("--knn-ivf-items", type=int, default=100_000,
                   help="items of the complete approximate (ivf) kNN build; 1000000 for the full 1M build")
    p.add_argument("--recall-sample", type=int, default=10_000, help="items whose ivf neighbours are checked")
    p.add_argument("--quick", action="store_true", help="small smoke run: 20k items, 500 users, every phase")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--skip", default="", help="phases to skip, comma-separated")
    args = p.parse_args(argv)
    if args.quick:
        args.items, args.users, args.knn_rows = 20_000, 500, 256
        args.knn_full_items, args.knn_ivf_items, args.recall_sample = 20_000, 20_000, 1000
    if args.threads:
        torch.set_num_threads(args.threads)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    from motorec.data import synthetic
    from motorec.eval import evaluate
    from motorec.eval.metrics import eval_batch_size
    from motorec.nn import knn as knn_mod

    meter = PeakMeter()
    print(f"# bench_memory: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads); N={args.items:,} items, "
          f"{args.users:,} users, d={args.dim}; memory: {meter.method}", flush=True)
    rows = []
    g = torch.Generator().manual_seed(0)

    def build():
        ds = synthetic(args.users, args.items, num_interactions=20 * args.users, modalities={"image": args.dim},
                       seed=0, split="cold")
        users = torch.randn(args.users, args.dim, generator=g)
        items = torch.randn(args.items, args.dim, generator=g)
        return ds, users, items

    row = measure(meter, "catalog", build, "synthetic cold-start catalog + embeddings")
    ds, user_emb, item_emb = row.pop("result")
    rows.append(row)
    n_eval = int(torch.unique(ds.test[:, 0]).numel())
    print(f"#   {ds.summary().splitlines()[0]}; {n_eval:,} test users", flush=True)

    def score_fn(users: torch.Tensor) -> torch.Tensor:
        return user_emb[users] @ item_emb.t()  # noqa: F821 (freed by the del below, after the last call)

    if "evaluate" not in skip:
        for b in (int(x) for x in args.eval_batch.split(",") if x.strip()):
            eff = eval_batch_size(b, args.items, memory_mb=args.eval_memory_mb, settings=True)
            block = eff * args.items * 4 / 2**20
            row = measure(meter, "evaluate", lambda: evaluate(score_fn, ds, split="test", batch_size=b,  # noqa: F821
                                                              memory_mb=args.eval_memory_mb),
                          f"batch_size={b} -> {eff} under the memory budget: {n_eval:,} users x "
                          f"{args.items:,} items ranked; score block {block:.0f} MiB")
            res = row.pop("result")
            row.update(batch_size=b, effective_batch=eff, score_block_mib=round(block, 1), users=n_eval,
                       users_per_s=round(n_eval / row["seconds"], 1), recall20=res["hybrid"]["recall@20"])
            rows.append(row)

    feats = ds.features["image"]
    del ds, user_emb, item_emb
    if "knn_tiles" not in skip:
        r = min(args.knn_rows, args.items)
        row = measure(meter, "knn_tiles",
                      lambda: knn_mod.knn_topk(feats[:r], feats, args.k + 1),
                      f"{r:,} query rows x {args.items:,} items, tile {knn_mod._block(None, args.items)} rows")
        row.pop("result")
        per_row = row["seconds"] / r
        row.update(query_rows=r, extrapolated_full_seconds=round(per_row * args.items, 1))
        print(f"{'':<14} -> {per_row * 1e3:.2f} ms per item: the full {args.items:,}-item search would take "
              f"about {per_row * args.items / 3600:.1f} h here (memory stays that of one tile)", flush=True)
        rows.append(row)

    if "knn_assembly" not in skip:
        real_topk = knn_mod.knn_topk

        def stub_topk(query, keys, k, *, block_size=None, exclude_self=False):
            # The search's output, without the search: sorted similarities and random neighbour ids.
            m = query.shape[0]
            sim = torch.rand(m, k, generator=g).sort(dim=1, descending=True).values
            idx = torch.randint(0, keys.shape[0], (m, k), generator=g)
            return sim, idx

        knn_mod.knn_topk = stub_topk
        try:
            row = measure(meter, "knn_assembly", lambda: knn_mod.knn_graph(feats, k=args.k),
                          f"knn_graph({args.items:,} items, k={args.k}) with the top-k search stubbed")
        finally:
            knn_mod.knn_topk = real_topk
        graph = row.pop("result")
        row.update(nnz=graph.nnz)
        del graph
        rows.append(row)

    if "knn_full" not in skip:
        n = min(args.knn_full_items, args.items)
        x = feats[:n].clone()
        row = measure(meter, "knn_full", lambda: knn_mod.knn_graph(x, k=args.k, method="exact"),
                      f"complete exact knn_graph({n:,} items, k={args.k})")
        graph = row.pop("result")
        row.update(items=n, nnz=graph.nnz)
        rows.append(row)
        del x, graph

    if "knn_ivf" not in skip:
        rows.append(_knn_ivf(meter, args, feats if args.knn_ivf_items <= args.items else None, knn_mod))

    if args.json:
        meta = {"host": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__,
                "threads": torch.get_num_threads(), "items": args.items, "users": args.users, "dim": args.dim,
                "method": meter.method, "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
                "argv": list(argv) if argv is not None else sys.argv[1:]}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
