"""Multi-run comparisons: every model trained on several cold-item draws and seeds, summarized with spread and
a paired test (``motorec compare``).

One cold-item draw says little on a small catalog (which items were held out moves every model's cold recall
by a factor of two), so the field compares methods as means over draws. :func:`run_compare` trains each
``(draw, seed)`` in its own process (``python -m motorec.experiments.worker``, which calls
:func:`motorec.experiments.train_models` with ``--split-seed draw --seed seed``) into
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

Equal tuning (``tune=True``, ``motorec compare --tune``; docs/BASELINES.md): every compared model but the
reference (``motorec``, whose defaults were chosen on validation; ``tune_reference`` includes it) gets the same
small grid, ``train.lr`` in :data:`GRID_LR` x ``model.lambda_reg`` in :data:`GRID_REG` (the first point is the
default setting). Stage 1 trains one subprocess per model and grid point on draw 0 / seed 0 into
``OUT/tune/<model>/lr<lr>_reg<reg>/`` (config: the user's ``config`` with the two keys set, beside it as
``lr<lr>_reg<reg>.yaml``) and keeps the point with the highest validation checkpoint-selection score
(``train.select``, :func:`motorec.train.select_score` of the selected checkpoint's ``metrics.json``
``valid`` entry; a tie keeps the earlier point), written to ``OUT/tune/chosen.json`` and
``OUT/tune/<model>.yaml``. Stage 2 trains one subprocess per ``(draw, seed, model)`` into
``OUT/runs/draw<d>_seed<s>/<model>/`` with that config (the untuned reference: the user's config). A model's
chosen setting is reused across config changes its results do not depend on (:func:`_settings_read_by`). A model's
final runs start as soon as its grid points are done; ``jobs`` runs go at a time across both stages, and a
re-run skips finished points and runs, resumes interrupted ones and reuses ``chosen.json`` (refusing a
different grid). The summary then states the grid and each model's choice.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from motorec.eval.stats import wilcoxon_signed_rank
from motorec.experiments.errors import ArgumentError, CompareError

__all__ = ["run_compare", "summarize", "setting_metrics", "SETTING_NAMES", "SCALE_ROWS", "format_summary",
           "GRID_LR", "GRID_REG", "REFERENCE", "COMPARE_MODELS", "parse_grid", "check_grid", "CompareError"]

# what run_compare trains by default: MoToRec, the ID backbone and every cold-start baseline
COMPARE_MODELS = ("motorec", "lightgcn", "lightgcn_content", "content", "knn", "aldi")

SETTING_NAMES = ("cold", "warm", "hybrid")
METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")
SCALE_ROWS = ("random", "popularity_oracle")
# metrics.json keys of the three settings: the protocol's names, or the names used before they existed
_LEGACY = {"cold": "cold_only", "warm": "warm_only", "hybrid": "overall"}
# the equal-tuning grid (train.lr x model.lambda_reg), lr-major; the first point is the default setting
# (TrainConfig.lr, ModelConfig.lambda_reg), so a tie keeps the defaults
GRID_LR = (1e-3, 5e-3)
GRID_REG = (1e-4, 1e-3)
# the model the paired tests are about; its defaults were chosen on validation, so --tune leaves it out
REFERENCE = "motorec"
_GRID_KEYS = {"lr": "train.lr", "lambda_reg": "model.lambda_reg"}


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


# ---------------------------------------------------------------------------------------------- the grid
def check_grid(values: Sequence[float], key: str) -> Tuple[float, ...]:
    """The grid values of ``key`` (``"lr"``: each > 0, ``"lambda_reg"``: each >= 0) as floats; raises
    ValueError for an empty list, a non-number, a value out of range or a repeated value."""
    if key not in _GRID_KEYS:
        raise ValueError(f"grid key must be one of {sorted(_GRID_KEYS)}, got {key!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{_GRID_KEYS[key]} grid values must be finite numbers, got {v!r}")
        if v < 0 or (key == "lr" and v == 0):
            raise ValueError(f"{_GRID_KEYS[key]} grid values must be {'> 0' if key == 'lr' else '>= 0'}, got {v!r}")
        out.append(float(v))
    if not out:
        raise ValueError(f"the {_GRID_KEYS[key]} grid is empty")
    if len(set(out)) != len(out):
        raise ValueError(f"the {_GRID_KEYS[key]} grid repeats a value: {_fmt_values(out)}")
    return tuple(out)


def parse_grid(text: str, key: str) -> Tuple[float, ...]:
    """``"1e-3,5e-3"`` -> ``(0.001, 0.005)``, checked by :func:`check_grid`; ValueError naming the text."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None
    return check_grid(values, key)


