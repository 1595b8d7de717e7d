"""Where a MoToRec training step spends its time, per model component, forward and backward together.

Each named part of the model (``motorec.models.MoToRec``: the tokenizer's encoder / quantizer / decoder per
modality, the token level, the item-item level, the fusion, the collaborative LightGCN) runs inside a
``torch.profiler.record_function`` range opened by forward hooks. Every op recorded by the profiler is then
charged to a component:

* a forward op: to the innermost component range around it;
* a backward op: to the component of the forward op that created its autograd node (the profiler links the
  two by the autograd sequence number), so "decoder" means decoder forward + its backward;
* anything else (loss terms outside the parts, the optimizer, the sampler) to ``other: <op name>`` for the
  largest ops, grouped.

Output: a Markdown table (self CPU time per component, share of the step, torch vs auto side by side) on
stdout and in ``benchmarks/results/profile_train_<device>.md``. Rerun::

    python -m benchmarks.profile_train --users 30000 --items 15000 --interactions 300000 --steps 5

This is a profile, not a benchmark: the profiler's overhead inflates small ops; use ``bench_train`` for
timings. Both backends run the same model from the same seed on the same batches.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from typing import Dict, List, Tuple

import torch
from torch.autograd.profiler import record_function

from benchmarks.harness import DEFAULT_OUT, device_slug, git_sha

# (attribute path prefix of a submodule, component label); the first match (longest prefix first) wins
_PARTS = ("tokenizer", "token_level", "item_item", "fusion", "lightgcn")


def _component_modules(model: torch.nn.Module) -> List[Tuple[str, torch.nn.Module]]:
    """Submodules that get their own range: each part, and inside the tokenizer each RQ-VAE's encoder,
    quantizer and decoder (the RQ-VAE's remaining work, its losses, stays with ``tokenizer``). The parts are
    MoToRec's, inside whatever wrappers hold it."""
    from motorec.models import unwrap

    out = []
    for name, mod in unwrap(model).named_modules():
        parts = name.split(".")
        if len(parts) == 1 and parts[0] in _PARTS:
            out.append((name, mod))
        elif parts[0] == "tokenizer" and parts[-1] in ("encoder", "quantizer", "decoder") and len(parts) == 4:
            out.append((f"tokenizer.{parts[-1]}", mod))
    return out


def _instrument(model: torch.nn.Module) -> list:
    handles = []
    for label, mod in _component_modules(model):
        def pre(_m, _inp, label=label):
            _m._profile_range = record_function(f"component::{label}")
            _m._profile_range.__enter__()

        def post(_m, _inp, _out):
            _m._profile_range.__exit__(None, None, None)

        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))
        sampled = getattr(mod, "forward_sampled", None)  # the token level of a sampled step is not a forward call
        if sampled is not None:
            def wrapped(*args, _f=sampled, _label=label, **kwargs):
                with record_function(f"component::{_label}"):
                    return _f(*args, **kwargs)

            mod.forward_sampled = wrapped
            handles.append(_Unwrap(mod, "forward_sampled"))
    return handles


class _Unwrap:
    """A handle whose ``remove()`` drops an instance attribute that shadows a method."""

    def __init__(self, mod: torch.nn.Module, name: str) -> None:
        self.mod, self.name = mod, name

    def remove(self) -> None:
        self.mod.__dict__.pop(self.name, None)


def _charge(events) -> Dict[str, float]:
    """Self CPU microseconds per component (see the module docstring)."""
    seq_component: Dict[Tuple[int, int], str] = {}
    by_id = {}

    def component_of(ev) -> str:
        label = None
        p = ev
        while p is not None:
            if p.name.startswith("component::"):
                label = p.name[len("component::"):]
                break
            p = p.cpu_parent
        return label

    for ev in events:
        by_id[id(ev)] = ev
        if ev.sequence_nr >= 0 and not ev.name.startswith("autograd::") and "Backward" not in ev.name:
            comp = component_of(ev)
            key = (ev.thread, ev.sequence_nr)
            if comp is not None and key not in seq_component:
                seq_component[key] = comp
    totals: Dict[str, float] = collections.defaultdict(float)
    for ev in events:
        if ev.name.startswith("component::"):
            continue
        comp = component_of(ev)
        if comp is None:
            # a backward op: the autograd node it runs under carries the forward op's sequence number
            p = ev
            while p is not None and comp is None:
                if p.sequence_nr >= 0 and p.fwd_thread is not None:
                    comp = seq_component.get((p.fwd_thread, p.sequence_nr))
                    if comp is None and p.name.startswith("autograd::engine::evaluate_function"):
                        break
                p = p.cpu_parent
        if comp is None:
            top = ev
            while top.cpu_parent is not None and not top.cpu_parent.name.startswith("component::"):
                top = top.cpu_parent
            comp = "other: " + top.name.replace("autograd::engine::evaluate_function: ", "backward ")
        totals[comp] += ev.self_cpu_time_total
    return totals


