"""Multi-run comparisons: every model trained on several cold-item draws and seeds, summarized with spread and
a paired test (``motorec compare``).

One cold-item draw says little on a small catalog (which items were held out moves every model's cold recall
by a factor of two), so the field compares methods as means over draws. :func:`run_compare` trains each
``(draw, seed)`` as one ``motorec train`` subprocess (``--split-seed draw --seed seed``) into
``OUT/runs/draw<d>_seed<s>/``, skipping finished runs and resuming interrupted ones, then
:func:`summarize` reads every run's ``metrics.json`` and writes ``OUT/summary.json`` and ``OUT/summary.md``:

* mean ± sd (over runs) per model and setting (``cold``: warm items masked; ``warm``: cold items masked;
  ``hybrid``: nothing masked), Recall and NDCG at 10 and 20, on the test split;
* per-draw means (over seeds) of Recall@20 and NDCG@20;
* for each setting, a paired two-sided Wilcoxon signed-rank test (:mod:`motorec.eval.stats`) of MoToRec
  against the strongest other model on that setting's mean Recall@20 (and on NDCG@20);
* two rows for scale, computed on each draw's data without training: ``random`` (uniform random scores) and
  ``popularity_oracle`` (items ranked by their popularity in the test split itself: it peeks at the answers,
  so it is a reference point, not a baseline).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from motorec.eval.stats import wilcoxon_signed_rank

__all__ = ["run_compare", "summarize", "setting_metrics", "SETTING_NAMES", "SCALE_ROWS", "format_summary"]

SETTING_NAMES = ("cold", "warm", "hybrid")
METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")
SCALE_ROWS = ("random", "popularity_oracle")
# metrics.json keys of the three settings: the protocol's names, or the names used before they existed
_LEGACY = {"cold": "cold_only", "warm": "warm_only", "hybrid": "overall"}


def setting_metrics(split_metrics: Dict[str, Any], setting: str) -> Dict[str, float]:
    """One setting's metrics from a model's ``metrics.json`` entry for a split (``m[model]["test"]``): its
    ``cold`` / ``warm`` / ``hybrid`` key where the entry has a ``hybrid`` key (:func:`motorec.eval.evaluate`'s
    result), or for run directories written before the three settings were the primary report, the keys that
    measured the same thing (``cold_only``, ``warm_only``, and the shared ranking ``overall``; their ``warm`` and
    ``cold`` were the shared ranking's groups, not the settings)."""
    if setting not in SETTING_NAMES:
        raise ValueError(f"setting must be one of {SETTING_NAMES}, got {setting!r}")
    key = setting if "hybrid" in split_metrics else _LEGACY[setting]
    if key not in split_metrics:
        raise KeyError(f"no {setting!r} setting ({key!r}) in these metrics; keys: {sorted(split_metrics)}")
    return split_metrics[key]


def _run_dir(out: Path, draw: int, seed: int) -> Path:
    return out / "runs" / f"draw{draw}_seed{seed}"


def _run_complete(run: Path, models: Sequence[str]) -> bool:
    path = run / "metrics.json"
    if not path.is_file():
        return False
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return all(name in m and "test" in m[name] for name in models)


def _train_command(run: Path, draw: int, seed: int, models: Sequence[str], *, data: Optional[str],
                   config: Optional[str], epochs: Optional[int], threads: int, backend: Optional[str],
                   device: Optional[str]) -> List[str]:
    cmd = [sys.executable, "-m", "motorec", "train", "--split-seed", str(draw), "--seed", str(seed),
           "--out", str(run), "--threads", str(threads), "--quiet"]
    for name in models:
        cmd += ["--model", name]
    for flag, value in (("--data", data), ("--config", config), ("--epochs", epochs), ("--backend", backend),
                        ("--device", device)):
        if value is not None:
            cmd += [flag, str(value)]
    if (run / "config.yaml").is_file():
        cmd.append("--resume")
    return cmd


def run_compare(out: str | Path, *, models: Sequence[str], draws: int = 5, seeds: int = 1, data: Optional[str] = None,
                config: Optional[str] = None, epochs: Optional[int] = None, threads: int = 1, jobs: int = 1,
                backend: Optional[str] = None, device: Optional[str] = None, progress: bool = True) -> Dict[str, Any]:
    """Train ``models`` on ``draws`` cold-item draws x ``seeds`` seeds (one subprocess per run, ``jobs`` at a
    time), then :func:`summarize`. Finished runs are skipped and interrupted ones resumed, so the command can be
    re-run after a stop. Raises RuntimeError naming the failed runs and their logs if any run fails (the
    finished ones stay on disk). Returns the summary."""
    for name, v in (("draws", draws), ("seeds", seeds), ("threads", threads), ("jobs", jobs)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if not models:
        raise ValueError("models must name at least one model")
    out = Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    plan = [(d, s) for d in range(draws) for s in range(seeds)]
    todo = [(d, s) for d, s in plan if not _run_complete(_run_dir(out, d, s), models)]
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="compare runs", unit="run")

    def one(ds: Tuple[int, int]) -> Optional[str]:
        d, s = ds
        run = _run_dir(out, d, s)
        run.mkdir(parents=True, exist_ok=True)
        cmd = _train_command(run, d, s, models, data=data, config=config, epochs=epochs, threads=threads,
                             backend=backend, device=device)
        log = run.parent / f"{run.name}.log"
        with open(log, "w") as fh:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=dict(os.environ)).returncode
        if bar is not None:
            bar.update(1)
        return None if rc == 0 else f"draw {d} seed {s} (exit {rc}; log {log})"

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        failures = [f for f in pool.map(one, todo) if f]
    if bar is not None:
        bar.close()
    if failures:
        raise RuntimeError("some runs failed: " + "; ".join(failures))
    return summarize(out, models=models, draws=draws, seeds=seeds, data=data)