def _fmt_values(values: Sequence[float]) -> str:
    return ",".join(repr(float(v)) for v in values)


def _point_name(lr: float, reg: float) -> str:
    return f"lr{lr!r}_reg{reg!r}"


def _grid_dict(lrs: Sequence[float], regs: Sequence[float]) -> Dict[str, List[float]]:
    return {"lr": [float(v) for v in lrs], "lambda_reg": [float(v) for v in regs]}


def _fmt_grid(grid: Dict[str, List[float]]) -> str:
    return f"lr {_fmt_values(grid['lr'])} x lambda_reg {_fmt_values(grid['lambda_reg'])}"


# ---------------------------------------------------------------------------------------------- run directories
def _run_dir(out: Path, draw: int, seed: int) -> Path:
    return out / "runs" / f"draw{draw}_seed{seed}"


def _run_complete(run: Path, models: Sequence[str], splits: Sequence[str] = ("test",)) -> bool:
    path = run / "metrics.json"
    if not path.is_file():
        return False
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return all(name in m and all(s in m[name] for s in splits) for name in models)


def _trained_lr_reg(run: Path) -> Optional[Tuple[float, float]]:
    """``(train.lr, model.lambda_reg)`` of the ``config.yaml`` a run was started with (``None``: not started, or
    a config this version cannot read, which resuming the run then reports)."""
    import yaml

    from motorec.config import Config, ConfigError

    path = run / "config.yaml"
    if not path.is_file():
        return None
    try:
        cfg = Config.from_dict(yaml.safe_load(path.read_text()))
    except (ConfigError, yaml.YAMLError):
        return None
    return float(cfg.train.lr), float(cfg.model.lambda_reg)


def _train_command(run: Path, draw: int, seed: int, models: Sequence[str], *, data: Optional[str],
                   config: Optional[str], epochs: Optional[int], threads: int, backend: Optional[str],
                   device: Optional[str]) -> List[str]:
    cmd = [sys.executable, "-m", "motorec.experiments.worker", "--split-seed", str(draw), "--seed", str(seed),
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


@dataclass(frozen=True)
class _Run:
    """One worker subprocess (:mod:`motorec.experiments.worker`): ``models`` on ``(draw, seed)`` into ``path``
    with ``config``."""

    label: str
    path: Path
    log: Path
    draw: int
    seed: int
    models: Tuple[str, ...]
    config: Optional[str]
    tunes: Optional[str] = None  # a stage-1 grid point: the model it tunes


def _execute(runs: Sequence[_Run], *, jobs: int, total: int, progress: bool, opts: Dict[str, Any],
             then: Callable[[_Run, bool], List[_Run]] = lambda run, ok: []) -> List[str]:
    """Run ``runs`` as subprocesses, ``jobs`` at a time; after each, ``then(run, ok)`` may add runs. Returns one
    line per failed run."""
    bar = None
    if progress and total:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="compare runs", unit="run")

    def launch(r: _Run) -> int:
        r.path.mkdir(parents=True, exist_ok=True)
        cmd = _train_command(r.path, r.draw, r.seed, r.models, config=r.config, **opts)
        with open(r.log, "w") as fh:
            return subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=dict(os.environ)).returncode

    failures: List[str] = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        running = {pool.submit(launch, r): r for r in runs}
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                r = running.pop(fut)
                rc = fut.result()
                if bar is not None:
                    bar.update(1)
                if rc != 0:
                    failures.append(f"{r.label} (exit {rc}; log {r.log})")
                for nxt in then(r, rc == 0):
                    running[pool.submit(launch, nxt)] = nxt
    if bar is not None:
        bar.close()
    return failures


