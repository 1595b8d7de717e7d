"""Training-step time at two or more catalog sizes, the models built in one process and stepped in turn, so
that a shared machine's noise falls on every size alike (the history-steps study's per-step table).

Each size is the ``bench_scale`` catalog (``synthetic:users=N/10,items=N,interactions=N``); MoToRec's item-item
graphs are random graphs shaped as ``knn_graph``'s (10 out-neighbours a row, symmetrized and normalized: about
20 nonzeros a row) instead of kNN builds (minutes at 1M items), which a step reads the same
way. Prints, per size, the epoch start (catalog pass) and the median and minimum of the steps after two
warm-up steps, and the mean neighbourhood of a batch (distinct users and items, their edges, their distinct
neighbours).

Run: ``python benchmarks/step_scaling.py --items 100000,1000000 --model motorec --propagation history``
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from motorec.config import model_config
from motorec.data.synthetic import load_synthetic_spec
from motorec.graph import Graph
from motorec.models import build_model, unwrap
from motorec.nn.lightgcn import sampled_rows
from motorec.train.trainer import make_optimizer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", default="100000,1000000", help="comma-separated catalog sizes")
    p.add_argument("--model", default="motorec", choices=["motorec", "lightgcn", "lightgcn_content"])
    p.add_argument("--propagation", default="history", choices=["full", "history"])
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--steps", type=int, default=8, help="steps per size (the first two are warm-up)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fanout", type=int, default=0, help="train.fanout (history only; 0: every neighbour)")
    args = p.parse_args(argv)
    if args.steps < 3:
        p.error("--steps must be >= 3 (two warm-up steps)")
    torch.set_num_threads(args.threads)
    setups = []
    for n in (int(x) for x in args.items.split(",")):
        ds = load_synthetic_spec(f"synthetic:users={max(2, n // 10)},items={n},interactions={n}")
        torch.manual_seed(0)
        m = build_model(ds, model_config(args.model), propagation=args.propagation, fanout=args.fanout)
        m.train()
        inner = unwrap(m)
        if hasattr(inner, "item_item"):
            g = torch.Generator().manual_seed(0)
            k = min(10, n - 1)
            row, col = torch.arange(n).repeat_interleave(k), torch.randint(0, n, (n * k,), generator=g)
            graph = Graph.from_edge_index(torch.stack([torch.cat([row, col]), torch.cat([col, row])]), n)
            inner.item_item.graphs = {mod: graph for mod in inner.tokenizer.modalities}
        opt = make_optimizer(m, lr=1e-3)
        t0 = time.perf_counter()
        m.on_epoch_start(1)
        setups.append({"n": n, "ds": ds, "m": m, "opt": opt, "start": time.perf_counter() - t0, "times": [],
                       "hood": []})
    gen = torch.Generator().manual_seed(1)
    for _ in range(args.steps):
        for s in setups:
            tr, m = s["ds"].train, s["m"]
            idx = torch.randint(0, tr.shape[0], (args.batch_size,), generator=gen)
            batch = {"users": tr[idx, 0], "pos": tr[idx, 1],
                     "neg": torch.randint(0, m.num_items, (args.batch_size,), generator=gen)}
            users, items = batch["users"].unique(), torch.cat([batch["pos"], batch["neg"]]).unique()
            seg, col, _, _ = sampled_rows(m.graph, torch.cat([users, items + m.num_users]), args.fanout)
            s["hood"].append((users.numel(), items.numel(), seg.numel(), col.unique().numel()))
            t0 = time.perf_counter()
            loss, _ = m.loss(batch)
            s["opt"].zero_grad(set_to_none=True)
            loss.backward()
            s["opt"].step()
            s["times"].append(time.perf_counter() - t0)
    for s in setups:
        t = s["times"][2:]
        hood = [statistics.mean(col) for col in zip(*s["hood"])]
        print(f"{args.model} {args.propagation} items={s['n']} batch={args.batch_size} epoch_start={s['start']:.2f}s "
              f"step median={statistics.median(t) * 1e3:.1f}ms min={min(t) * 1e3:.1f}ms | batch users={hood[0]:.0f} "
              f"items={hood[1]:.0f} edges={hood[2]:.0f} distinct neighbours={hood[3]:.0f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