def _mean_sd(values: Sequence[float]) -> Tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, sd


def _scale_rows(data: Optional[str], split: str, draw: int, seed: int) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Test metrics of the random ranking and the test-popularity oracle on one draw's data."""
    import torch

    from motorec.data import load_mmrec, load_movielens100k
    from motorec.eval.metrics import evaluate

    ds = load_movielens100k(split=split, seed=draw) if data is None else load_mmrec(data, split=split, seed=draw)
    gen = torch.Generator().manual_seed(1000 * draw + seed)
    test = ds.interactions("test")
    pop = torch.bincount(test[:, 1].long(), minlength=ds.num_items).double()

    def random_scores(users):
        return torch.rand(users.numel(), ds.num_items, generator=gen, dtype=torch.float64)

    def oracle_scores(users):
        return pop.unsqueeze(0).repeat(users.numel(), 1)

    out = {}
    for name, fn in (("random", random_scores), ("popularity_oracle", oracle_scores)):
        out[name] = evaluate(fn, ds, split="test", device="cpu")
    return out


def summarize(out: str | Path, *, models: Sequence[str], draws: int, seeds: int, data: Optional[str] = None,
              reference: str = "motorec", scale_rows: bool = True) -> Dict[str, Any]:
    """Read ``OUT/runs/*/metrics.json`` of every ``(draw, seed)`` and write ``OUT/summary.json`` and
    ``OUT/summary.md`` (see the module docstring). Returns the summary dict."""
    out = Path(out)
    runs: List[Dict[str, Any]] = []
    split = "cold"
    for d in range(draws):
        for s in range(seeds):
            run = _run_dir(out, d, s)
            if not _run_complete(run, models):
                raise FileNotFoundError(f"run draw {d} seed {s} is missing or unfinished: {run}")
            m = json.loads((run / "metrics.json").read_text())
            info_path = run / "run.json"
            if info_path.is_file():
                split = json.loads(info_path.read_text()).get("split", split)
            row = {"draw": d, "seed": s, "models": {name: m[name]["test"] for name in models}}
            if scale_rows:
                row["models"].update(_scale_rows(data, split, d, s))
            runs.append(row)
    names = list(models) + (list(SCALE_ROWS) if scale_rows else [])
    table: Dict[str, Any] = {}
    for name in names:
        table[name] = {}
        for st in SETTING_NAMES:
            vals = {k: [setting_metrics(r["models"][name], st)[k] for r in runs] for k in METRICS}
            entry = {}
            for k, v in vals.items():
                mean, sd = _mean_sd(v)
                entry[k] = {"mean": mean, "sd": sd, "runs": v}
            entry["per_draw"] = {k: [_mean_sd([setting_metrics(r["models"][name], st)[k] for r in runs
                                               if r["draw"] == d])[0] for d in range(draws)]
                                 for k in ("recall@20", "ndcg@20")}
            table[name][st] = entry
    tests: Dict[str, Any] = {}
    others = [n for n in models if n != reference]
    if reference in models and others:
        for st in SETTING_NAMES:
            best = max(others, key=lambda n: table[n][st]["recall@20"]["mean"])
            tests[st] = {"against": best}
            for k in ("recall@20", "ndcg@20"):
                a, b = table[reference][st][k]["runs"], table[best][st][k]["runs"]
                ratio = table[reference][st][k]["mean"] / table[best][st][k]["mean"] \
                    if table[best][st][k]["mean"] > 0 else math.inf
                tests[st][k] = {"ratio": ratio, **wilcoxon_signed_rank(a, b)}
    summary = {"models": list(models), "draws": draws, "seeds": seeds, "split": split, "data": data,
               "reference": reference, "table": table, "tests": tests,
               "runs": [{"draw": r["draw"], "seed": r["seed"]} for r in runs]}
    _write_atomic(out / "summary.json", json.dumps(summary, indent=2))
    _write_atomic(out / "summary.md", format_summary(summary))
    return summary