def run_compare(out: str | Path, *, models: Optional[Sequence[str]] = None, draws: int = 5, seeds: int = 1,
                data: Optional[str | Path] = None, config: Optional[str | Path] = None, epochs: Optional[int] = None,
                threads: int = 1, jobs: int = 1, backend: Optional[str] = None, device: Optional[str] = None,
                progress: bool = True, tune: bool = False, grid_lr: Optional[Sequence[float]] = None,
                grid_reg: Optional[Sequence[float]] = None, tune_reference: bool = False) -> Dict[str, Any]:
    """Train ``models`` on ``draws`` cold-item draws x ``seeds`` seeds, one process per run, then
    :func:`summarize`. Finished runs are skipped and interrupted ones resumed, so a call can be repeated after a
    stop.

    Args:
        out: the output directory (``runs/draw<d>_seed<s>/``, ``tune/``, ``summary.json``, ``summary.md``).
        models: model names (default :data:`COMPARE_MODELS`); the paired tests compare :data:`REFERENCE` with
            the strongest other one.
        draws: cold-item draws, split seeds ``0 .. draws - 1``.
        seeds: training seeds per draw, ``0 .. seeds - 1``.
        data: an MMRec folder, a synthetic spec or ``None`` (bundled MovieLens-100k).
        config: a YAML config file for every run (checked before any run starts).
        epochs: joint training epochs of every run (``None``: the config's).
        threads: torch CPU threads per run. jobs: runs at a time.
        backend, device: the kernel backend and device of every run (``None``: the config's).
        progress: show a progress bar over runs.
        tune: equal tuning first (see the module docstring): every model but the reference (and it too with
            ``tune_reference``) picks ``train.lr`` in ``grid_lr`` (default :data:`GRID_LR`) x
            ``model.lambda_reg`` in ``grid_reg`` (default :data:`GRID_REG`) on draw 0 / seed 0; then one run
            per ``(draw, seed, model)``.

    Returns:
        the summary (:func:`summarize`).

    Raises:
        ArgumentError: a bad argument (named). ConfigError, DataError: a bad config file or data.
        CompareError: an output directory this call cannot continue (the other layout, another grid).
        RuntimeError: some runs failed; it names them and their logs (the finished ones stay on disk).
    """
    from motorec.config import MODEL_NAMES, Config
    from motorec.experiments.training import resolve_data

    for name, v in (("draws", draws), ("seeds", seeds), ("threads", threads), ("jobs", jobs)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ArgumentError(f"`{name}` must be >= 1, got {v!r}")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0):
        raise ArgumentError(f"`epochs` must be >= 0, got {epochs!r}")
    models = list(dict.fromkeys(models)) if models is not None else list(COMPARE_MODELS)
    if not models:
        raise ArgumentError("`models` must name at least one model")
    unknown = [m for m in models if m not in MODEL_NAMES]
    if unknown:
        raise ArgumentError(f"`models`: unknown model(s) {unknown}; choose from {list(MODEL_NAMES)}")
    data = resolve_data(data)  # a missing folder or a bad synthetic spec is refused before any run
    if config is not None:
        config = str(Path(config).resolve())
        Config.load(config)  # a bad config is refused here, not once per run
    if not tune:
        extra = [f"`{n}`" for n, v in (("tune_reference", tune_reference), ("grid_lr", grid_lr),
                                        ("grid_reg", grid_reg)) if v]
        if extra:
            raise ArgumentError(f"{', '.join(extra)} only apply with `tune`")
    grid_lr = GRID_LR if grid_lr is None else grid_lr
    grid_reg = GRID_REG if grid_reg is None else grid_reg
    out = Path(out)
    _check_layout(out, tune)
    opts = dict(data=data, epochs=epochs, threads=threads, backend=backend, device=device)
    plan = [(d, s) for d in range(draws) for s in range(seeds)]
    if tune:
        grid = _grid_dict(check_grid(grid_lr, "lr"), check_grid(grid_reg, "lambda_reg"))
        tuned = [m for m in models if m != REFERENCE or tune_reference]
        failures = _run_tuned(out, models, tuned, plan, grid, config, jobs=jobs, progress=progress, opts=opts)
    else:
        (out / "runs").mkdir(parents=True, exist_ok=True)
        todo = []
        for d, s in plan:
            run = _run_dir(out, d, s)
            if not _run_complete(run, models):
                todo.append(_Run(f"draw {d} seed {s}", run, run.parent / f"{run.name}.log", d, s, tuple(models),
                                 config))
        failures = _execute(todo, jobs=jobs, total=len(todo), progress=progress, opts=opts)
    if failures:
        raise RuntimeError("some runs failed: " + "; ".join(failures))
    return summarize(out, models=models, draws=draws, seeds=seeds, data=data)


def _check_layout(out: Path, tune: bool) -> None:
    """Refuse to mix a comparison with ``--tune`` (per-model run directories) and one without in one ``out``."""
    runs = sorted((out / "runs").glob("draw*_seed*"))
    flat = [r for r in runs if (r / "config.yaml").is_file() or (r / "metrics.json").is_file()]
    if tune and flat:
        raise CompareError(f"{str(out)!r} holds runs of a comparison without --tune ({flat[0].name}); use "
                           "another --out for a tuned comparison")
    from motorec.config import MODEL_NAMES

    if not tune and ((out / "tune").is_dir() or any((r / m).is_dir() for r in runs for m in MODEL_NAMES)):
        raise CompareError(f"{str(out)!r} holds a comparison made with --tune; add --tune to continue it, or "
                           "use another --out")