def profile_backend(ds, backend: str, steps: int, device) -> Tuple[Dict[str, float], float]:
    from motorec.config import Config
    from motorec.models import build_model
    from motorec.train import BPRSampler, make_optimizer, seed_everything

    seed_everything(0)
    cfg = Config()  # the default MoToRec, with the default wrappers, as `motorec train` builds it
    model = build_model(ds, cfg.settings(), wrappers=cfg.wrappers, backend=backend, device=str(device))
    model.train()
    model.on_epoch_start(0)
    opt = make_optimizer(model, lr=1e-3)
    sampler = BPRSampler(ds.train, ds.num_items, batch_size=2048)
    gen = torch.Generator(device=device).manual_seed(0)
    batches = []
    for b in sampler.epoch(gen):
        batches.append(b)
        if len(batches) == steps + 1:
            break

    def step(b):
        loss, _ = model.loss(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(batches[0])  # warm-up (first-call costs, lazy graph builds)
    handles = _instrument(model)
    try:
        t0 = time.perf_counter()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for b in batches[1:]:
                step(b)
        wall = (time.perf_counter() - t0) / max(len(batches) - 1, 1)
    finally:
        for h in handles:
            h.remove()
    totals = _charge(prof.events())
    n = max(len(batches) - 1, 1)
    return {k: v / n / 1e3 for k, v in totals.items()}, wall * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=30_000)
    ap.add_argument("--items", type=int, default=15_000)
    ap.add_argument("--interactions", type=int, default=300_000)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--backends", default="torch,auto")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--top", type=int, default=14, help="components shown (the rest are summed)")
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    from motorec.data import synthetic

    device = torch.device(args.device)
    ds = synthetic(args.users, args.items, num_interactions=args.interactions,
                   modalities={"image": 256, "text": 384}, seed=0).to(device)
    results = {}
    for be in args.backends.split(","):
        results[be] = profile_backend(ds, be, args.steps, device)
    first = next(iter(results))
    order = sorted(results[first][0], key=lambda k: -results[first][0][k])
    shown, rest = order[: args.top], order[args.top:]
    bes = list(results)
    lines = [f"Per-component self CPU time of one MoToRec training step (forward + its backward), ms per step; "
             f"{args.users} users / {args.items} items / {args.interactions} interactions, {args.steps} "
             f"profiled steps, device {args.device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
             f"git {git_sha()}. Rerun: `python -m benchmarks.profile_train --users {args.users} --items "
             f"{args.items} --interactions {args.interactions} --steps {args.steps}`.", "",
             "| component | " + " | ".join(f"{b} ms | {b} share" for b in bes) + " |",
             "|---|" + "---|---|" * len(bes)]
    for k in shown + (["(rest)"] if rest else []):
        cells = []
        for b in bes:
            tot = sum(results[b][0].values())
            v = sum(results[b][0].get(r, 0.0) for r in rest) if k == "(rest)" else results[b][0].get(k, 0.0)
            cells.append(f"{v:.1f} | {100 * v / tot:.1f}%")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines.append("| **step (profiled total)** | " + " | ".join(
        f"{sum(results[b][0].values()):.1f} | 100%" for b in bes) + " |")
    lines.append("| step wall time under the profiler | " + " | ".join(f"{results[b][1]:.1f} | " for b in bes) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"profile_train_{device_slug(device)}.md")
    with open(path, "w") as fh:
        fh.write(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