def format_summary(summary: Dict[str, Any]) -> str:
    """Markdown tables of a :func:`summarize` result: mean ± sd per model and setting, per-draw Recall@20 of
    the cold setting, and the paired tests."""
    table, tests = summary["table"], summary["tests"]
    n_runs = summary["draws"] * summary["seeds"]
    lines = [f"Test split, {summary['draws']} cold-item draws x {summary['seeds']} seed(s) = {n_runs} runs; "
             "mean ± sd over runs.", "",
             "| model | " + " | ".join(f"{st} R@20 | {st} N@20" for st in SETTING_NAMES) + " |",
             "|---|" + "---|" * (2 * len(SETTING_NAMES))]
    for name, per in table.items():
        cells = []
        for st in SETTING_NAMES:
            for k in ("recall@20", "ndcg@20"):
                cells.append(f"{per[st][k]['mean']:.4f} ± {per[st][k]['sd']:.4f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    draws = summary["draws"]
    for st in SETTING_NAMES:
        lines += ["", f"Per-draw Recall@20, {st} setting (mean over seeds):", "",
                  "| model | " + " | ".join(f"draw {d}" for d in range(draws)) + " |",
                  "|---|" + "---|" * draws]
        for name, per in table.items():
            lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in per[st]["per_draw"]["recall@20"]) + " |")
    if tests:
        lines += ["", f"Paired two-sided Wilcoxon signed-rank tests, {summary['reference']} against the strongest "
                  f"other model per setting (by mean Recall@20), over {n_runs} runs:", "",
                  "| setting | against | R@20 ratio | wins/losses | p | N@20 ratio | p |", "|---|---|---|---|---|---|---|"]
        for st, t in tests.items():
            r, nd = t["recall@20"], t["ndcg@20"]
            lines.append(f"| {st} | {t['against']} | {r['ratio']:.3f} | {int(r['wins'])}/{int(r['losses'])} | "
                         f"{r['p_value']:.4f} | {nd['ratio']:.3f} | {nd['p_value']:.4f} |")
        lines.append("")
        lines.append(f"(with {n_runs} runs the smallest attainable exact p is {2 / 2 ** n_runs:.4f})")
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