def _run_tuned(out: Path, models: List[str], tuned: List[str], plan: List[Tuple[int, int]],
               grid: Dict[str, List[float]], config: Optional[str], *, jobs: int, progress: bool,
               opts: Dict[str, Any]) -> List[str]:
    """Stage 1 (the grid on draw 0 / seed 0) and stage 2 (every (draw, seed, model)) of ``tune``: a model's
    final runs are queued as soon as its last grid point is done. Returns the failures."""
    from motorec.config import Config

    base = Config.load(config) if config else Config()
    tune_dir = out / "tune"
    tune_dir.mkdir(parents=True, exist_ok=True)
    chosen_path = tune_dir / "chosen.json"
    chosen: Dict[str, Any] = json.loads(chosen_path.read_text()) if chosen_path.is_file() else {}
    for m in tuned:
        if m in chosen:
            _check_chosen(chosen_path, m, chosen[m], grid, base)
    points = [(lr, reg) for lr in grid["lr"] for reg in grid["lambda_reg"]]

    def point_dir(m: str, lr: float, reg: float) -> Path:
        return tune_dir / m / _point_name(lr, reg)

    def final_runs(m: str, cfg: Optional[str], want: Tuple[float, float]) -> Tuple[List[_Run], List[str]]:
        runs, problems = [], []
        for d, s in plan:
            run = _run_dir(out, d, s) / m
            got = _trained_lr_reg(run)
            if got is not None and got != want:
                problems.append(f"{run} was trained with lr {got[0]!r}, lambda_reg {got[1]!r}, not the "
                                f"{m} setting lr {want[0]!r}, lambda_reg {want[1]!r} (delete it to re-run it)")
            elif not _run_complete(run, [m]):
                runs.append(_Run(f"draw {d} seed {s} {m}", run, run.parent / f"{m}.log", d, s, (m,), cfg))
        return runs, problems

    problems: List[str] = []

    def settle(m: str) -> List[_Run]:
        """Model ``m``'s final runs, its config written (from ``chosen.json`` for a tuned model)."""
        if m in tuned:
            entry = chosen[m]
            path = tune_dir / f"{m}.yaml"
            _write_atomic(path, base.replace(train={"lr": entry["lr"]}, model={"lambda_reg": entry["lambda_reg"]})
                          .to_yaml())
            runs, bad = final_runs(m, str(path.resolve()), (entry["lr"], entry["lambda_reg"]))
        else:
            runs, bad = final_runs(m, config, (base.train.lr, base.model.lambda_reg))
        problems.extend(bad)
        return [] if bad else runs

    stage1: List[_Run] = []
    left: Dict[str, int] = {}
    for m in tuned:
        if m in chosen:
            continue
        for lr, reg in points:
            pdir = point_dir(m, lr, reg)
            if _run_complete(pdir, [m], ("valid", "test")):
                continue
            yml = pdir.with_name(pdir.name + ".yaml")
            yml.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(yml, base.replace(train={"lr": lr}, model={"lambda_reg": reg}).to_yaml())
            stage1.append(_Run(f"tune {m} {pdir.name}", pdir, pdir.with_name(pdir.name + ".log"), 0, 0, (m,),
                               str(yml.resolve()), tunes=m))
        left[m] = sum(r.tunes == m for r in stage1)

    def choose(m: str) -> bool:
        unfinished = [point_dir(m, lr, reg) for lr, reg in points
                      if not _run_complete(point_dir(m, lr, reg), [m], ("valid", "test"))]
        if unfinished:
            problems.append(f"tune {m}: grid point {unfinished[0]} has no validation metrics")
            return False
        scores = [_point_score(point_dir(m, lr, reg), m, base.train.select) for lr, reg in points]
        best = max(range(len(points)), key=lambda i: (scores[i], -i))  # a tie keeps the earlier point
        chosen[m] = {"lr": points[best][0], "lambda_reg": points[best][1], "score": scores[best],
                     "select": base.train.select, "grid": grid, "on": {"draw": 0, "seed": 0, "split": "valid"},
                     "points": [{"lr": lr, "lambda_reg": reg, "score": sc} for (lr, reg), sc in zip(points, scores)],
                     "base_config": base.to_dict()}
        _write_atomic(chosen_path, json.dumps(chosen, indent=2))
        return True

    first: List[_Run] = list(stage1)
    for m in models:  # models whose setting is known now: their final runs join the queue behind the grid
        if m not in tuned or m in chosen:
            first += settle(m)
        elif not left[m] and choose(m):  # every grid point finished before: choose now
            first += settle(m)
    pending = len(stage1) + sum(not _run_complete(_run_dir(out, d, s) / m, [m]) for m in models
                                for d, s in plan)
    failed: Dict[str, bool] = {}

    def then(run: _Run, ok: bool) -> List[_Run]:
        m = run.tunes
        if m is None:
            return []
        left[m] -= 1
        failed[m] = failed.get(m, False) or not ok
        if left[m] or failed[m] or not choose(m):
            return []
        return settle(m)

    failures = _execute(first, jobs=jobs, total=pending, progress=progress, opts=opts, then=then)
    return failures + problems


