"""Scale benchmark: one joint epoch of MoToRec and LightGCN through the real :class:`motorec.train.Trainer` on
synthetic catalogs of growing size, at a fixed number of interactions per item.

For each size ``items`` in ``--items`` (default 10k and 100k; add 1000000 for the million-item row) the catalog
is ``synthetic:users=items/10,items=items,interactions=items`` (``--per-item`` interactions per item; the
``motorec train --data`` spec of the same name, image 64-d and text 32-d features) and each model of
``--models`` trains for ``--epochs`` joint epochs (default 2, after the config's tokenizer pre-training, for
MoToRec) under ``--config`` (default ``configs/large.yaml``), with a checkpoint written as ``motorec train``
writes it (``--steps S``: the batch size that gives S steps per epoch at every size, instead of the config's
fixed batch). Each run is its own process, so that its peak resident memory is its own. The row reports the last
joint epoch, the steady state of a run: the first also pays one-off costs (first-call warm-up, and MoToRec's
first kNN graph build, which ``knn_rebuild_every`` then amortizes), reported apart as ``seconds_first_epoch``
and ``seconds_knn``.

Each run appends one row to ``--csv`` (default ``benchmarks/results/scale_cpu.csv``): device, torch version, git
sha, items, users, interactions, model, ``seconds_step_total`` (the epoch's sampling and steps),
``seconds_catalog`` (the model's epoch start: MoToRec's catalog pass and a kNN rebuild when one is due, the
snapshot ensemble's pass over the catalog when the config has one),
``seconds_epoch`` (the two together), ``seconds_valid`` (one validation on the config's ``train.eval_users``
sample), ``peak_rss_mb`` (the whole run's), and the other stages (the first joint epoch, the kNN graph build of
the first, pre-training, checkpoint writes, final test, the dataset's generation, the run's wall time, and the
machine's 1-minute load average when the run started: on a shared machine, times measured under a load above
the thread count are inflated and noisy), and ``allocator`` (:func:`motorec.train.cpu_allocator`: the workers
inherit the environment, so ``LD_PRELOAD=.../libtcmalloc_minimal.so.4 python benchmarks/bench_scale.py`` times
the runs under TCMalloc).

The growth exponent of ``seconds_epoch`` against items (the slope of a least-squares line in log-log, per model,
and between successive sizes) is fitted on the latest row per (model, items) of this device in the CSV,
printed, and stored beside the CSV (``.json``); ``--plot`` draws the rows in log-log (default beside the CSV,
``.png``; with ``--steps S``, ``_stepsS.json`` and ``_stepsS.png``, fitted on the rows run with ``--steps S``).

Run: ``OMP_NUM_THREADS=2 python benchmarks/bench_scale.py`` (``--items 10000,100000,1000000`` for the 1M row;
``--tiny``: a small model, for tests). ``--from-run RUN_DIR`` runs nothing: it makes the rows of a finished
``motorec train`` run on a ``synthetic:`` catalog from its ``train.log`` (the same trainer, the same stage times;
with one joint epoch, ``seconds_epoch`` is that epoch without its kNN build and ``seconds_first_epoch`` with it).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, "") and str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

DEFAULT_CSV = ROOT / "benchmarks" / "results" / "scale_cpu.csv"
DEFAULT_CONFIG = ROOT / "configs" / "large.yaml"
COLUMNS = ("device", "torch", "git_sha", "items", "users", "interactions", "model", "seconds_step_total",
           "seconds_catalog", "seconds_valid", "peak_rss_mb", "seconds_epoch", "seconds_first_epoch", "seconds_knn",
           "steps", "epochs", "seconds_pretrain", "seconds_checkpoint", "seconds_test", "seconds_data", "wall_s",
           "eval_users", "batch_size", "config", "load_avg_1m", "fixed_steps", "allocator")
# --tiny: a model small enough that a test runs the benchmark in seconds
TINY = {"model": {"dim": 16},
        "motorec": {"codebook_size": 16, "latent_dim": 16, "hidden_dims": [32], "knn_k": 5, "num_levels": 2},
        "train": {"pretrain_epochs": 1, "eval_users": 20, "batch_size": 256}}


def spec(items: int, *, per_item: float, users_per_item: float) -> Dict[str, int]:
    """The catalog of one size: ``items`` items, ``items * users_per_item`` users, ``items * per_item``
    interactions."""
    return {"items": items, "users": max(2, int(round(items * users_per_item))),
            "interactions": max(1, int(round(items * per_item)))}


def run_one(model: str, sizes: Dict[str, int], *, config: str, tiny: bool, epochs: int,
            steps: Optional[int] = None) -> Dict[str, Any]:
    """One run in this process: the synthetic catalog, ``epochs`` joint epochs of ``model`` (``steps`` per epoch:
    the batch size that gives them, instead of the config's); the CSV row."""
    import torch

    import motorec.models  # noqa: F401  (registers every model's config section)
    from benchmarks.harness import device_name, git_sha
    from motorec.config import Config
    from motorec.data.synthetic import load_synthetic_spec
    from motorec.train import Trainer, cpu_allocator

    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    data = f"synthetic:users={sizes['users']},items={sizes['items']},interactions={sizes['interactions']}"
    ds = load_synthetic_spec(data)
    t_data = time.perf_counter() - t0
    cfg = Config.load(config)
    if tiny:
        cfg = cfg.replace(**TINY)
    cfg = cfg.replace(model={"name": model}, train={"epochs": epochs, "patience": 0, "eval_every": 1})
    if steps:
        cfg = cfg.replace(train={"batch_size": max(1, math.ceil(ds.train.shape[0] / steps))})
    with tempfile.TemporaryDirectory() as ckpt:
        res = Trainer(cfg, ds, quiet=True, checkpoint_dir=ckpt).fit()
    rows = [h for h in res["history"] if h["stage"] == "joint"]
    joint = rows[-1]
    tc = cfg.train
    return {"device": device_name(torch.device("cpu")), "torch": torch.__version__, "git_sha": git_sha(),
            "model": model, **sizes,
            "seconds_step_total": joint["seconds_steps"], "seconds_catalog": joint["seconds_epoch_start"],
            "seconds_valid": joint["seconds_valid"], "peak_rss_mb": res["peak_rss_mb"],
            "seconds_epoch": joint["seconds"], "seconds_first_epoch": rows[0]["seconds"],
            "seconds_knn": rows[0].get("seconds_knn", 0.0), "steps": math.ceil(ds.train.shape[0] / tc.batch_size),
            "epochs": epochs,
            "seconds_pretrain": res["seconds"].get("pretrain", 0.0),
            "seconds_checkpoint": res["seconds"].get("checkpoint", 0.0), "seconds_test": res["seconds"]["test"],
            "seconds_data": t_data, "wall_s": time.perf_counter() - t0, "eval_users": tc.eval_users,
            "batch_size": tc.batch_size, "config": Path(config).name + (" +tiny" if tiny else ""),
            "load_avg_1m": load, "fixed_steps": steps or "", "allocator": cpu_allocator()}


def append(path: Path, row: Dict[str, Any]) -> None:
    """Append ``row`` to the CSV at ``path`` (header :data:`COLUMNS` when the file is new; a file written with a
    subset of them is rewritten once with them all, the new columns empty in its old rows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header, old = reader.fieldnames or [], list(reader)
        if tuple(header) != COLUMNS:
            if not set(header) <= set(COLUMNS):
                raise SystemExit(f"{path} has other columns ({','.join(header)}); write to another --csv")
            with path.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=COLUMNS, restval="")
                w.writeheader()
                w.writerows(old)
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})


def _log_values(text: str) -> Dict[str, Any]:
    """``k=v`` pairs of a ``train.log`` line, numbers as floats."""
    out: Dict[str, Any] = {}
    for part in text.replace(";", " ").split():
        if "=" in part:
            k, v = part.split("=", 1)
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v
    return out


def rows_from_run(run: Path, *, git_sha: str, device: str) -> list:
    """The CSV rows of a finished ``motorec train`` run (see the module docstring), one per model, parsed from
    its ``train.log``, ``run.json`` and ``config.yaml``."""
    import datetime as dt

    if not all((run / f).is_file() for f in ("run.json", "train.log", "config.yaml")):
        raise SystemExit(f"--from-run {str(run)!r} is not a motorec train run directory (no run.json / train.log /"
                         " config.yaml)")
    import motorec.models  # noqa: F401  (registers every model's config section)
    from motorec.config import Config
    from motorec.data.synthetic import parse_synthetic_spec

    info = json.loads((run / "run.json").read_text())
    spec_kv = parse_synthetic_spec(info.get("data") or "")
    if spec_kv is None:
        raise SystemExit(f"--from-run {run}: its data is {info.get('data')!r}, not a synthetic: catalog")
    tc = Config.load(run / "config.yaml").train
    lines = (run / "train.log").read_text().splitlines()
    clock = [dt.datetime.strptime(line[:8], "%H:%M:%S") if line[:2].isdigit() else None for line in lines]
    start = next(c for c in clock if c is not None)
    train = next((int(line.split(" train ", 1)[1].split()[0].replace(",", "")) for line in lines
                  if " train " in line and " data: " in line), 0)
    rows = []
    for model in info["models"]:
        joint = [_log_values(line) for line in lines if f" {model} epoch " in line and "stage=joint" in line]
        pre = [_log_values(line) for line in lines if f" {model} epoch " in line and "stage=pretrain" in line]
        stages = [_log_values(line) for line in lines if line[9:].startswith(f"{model}: seconds per stage")]
        done = [i for i, line in enumerate(lines) if line[9:].startswith(f"{model} test:")]
        if not joint or not stages or not done:
            raise SystemExit(f"--from-run {run}: {model} has no finished joint epoch and test in train.log")
        end = clock[done[0]]
        wall = ((end - start).total_seconds()) % 86400
        start = end
        last, st = joint[-1], stages[-1]
        knn = float(last.get("seconds_knn", 0.0))
        rows.append({
            "device": device, "torch": _torch_version(), "git_sha": git_sha, "items": int(spec_kv["items"]),
            "users": int(spec_kv["users"]), "interactions": int(spec_kv["interactions"]),
            "model": model, "seconds_step_total": last["seconds_steps"],
            "seconds_catalog": last["seconds_epoch_start"] - knn, "seconds_valid": last.get("seconds_valid", 0.0),
            "peak_rss_mb": st.get("peak_rss_mb", last.get("peak_rss_mb")),
            "seconds_epoch": last["seconds"] - knn, "seconds_first_epoch": joint[0]["seconds"],
            "seconds_knn": float(joint[0].get("seconds_knn", 0.0)),
            "steps": math.ceil(train / tc.batch_size) if train else "", "epochs": len(joint),
            "seconds_pretrain": sum(r.get("seconds_pretrain", 0.0) for r in pre),
            "seconds_checkpoint": st.get("checkpoint", 0.0), "seconds_test": st.get("test", 0.0),
            "seconds_data": "", "wall_s": wall, "eval_users": tc.eval_users, "batch_size": tc.batch_size,
            "config": f"{run.name} (motorec train)", "load_avg_1m": "", "fixed_steps": "",
            "allocator": next((line.split(" allocator: ", 1)[1] for line in lines if " allocator: " in line), "")})
    return rows


def _torch_version() -> str:
    import torch
    return torch.__version__


def latest(rows: Sequence[Dict[str, str]], device: str,
           steps: Optional[int] = None) -> Dict[str, Dict[int, Dict[str, str]]]:
    """``{series: {items: row}}``: the last row of each (model, allocator, items) measured on ``device`` with the
    config's batch size (``steps`` None) or with ``steps`` fixed steps per epoch. A series is the model, named
    ``"<model> (<allocator>)"`` for rows run on another malloc than the system's (rows from before the column:
    the system's)."""
    out: Dict[str, Dict[int, Dict[str, str]]] = {}
    for r in rows:
        if r["device"] == device and (r.get("fixed_steps") or "") == (str(steps) if steps else ""):
            alloc = r.get("allocator") or "system"
            out.setdefault(r["model"] + ("" if alloc == "system" else f" ({alloc})"), {})[int(r["items"])] = r
    return out


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``log(ys)`` against ``log(xs)`` (NaN with fewer than two points)."""
    if len(xs) < 2:
        return float("nan")
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-9)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    den = sum((x - mx) ** 2 for x in lx)
    return sum((x - mx) * (y - my) for x, y in zip(lx, ly)) / den if den else float("nan")


def fit(by_model: Dict[str, Dict[int, Dict[str, str]]]) -> Dict[str, Any]:
    """Per model: the sizes, epoch seconds, the fitted exponent of the epoch and of its steps alone, and the
    exponent between each pair of successive sizes."""
    out = {}
    for model, rows in by_model.items():
        items = sorted(rows)
        epoch = [float(rows[n]["seconds_epoch"]) for n in items]
        steps = [float(rows[n]["seconds_step_total"]) for n in items]
        first = [float(rows[n]["seconds_first_epoch"]) for n in items]
        segments = {f"{a}-{b}": slope([a, b], [epoch[i], epoch[i + 1]])
                    for i, (a, b) in enumerate(zip(items, items[1:]))}
        out[model] = {"items": items, "seconds_epoch": epoch, "seconds_step_total": steps,
                      "peak_rss_mb": [float(rows[n]["peak_rss_mb"]) for n in items],
                      "exponent_epoch": slope(items, epoch), "exponent_steps": slope(items, steps),
                      "exponent_first_epoch": slope(items, first),
                      "segments": segments, "git_sha": sorted({rows[n]["git_sha"] for n in items})}
    return out


def plot(by_model: Dict[str, Dict[int, Dict[str, str]]], fits: Dict[str, Any], device: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for model, rows in sorted(by_model.items()):
        items = sorted(rows)
        line, = ax.plot(items, [float(rows[n]["seconds_epoch"]) for n in items], "o-",
                        label=f"{model} epoch (exponent {fits[model]['exponent_epoch']:.2f})")
        ax.plot(items, [float(rows[n]["seconds_step_total"]) for n in items], "s--", color=line.get_color(),
                alpha=0.6, label=f"{model} steps")
        if any(float(rows[n]["seconds_catalog"]) > 0.01 for n in items):
            ax.plot(items, [float(rows[n]["seconds_catalog"]) for n in items], "^:", color=line.get_color(),
                    alpha=0.6, label=f"{model} epoch start (catalog passes)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("items (users = items / 10, interactions = items)")
    ax.set_ylabel("seconds")
    steps = {r.get("fixed_steps") for rows in by_model.values() for r in rows.values()} - {"", None}
    how = f"{steps.pop()} steps per epoch at every size" if steps else "the config's batch size"
    ax.set_title(f"one joint epoch (steady state, {how}), {device}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", default="10000,100000", help="comma-separated catalog sizes (default 10000,100000)")
    p.add_argument("--models", default="motorec,lightgcn", help="comma-separated models (default motorec,lightgcn)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default configs/large.yaml)")
    p.add_argument("--per-item", type=float, default=1.0, help="interactions per item (default 1)")
    p.add_argument("--users-per-item", type=float, default=0.1, help="users per item (default 0.1)")
    p.add_argument("--csv", default=str(DEFAULT_CSV), help="CSV to append to (default %(default)s)")
    p.add_argument("--plot", default=None, help="log-log plot (default: the CSV's path with .png)")
    p.add_argument("--no-plot", action="store_true", help="no plot")
    p.add_argument("--epochs", type=int, default=2, help="joint epochs per run; the row reports the last (default 2)")
    p.add_argument("--steps", type=int, default=None,
                   help="steps per epoch at every size: the batch size grows with the catalog (default: the "
                        "config's batch size, so the steps grow with it)")
    p.add_argument("--tiny", action="store_true", help="a small model (for tests)")
    p.add_argument("--refit", action="store_true", help="run nothing: fit and plot the CSV's rows of --device")
    p.add_argument("--device", help="with --refit: the device column to fit (default: the last row's)")
    p.add_argument("--from-run", metavar="RUN_DIR", help="run nothing: append the rows of a finished "
                   "'motorec train' run on a synthetic catalog (see the module docstring)")
    p.add_argument("--git-sha", help="with --from-run: the commit the run was made at (default: the checkout's)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:  # one run, its row printed as JSON on the last line
        job = json.loads(args.worker)
        print(json.dumps(run_one(job["model"], job["sizes"], config=job["config"], tiny=job["tiny"],
                                 epochs=job["epochs"], steps=job["steps"])))
        return 0

    try:
        sizes = [int(s) for s in args.items.split(",") if s.strip()]
    except ValueError:
        p.error(f"--items must be comma-separated integers, got {args.items!r}")
    if not sizes or any(n < 10 for n in sizes):
        p.error(f"--items must name sizes of at least 10 items, got {args.items!r}")
    if args.epochs < 1:
        p.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:
        p.error("--models is empty")
    if not Path(args.config).is_file():
        p.error(f"--config {args.config!r} does not exist")
    out = Path(args.csv)
    device = None
    if args.from_run:
        import torch

        from benchmarks.harness import device_name, git_sha
        device = device_name(torch.device("cpu"))
        for row in rows_from_run(Path(args.from_run), git_sha=args.git_sha or git_sha(), device=device):
            append(out, row)
            print(f"{row['model']:9s} items={row['items']:>8d} epoch {row['seconds_epoch']:8.2f} s (steps "
                  f"{row['seconds_step_total']:.2f} s, catalog {row['seconds_catalog']:.2f} s; first epoch "
                  f"{row['seconds_first_epoch']:.2f} s with kNN build {row['seconds_knn']:.2f} s) peak RSS "
                  f"{row['peak_rss_mb']:.0f} MB; run {row['wall_s']:.0f} s", flush=True)
        sizes = []
    if args.refit:
        with out.open(newline="") as f:
            device = args.device or list(csv.DictReader(f))[-1]["device"]
        sizes = []
    if sizes:
        # the commit as it was before the first row: the rows this run appends to a tracked CSV would otherwise mark
        # every later row "+dirty"
        from benchmarks.harness import git_sha
        os.environ.setdefault("MOTOREC_GIT_SHA", git_sha())
    for n in sizes:
        sz = spec(n, per_item=args.per_item, users_per_item=args.users_per_item)
        for model in models:
            job = {"model": model, "sizes": sz, "config": str(Path(args.config).resolve()), "tiny": args.tiny,
                   "epochs": args.epochs, "steps": args.steps}
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr[-4000:])
                print(f"{model} at {n} items failed (exit {proc.returncode})", file=sys.stderr)
                return 1
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            device = row["device"]
            append(out, row)
            print(f"{model:9s} items={n:>8d} users={sz['users']:>7d} epoch {row['seconds_epoch']:8.2f} s "
                  f"(steps {row['seconds_step_total']:.2f} s in {row['steps']}, catalog {row['seconds_catalog']:.2f}"
                  f" s; first epoch {row['seconds_first_epoch']:.2f} s with kNN build {row['seconds_knn']:.2f} s)"
                  f" valid {row['seconds_valid']:.2f} s "
                  f"peak RSS {row['peak_rss_mb']:.0f} MB; run {time.perf_counter() - t0:.1f} s", flush=True)

    with out.open(newline="") as f:
        by_model = latest(list(csv.DictReader(f)), device, args.steps)
    if not by_model:
        print(f"{out} has no rows of {device!r} with --steps {args.steps}", file=sys.stderr)
        return 1
    fits = fit(by_model)
    for model, r in fits.items():
        segs = ", ".join(f"{k}: {v:.2f}" for k, v in r["segments"].items())
        print(f"{model}: growth exponent of the epoch time vs items {r['exponent_epoch']:.2f} (steps alone "
              f"{r['exponent_steps']:.2f}, first epoch {r['exponent_first_epoch']:.2f}) over {r['items']}; "
              f"between sizes {segs}")
    tag = f"_steps{args.steps}" if args.steps else ""
    fit_path = out.with_name(out.stem + tag + ".json")
    fit_path.write_text(json.dumps({"device": device, "fixed_steps": args.steps, "fits": fits}, indent=1) + "\n")
    if not args.no_plot:
        path = Path(args.plot) if args.plot else out.with_name(out.stem + tag + ".png")
        plot(by_model, fits, device, path)
        print(f"wrote {out}, {fit_path}, {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