def _point_score(run: Path, model: str, rule: str) -> float:
    """The validation checkpoint-selection score of a finished grid point (``-inf`` where it is not a number)."""
    from motorec.train import select_score

    valid = json.loads((run / "metrics.json").read_text())[model]["valid"]
    score = float(select_score(valid, rule))
    return score if math.isfinite(score) else -math.inf


def _check_chosen(path: Path, model: str, entry: Dict[str, Any], grid: Dict[str, List[float]], base) -> None:
    """Refuse to reuse a ``chosen.json`` entry made with another grid, selection rule or base config."""
    had = entry.get("grid") if isinstance(entry.get("grid"), dict) else {}
    had = {"lr": had.get("lr") or [], "lambda_reg": had.get("lambda_reg") or []}
    if had != grid:
        raise CompareError(f"{path} chose {model}'s setting on the grid {_fmt_grid(had)}, but this run asks for "
                         f"{_fmt_grid(grid)}: pass --grid-lr {_fmt_values(had['lr'])} --grid-reg "
                         f"{_fmt_values(had['lambda_reg'])} to continue it, or use another --out")
    if entry.get("select") != base.train.select:
        raise CompareError(f"{path} chose {model}'s setting by train.select {entry.get('select')!r}, but this run's "
                         f"config selects by {base.train.select!r}; use the same --config or another --out")
    read = _settings_read_by(base.to_dict(), model)

    def is_read(line: str) -> bool:  # a Config.differences line: "section.key: theirs -> ours"
        section, _, key = line.split(":", 1)[0].partition(".")
        return key in read.get(section, {})

    diff = [d for d in base.differences(entry.get("base_config") or {}) if "<missing>" not in d and is_read(d)]
    if diff:
        raise CompareError(f"{path} chose {model}'s setting under another --config ({'; '.join(diff[:3])}); use the "
                         "same --config or another --out")


def _settings_read_by(config: Dict[str, Any], model: str) -> Dict[str, Dict[str, Any]]:
    """The settings of ``config`` (a ``Config.to_dict()``) that ``model``'s results depend on, by section: a
    chosen setting (``chosen.json``) is reused across changes of any other setting. A model reads the shared
    ``model`` section, its own section (named after it), ``wrappers``, ``train`` and ``data``; not another
    model's section (the decoupled wrapper's ID scorer takes the shared keys only)."""
    from motorec.config import MODEL_NAMES

    return {sec: keys for sec, keys in config.items() if sec == model or sec not in MODEL_NAMES}


def _mean_sd(values: Sequence[float]) -> Tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, sd


def _scale_rows(data: Optional[str], split: str, draw: int, seed: int) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Test metrics of the random ranking and the test-popularity oracle on one draw's data."""
    import torch

    from motorec.eval.metrics import evaluate
    from motorec.experiments.training import load_data

    ds = load_data(data, split, draw)
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


def _read_run(out: Path, draw: int, seed: int, models: Sequence[str]) -> Tuple[Dict[str, Any], Optional[str], bool]:
    """``({model: metrics.json entry}, the run's split or None, per_model)`` of one ``(draw, seed)``: from
    ``OUT/runs/draw<d>_seed<s>/metrics.json`` (one run of every model) or, as ``--tune`` writes them, from
    ``OUT/runs/draw<d>_seed<s>/<model>/metrics.json``. Raises FileNotFoundError naming what is missing."""
    run = _run_dir(out, draw, seed)
    per_model = not (run / "metrics.json").is_file()
    entries: Dict[str, Any] = {}
    split = None
    for name in models:
        where = run / name if per_model else run
        if not _run_complete(where, [name]):
            what = f"run draw {draw} seed {seed}" + (f" of {name}" if per_model else "")
            raise FileNotFoundError(f"{what} is missing or unfinished: {where}")
        entries[name] = json.loads((where / "metrics.json").read_text())[name]
        if (where / "run.json").is_file():
            split = json.loads((where / "run.json").read_text()).get("split", split)
    return entries, split, per_model


def _tuning(out: Path, models: Sequence[str]) -> Dict[str, Any]:
    """What ``--tune`` chose (``OUT/tune/chosen.json``) for the summary: the grid, the selection rule and per model
    its lr / lambda_reg (an untuned model: those its draw-0 run was trained with, ``None`` if unknown)."""
    path = out / "tune" / "chosen.json"
    chosen = json.loads(path.read_text()) if path.is_file() else {}
    per: Dict[str, Any] = {}
    grid = select = None
    for name in models:
        if name in chosen:
            e = chosen[name]
            grid, select = e["grid"], e["select"]
            per[name] = {"tuned": True, "lr": e["lr"], "lambda_reg": e["lambda_reg"], "score": e["score"],
                         "points": e["points"]}
        else:
            got = _trained_lr_reg(_run_dir(out, 0, 0) / name)
            per[name] = {"tuned": False, "lr": None if got is None else got[0],
                         "lambda_reg": None if got is None else got[1]}
    return {"grid": grid, "select": select, "on": {"draw": 0, "seed": 0, "split": "valid"}, "models": per}


def summarize(out: str | Path, *, models: Sequence[str], draws: int, seeds: int, data: Optional[str] = None,
              reference: str = REFERENCE, scale_rows: bool = True) -> Dict[str, Any]:
    """Read ``OUT/runs/*/metrics.json`` of every ``(draw, seed)`` (or ``OUT/runs/*/<model>/metrics.json``, the
    per-model runs of ``--tune``) and write ``OUT/summary.json`` and ``OUT/summary.md`` (see the module
    docstring). With per-model runs the summary's ``tuning`` states the grid and each model's chosen setting
    (``None`` otherwise). Returns the summary dict."""
    out = Path(out)
    runs: List[Dict[str, Any]] = []
    split = "cold"
    tuned_layout = False
    for d in range(draws):
        for s in range(seeds):
            entries, run_split, per_model = _read_run(out, d, s, models)
            split = run_split or split
            tuned_layout = tuned_layout or per_model
            row = {"draw": d, "seed": s, "models": {name: entries[name]["test"] for name in models}}
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
               "tuning": _tuning(out, models) if tuned_layout else None,
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
    if summary.get("tuning"):
        lines += [""] + _format_tuning(summary["tuning"], summary.get("reference", REFERENCE))
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


def _format_tuning(tuning: Dict[str, Any], reference: str) -> List[str]:
    """The summary.md lines of :func:`_tuning`: the grid, the rule, and a table of each model's setting."""
    grid = tuning["grid"]
    if grid is None:
        lines = ["Equal tuning (--tune): no compared model was tuned."]
    else:
        lines = [f"Equal tuning (--tune): every tuned model's train.lr in {{{', '.join(map(repr, grid['lr']))}}} x "
                 f"model.lambda_reg in {{{', '.join(map(repr, grid['lambda_reg']))}}}, chosen by the validation "
                 f"checkpoint-selection score (train.select = {tuning['select']}) of one run per point on draw 0, "
                 "seed 0 (a tie keeps the earlier point, the default first); every run above uses its model's "
                 "choice."]
    lines += ["", "| model | lr | lambda_reg | valid score | grid (lr / lambda_reg: score) |", "|---|---|---|---|---|"]

    def num(v: Optional[float]) -> str:
        return "-" if v is None else repr(v)

    for name, t in tuning["models"].items():
        if t["tuned"]:
            pts = ", ".join(f"{p['lr']!r} / {p['lambda_reg']!r}: {p['score']:.4f}" for p in t["points"])
            lines.append(f"| {name} | {num(t['lr'])} | {num(t['lambda_reg'])} | {t['score']:.4f} | {pts} |")
        else:
            why = "not tuned: its defaults were chosen on validation" if name == reference else "not tuned"
            lines.append(f"| {name} | {num(t['lr'])} | {num(t['lambda_reg'])} | - | {why} |")
    return lines


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
