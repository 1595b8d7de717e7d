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

Rows (issue 35): with ``variants`` every model runs ``plain`` (row ``<model>``: ``wrappers`` =
:data:`PLAIN_WRAPPERS`, the config beside the runs in ``OUT/configs/<model>.yaml``) and ``wrapped`` (row
``<model>+wrapped``: the config's ``wrappers``), each tuned by the same grid as its own row; ``ablations`` adds
MoToRec rows with one paper switch changed (:data:`ABLATIONS`); with ``tune_reference`` they run at the setting
chosen for ``motorec+wrapped``, the row they ablate, after it is chosen. Rows run one subprocess per ``(draw, seed,
row)`` into ``OUT/runs/draw<d>_seed<s>/<row>/``. With ``own_grids`` (default) a tuned row then tunes each key of
its model's :data:`motorec.experiments.grids.TUNING_GRID` one at a time, in the grid's order, at the setting
chosen so far (a tie keeps the config's value; the point at the config's value is the one already run).
``draws_from`` moves the compared draws (e.g. 5-14) while tuning stays on draw 0. Statistics are at the draw
level (:func:`motorec.eval.stats.draw_means`: a draw's seeds share its test items): per setting, every row
against the strongest baseline row (a row of another model than MoToRec, by mean Recall@20): mean ± sd over
draws, the ratio of means with a percentile bootstrap 95% interval over draws
(:func:`motorec.eval.stats.bootstrap_ratio_ci`), the paired Wilcoxon p and the draws won. Each row's cost (mean
seconds per epoch and training seconds) sits beside its quality; the summary records the draws, the commit
(``git rev-parse HEAD``, and whether tracked files had changes) and the command.

Report (issue 35): ``draws_for`` runs some rows on fewer draws (their first N; e.g. 10 draws for MoToRec and the
strongest rows, 5 for the others and the ablations, in one ``out``), each row compared with another on the draws
both have (n stated); the summary adds each row's token statistics (codebook perplexity and unused codes of the
selected model, per-epoch code churn, :func:`~motorec.experiments.summary.token_stats`); an ``out`` holds one
catalog (MovieLens-100k, a folder, or ``synthetic:noise=2,seed=1``), and :func:`collect` tabulates several
``out`` side by side. The summary's reading and writing live in :mod:`motorec.experiments.summary`.
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

from motorec.experiments.errors import ArgumentError, CompareError
from motorec.experiments.summary import (
    ABLATION_KEY,
    METRICS,
    REFERENCE,
    SCALE_ROWS,
    SETTING_NAMES,
    TOKEN_STATS,
    _run_complete,
    _run_dir,
    _trained_lr_reg,
    _write_atomic,
    check_out_data,
    collect,
    format_collected,
    format_summary,
    row_draw_counts,
    setting_metrics,
    summarize,
    token_stats,
)

__all__ = ["run_compare", "summarize", "setting_metrics", "SETTING_NAMES", "SCALE_ROWS", "format_summary",
           "GRID_LR", "GRID_REG", "REFERENCE", "COMPARE_MODELS", "parse_grid", "check_grid", "CompareError",
           "VARIANTS", "PLAIN_WRAPPERS", "ABLATIONS", "check_variants", "compare_command", "METRICS", "TOKEN_STATS",
           "ABLATION_KEY", "token_stats", "row_draw_counts", "collect", "format_collected"]

# what run_compare trains by default: MoToRec, the ID backbone and every cold-start baseline
COMPARE_MODELS = ("motorec", "lightgcn", "lightgcn_content", "content", "knn", "aldi")

# the equal-tuning grid (train.lr x model.lambda_reg), lr-major; the first point is the default setting
# (TrainConfig.lr, ModelConfig.lambda_reg), so a tie keeps the defaults
GRID_LR = (1e-3, 5e-3)
GRID_REG = (1e-4, 1e-3)
_GRID_KEYS = {"lr": "train.lr", "lambda_reg": "model.lambda_reg"}


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


# ---------------------------------------------------------------------------------------------- entries
# `plain`: the model without the generic machinery; `wrapped`: the config's `wrappers:` section (on by default)
VARIANTS = ("plain", "wrapped")
PLAIN_WRAPPERS = {"ensemble": 1, "decoupled": False}
# MoToRec's ablations, each run under the config's wrappers: {row suffix: {section: {key: value}}}, the paper's
# four switches and the tokenizer removed entirely
# (the features go through the encoder MLP, trained by the ranking terms alone: no quantization, no
# reconstruction, no pre-training)
ABLATIONS: Dict[str, Dict[str, Dict[str, Any]]] = {
    "no_sparse": {"motorec": {"sparse_weight": 0.0}}, "no_rarity": {"motorec": {"rarity": False}},
    "no_item_item": {"motorec": {"item_item": False}}, "continuous": {"motorec": {"continuous": True}},
    "no_tokenizer": {"motorec": {"continuous": True, "lambda_rq": 0.0}, "train": {"pretrain_epochs": 0}}}


@dataclass(frozen=True)
class _Entry:
    """One row of the comparison: ``model`` trained under the user's config with ``overrides`` (``{section:
    {key: value}}``), its runs in ``runs/draw<d>_seed<s>/<name>/`` (``metrics.json`` keyed by ``model``)."""

    name: str
    model: str
    variant: str  # "config" (the config as given), "plain", "wrapped" or "ablation"
    overrides: Tuple[Tuple[str, Tuple[Tuple[str, Any], ...]], ...] = ()

    def override_dict(self) -> Dict[str, Dict[str, Any]]:
        return {sec: dict(kv) for sec, kv in self.overrides}


def _entries(models: Sequence[str], variants: Optional[Sequence[str]], ablations: bool) -> List[_Entry]:
    """The rows: each model under the config as given (``variants=None``), or once per variant (``<model>``
    plain, ``<model>+wrapped``), then MoToRec's ablations (``motorec-<name>``)."""
    out: List[_Entry] = []
    for m in models:
        if variants is None:
            out.append(_Entry(m, m, "config"))
            continue
        for v in variants:
            if v == "plain":
                out.append(_Entry(m, m, v, (("wrappers", tuple(PLAIN_WRAPPERS.items())),)))
            else:
                out.append(_Entry(f"{m}+wrapped", m, v))
    if ablations:
        for a, ov in ABLATIONS.items():
            out.append(_Entry(f"motorec-{a}", "motorec", "ablation",
                              tuple((sec, tuple(kv.items())) for sec, kv in ov.items())))
    return out


def check_variants(variants: Sequence[str]) -> Tuple[str, ...]:
    """``variants`` as a tuple of :data:`VARIANTS` names; ValueError for an empty list, an unknown or a repeated
    name."""
    out = tuple(v.strip() for v in variants if v.strip())
    if not out:
        raise ValueError(f"name at least one variant of {VARIANTS}")
    bad = [v for v in out if v not in VARIANTS]
    if bad:
        raise ValueError(f"unknown variant(s) {bad}; choose from {list(VARIANTS)}")
    if len(set(out)) != len(out):
        raise ValueError(f"a variant is repeated: {','.join(out)}")
    return out


def _provenance(command: Optional[str]) -> Dict[str, Any]:
    """The code a comparison ran on (``git rev-parse HEAD`` of the checkout holding this package, and whether
    its tracked files had changes; ``None`` outside a git checkout) and the command that ran it."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> Optional[str]:  # Popen, not run: the tests stand in for run() as the training worker
        try:
            with subprocess.Popen(["git", *args], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  text=True) as p:
                text, _ = p.communicate(timeout=20)
                return text if p.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            return None

    head = git("rev-parse", "HEAD")
    commit = head.strip() if head else None
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    dirty = None if status is None else bool(status.strip())
    return {"commit": commit, "dirty": dirty, "command": command}


def compare_command(out: str | Path, **kw: Any) -> str:
    """The ``motorec compare`` command line equivalent to ``run_compare(out, **kw)`` (the summary records it)."""
    import shlex

    parts = ["motorec", "compare", "--out", str(out)]
    for m in kw.get("models") or []:
        parts += ["--model", m]
    for key in ("draws", "draws_from", "seeds", "data", "config", "epochs", "threads", "jobs", "backend", "device"):
        if kw.get(key) is not None:
            parts += ["--" + key.replace("_", "-"), str(kw[key])]
    if kw.get("variants") is not None:
        parts += ["--variants", ",".join(kw["variants"])]
    if kw.get("draws_for"):
        d = kw["draws_for"]
        parts += ["--draws-for", d if isinstance(d, str) else ",".join(f"{k}={v}" for k, v in d.items())]
    for flag in ("ablations", "tune", "tune_reference"):
        if kw.get(flag):
            parts.append("--" + flag.replace("_", "-"))
    if kw.get("tune") and not kw.get("own_grids", True):
        parts.append("--no-own-grids")
    for key in ("grid_lr", "grid_reg"):
        if kw.get(key):
            parts += ["--" + key.replace("_", "-"), _fmt_values(kw[key])]
    return shlex.join(parts)


def run_compare(out: str | Path, *, models: Optional[Sequence[str]] = None, draws: int = 5, seeds: int = 1,
                data: Optional[str | Path] = None, config: Optional[str | Path] = None, epochs: Optional[int] = None,
                threads: int = 1, jobs: int = 1, backend: Optional[str] = None, device: Optional[str] = None,
                progress: bool = True, tune: bool = False, grid_lr: Optional[Sequence[float]] = None,
                grid_reg: Optional[Sequence[float]] = None, tune_reference: bool = False, draws_from: int = 0,
                variants: Optional[Sequence[str]] = None, ablations: bool = False, own_grids: bool = True,
                draws_for: Optional[str | Dict[str, int]] = None, command: Optional[str] = None) -> Dict[str, Any]:
    """Train ``models`` on ``draws`` cold-item draws x ``seeds`` seeds, one process per run, then
    :func:`summarize`. Finished runs are skipped and interrupted ones resumed, so a call can be repeated after a
    stop.

    Args:
        out: the output directory (``runs/draw<d>_seed<s>/``, ``tune/``, ``configs/``, ``summary.json``,
            ``summary.md``).
        models: model names (default :data:`COMPARE_MODELS`); the paired tests compare :data:`REFERENCE` with
            the strongest baseline.
        draws: cold-item draws, split seeds ``draws_from .. draws_from + draws - 1``.
        draws_from: the first draw (default 0). Tuning always uses draw 0 (development), so a report on
            ``draws_from >= 1`` is on draws no choice was made on.
        draws_for: fewer draws for some rows, ``{key: n}`` or ``"key=n,key=n"``: the row runs the first ``n``
            of the draws (``1 <= n <= draws``); a key is a row name, a model name (all its rows) or
            ``"ablations"`` (all ablation rows), the most specific winning
            (:func:`motorec.experiments.summary.row_draw_counts`). Raising ``n`` later on the same ``out`` adds
            the missing runs. The paired statistics use the draws both rows have and state their number.
        seeds: training seeds per draw, ``0 .. seeds - 1``.
        data: an MMRec folder, a synthetic spec or ``None`` (bundled MovieLens-100k).
        config: a YAML config file for every run (checked before any run starts).
        epochs: joint training epochs of every run (``None``: the config's).
        threads: torch CPU threads per run. jobs: runs at a time.
        backend, device: the kernel backend and device of every run (``None``: the config's).
        progress: show a progress bar over runs.
        tune: equal tuning first (see the module docstring): every entry but the reference's (and those too with
            ``tune_reference``) picks ``train.lr`` in ``grid_lr`` (default :data:`GRID_LR`) x
            ``model.lambda_reg`` in ``grid_reg`` (default :data:`GRID_REG`) on draw 0 / seed 0, then with
            ``own_grids`` each key of its model's :data:`~motorec.experiments.grids.TUNING_GRID` one at a time;
            then one run per ``(draw, seed, entry)``.
        variants: ``None``: each model under the config as given (row ``<model>``); else names of
            :data:`VARIANTS`: ``plain`` (row ``<model>``, ``wrappers`` = :data:`PLAIN_WRAPPERS`) and/or
            ``wrapped`` (row ``<model>+wrapped``, the config's ``wrappers``), each tuned by the same grid.
        ablations: add the rows ``motorec-<name>`` of :data:`ABLATIONS` (MoToRec under the config's wrappers
            with one switch changed; untuned, like the reference).
        data: also a synthetic spec (``synthetic:noise=2,seed=1``): every run, tuning points included, trains on
            that catalog (the draw is the split seed, the spec's ``seed`` the catalog's). An ``out`` holds one
            catalog: runs on another are refused (CompareError); :func:`collect` tabulates several.
        command: the command line to record (default: :func:`compare_command` of these arguments).

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
    if isinstance(draws_from, bool) or not isinstance(draws_from, int) or draws_from < 0:
        raise ArgumentError(f"`draws_from` must be >= 0, got {draws_from!r}")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0):
        raise ArgumentError(f"`epochs` must be >= 0, got {epochs!r}")
    models = list(dict.fromkeys(models)) if models is not None else list(COMPARE_MODELS)
    if not models:
        raise ArgumentError("`models` must name at least one model")
    unknown = [m for m in models if m not in MODEL_NAMES]
    if unknown:
        raise ArgumentError(f"`models`: unknown model(s) {unknown}; choose from {list(MODEL_NAMES)}")
    if variants is not None:
        try:
            variants = check_variants(variants)
        except ValueError as e:
            raise ArgumentError(f"`variants`: {e}") from None
    data = resolve_data(data)  # a missing folder or a bad synthetic spec is refused before any run
    if config is not None:
        config = str(Path(config).resolve())
        Config.load(config)  # a bad config is refused here, not once per run
    if not tune:
        extra = [f"`{n}`" for n, v in (("tune_reference", tune_reference), ("grid_lr", grid_lr),
                                        ("grid_reg", grid_reg)) if v]
        if extra:
            raise ArgumentError(f"{', '.join(extra)} only apply with `tune`")
    if ablations and tune_reference and variants is not None and "wrapped" not in variants:
        raise ArgumentError("`ablations` with `tune_reference` take the tuned setting of motorec+wrapped, the row they "
                            "ablate: add the wrapped variant")
    if command is None:
        command = compare_command(out, models=models, draws=draws, draws_from=draws_from or None, seeds=seeds,
                                  data=data, config=config, epochs=epochs, threads=threads, jobs=jobs,
                                  backend=backend, device=device, variants=variants, ablations=ablations, tune=tune,
                                  tune_reference=tune_reference, own_grids=own_grids, grid_lr=grid_lr,
                                  grid_reg=grid_reg, draws_for=draws_for)
    grid_lr = GRID_LR if grid_lr is None else grid_lr
    grid_reg = GRID_REG if grid_reg is None else grid_reg
    out = Path(out)
    entries = _entries(models, variants, ablations)
    counts = row_draw_counts({e.name: _entry_info(e) for e in entries}, draws, draws_for)
    per_entry = tune or variants is not None or ablations
    _check_layout(out, per_entry, tune)
    check_out_data(out, data)
    opts = dict(data=data, epochs=epochs, threads=threads, backend=backend, device=device)
    draw_ids = list(range(draws_from, draws_from + draws))
    # each row's (draw, seed) runs: its first counts[row] draws
    plans = {e.name: [(d, s) for d in draw_ids[:counts[e.name]] for s in range(seeds)] for e in entries}
    if per_entry:
        grid = _grid_dict(check_grid(grid_lr, "lr"), check_grid(grid_reg, "lambda_reg"))
        tuned = [e for e in entries if tune and e.variant != "ablation" and (e.model != REFERENCE or tune_reference)]
        failures = _run_entries(out, entries, tuned, plans, grid, config, tune=tune, own_grids=own_grids,
                                jobs=jobs, progress=progress, opts=opts)
    else:
        (out / "runs").mkdir(parents=True, exist_ok=True)
        todo = []
        for d in draw_ids:
            for s in range(seeds):
                run = _run_dir(out, d, s)
                want = tuple(m for m in models if (d, s) in plans[m])
                if not _run_complete(run, want):
                    todo.append(_Run(f"draw {d} seed {s}", run, run.parent / f"{run.name}.log", d, s, want, config))
        failures = _execute(todo, jobs=jobs, total=len(todo), progress=progress, opts=opts)
    if failures:
        raise RuntimeError("some runs failed: " + "; ".join(failures))
    reference = _reference(entries)
    return summarize(out, models=[e.name for e in entries], draws=draws, seeds=seeds, data=data, draws_from=draws_from,
                     entries={e.name: _entry_info(e) for e in entries}, reference=reference,
                     provenance=_provenance(command), draws_for=draws_for)


def _reference(entries: Sequence[_Entry]) -> str:
    """The row the paired tests are about: MoToRec as shipped (``motorec+wrapped`` where the variants split)."""
    names = [e.name for e in entries]
    return f"{REFERENCE}+wrapped" if f"{REFERENCE}+wrapped" in names else REFERENCE


def _entry_info(e: _Entry) -> Dict[str, Any]:
    return {"model": e.model, "variant": e.variant, "overrides": e.override_dict()}


def _check_layout(out: Path, per_entry: bool, tune: bool) -> None:
    """Refuse to mix, in one ``out``, a comparison with one run directory per row (``--tune``, ``--variants``,
    ``--ablations``) and one without, or a tuned comparison and an untuned one."""
    runs = sorted(r for r in (out / "runs").glob("draw*_seed*") if r.is_dir())
    flat = [r for r in runs if (r / "config.yaml").is_file() or (r / "metrics.json").is_file()]
    per_row = [p for r in runs for p in r.iterdir() if p.is_dir()]
    tuned_before = (out / "tune").is_dir()
    if per_entry and flat:
        raise CompareError(f"{str(out)!r} holds runs of a comparison without --tune ({flat[0].name}: one process "
                           "for every model); use another --out for a tuned comparison or one with variants")
    if tune and per_row and not tuned_before:
        raise CompareError(f"{str(out)!r} holds runs of a comparison without --tune ({per_row[0]}); use another "
                           "--out for a tuned comparison")
    if not tune and tuned_before:
        raise CompareError(f"{str(out)!r} holds a comparison made with --tune; add --tune to continue it, or use "
                           "another --out")
    if not per_entry and per_row:
        raise CompareError(f"{str(out)!r} holds a comparison made with --variants (a run directory per row); pass "
                           "the same flags to continue it, or use another --out")


def _own_grid(model: str, own_grids: bool) -> Dict[str, List[Any]]:
    from motorec.experiments.grids import TUNING_GRID

    return {k: list(v) for k, v in TUNING_GRID.get(model, {}).items()} if own_grids else {}


def _run_entries(out: Path, entries: List[_Entry], tuned: List[_Entry], plans: Dict[str, List[Tuple[int, int]]],
                 grid: Dict[str, Any], config: Optional[str], *, tune: bool, own_grids: bool, jobs: int, progress: bool,
                 opts: Dict[str, Any]) -> List[str]:
    """One run directory per entry: for a tuned entry, stage 1 (lr x reg on draw 0 / seed 0), then each own key
    of its model's grid one at a time at the setting chosen so far, then its final runs (``plans[entry]``: its
    (draw, seed) pairs); an untuned entry's final runs start at once. Returns the failures."""
    from motorec.config import Config

    base0 = Config.load(config) if config else Config()
    bases = {e.name: base0.replace(**e.override_dict()) if e.overrides else base0 for e in entries}
    tune_dir = out / "tune"
    chosen_path = tune_dir / "chosen.json"
    chosen: Dict[str, Any] = json.loads(chosen_path.read_text()) if chosen_path.is_file() else {}
    grids = {e.name: {**grid, **({"own": _own_grid(e.model, own_grids)} if _own_grid(e.model, own_grids) else {})}
             for e in tuned}
    if tune:
        tune_dir.mkdir(parents=True, exist_ok=True)
    for e in tuned:
        if e.name in chosen:
            _check_chosen(chosen_path, e.name, e.model, chosen[e.name], grids[e.name], bases[e.name])
    (out / "runs").mkdir(parents=True, exist_ok=True)
    problems: List[str] = []
    launched: set = set()

    def setting_config(e: _Entry, setting: Dict[str, Any]):
        own = {k: v for k, v in setting.items() if k not in _GRID_KEYS}
        kw: Dict[str, Dict[str, Any]] = {"train": {"lr": setting["lr"]}, "model": {"lambda_reg": setting["lambda_reg"]}}
        if own:
            kw[e.model] = own
        return bases[e.name].replace(**kw)

    def point_dir(e: _Entry, setting: Dict[str, Any]) -> Path:
        name = _point_name(setting["lr"], setting["lambda_reg"])
        section = bases[e.name].to_dict().get(e.model, {})
        name += "".join(f"_{k}{v!r}" for k, v in setting.items() if k not in _GRID_KEYS and section.get(k) != v)
        return tune_dir / e.name / name

    def final_runs(e: _Entry, cfg: Optional[str], want: Tuple[float, float]) -> List[_Run]:
        runs, bad = [], []
        for d, s in plans[e.name]:
            run = _run_dir(out, d, s) / e.name
            got = _trained_lr_reg(run)
            if got is not None and got != want:
                bad.append(f"{run} was trained with lr {got[0]!r}, lambda_reg {got[1]!r}, not the "
                           f"{e.name} setting lr {want[0]!r}, lambda_reg {want[1]!r} (delete it to re-run it)")
            elif not _run_complete(run, [e.model]):
                runs.append(_Run(f"draw {d} seed {s} {e.name}", run, run.parent / f"{e.name}.log", d, s, (e.model,),
                                 cfg))
        problems.extend(bad)
        return [] if bad else runs

    def chosen_setting(name: str) -> Dict[str, Any]:
        c = chosen[name]
        return {"lr": c["lr"], "lambda_reg": c["lambda_reg"], **c.get("own", {})}

    # an ablation row is MoToRec as shipped with one part changed: with that row tuned, the ablations take its
    # chosen setting (and wait for it), so that a difference is the part's alone
    ref_name = _reference(entries)
    ref = next((e for e in tuned if e.name == ref_name), None)
    ablations = [e for e in entries if e.variant == "ablation"] if ref is not None else []

    def settle(e: _Entry) -> List[_Run]:
        """Entry ``e``'s final runs, its config written (from ``chosen.json`` for a tuned entry)."""
        if e in tuned:
            cfg = setting_config(e, chosen_setting(e.name))
            path = tune_dir / f"{e.name}.yaml"
        elif e in ablations:
            cfg = setting_config(ref, chosen_setting(ref.name)).replace(**e.override_dict())
            path = out / "configs" / f"{e.name}.yaml"
        elif e.overrides:
            cfg, path = bases[e.name], out / "configs" / f"{e.name}.yaml"
        else:
            return final_runs(e, config, (base0.train.lr, base0.model.lambda_reg))
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, cfg.to_yaml())
        return final_runs(e, str(path.resolve()), (float(cfg.train.lr), float(cfg.model.lambda_reg)))

    def advance(e: _Entry) -> List[_Run]:
        """Walk ``e``'s tuning stages as far as finished points allow: the unfinished points of the first open
        stage, or (every stage done) the choice written and the final runs."""
        select = bases[e.name].train.select
        stages: List[Tuple[Optional[str], List[Any]]] = [(None, [])] + list(grids[e.name].get("own", {}).items())
        setting: Dict[str, Any] = {}
        record: Dict[str, Any] = {"own": {}, "own_points": {}}
        for key, values in stages:
            if key is None:
                cands = [{"lr": lr, "lambda_reg": reg} for lr in grid["lr"] for reg in grid["lambda_reg"]]
            else:
                cands = [{**setting, key: v} for v in values]
            dirs = [point_dir(e, c) for c in cands]
            todo = [i for i, p in enumerate(dirs) if not _run_complete(p, [e.model], ("valid", "test"))]
            if todo:
                again = [dirs[i] for i in todo if dirs[i] in launched]
                if again:
                    problems.append(f"tune {e.name}: grid point {again[0]} has no validation metrics")
                    return []
                runs = []
                for i in todo:
                    yml = dirs[i].with_name(dirs[i].name + ".yaml")
                    yml.parent.mkdir(parents=True, exist_ok=True)
                    _write_atomic(yml, setting_config(e, cands[i]).to_yaml())
                    launched.add(dirs[i])
                    runs.append(_Run(f"tune {e.name} {dirs[i].name}", dirs[i], dirs[i].with_name(dirs[i].name + ".log"),
                                     0, 0, (e.model,), str(yml.resolve()), tunes=e.name))
                return runs
            scores = [_point_score(p, e.model, select) for p in dirs]
            current = bases[e.name].to_dict().get(e.model, {}).get(key) if key else None
            # a tie keeps the current value of an own key, else the earlier point (the default first)
            best = max(range(len(cands)), key=lambda i: (scores[i], key is not None and cands[i][key] == current, -i))
            setting = cands[best]
            if key is None:
                record["points"] = [{"lr": c["lr"], "lambda_reg": c["lambda_reg"], "score": sc}
                                    for c, sc in zip(cands, scores)]
            else:
                record["own"][key] = setting[key]
                record["own_points"][key] = [{"value": c[key], "score": sc} for c, sc in zip(cands, scores)]
            record["score"] = scores[best]
        chosen[e.name] = {"lr": setting["lr"], "lambda_reg": setting["lambda_reg"], "score": record["score"],
                          "select": select, "grid": grids[e.name], "on": {"draw": 0, "seed": 0, "split": "valid"},
                          "points": record["points"], "own": record["own"], "own_points": record["own_points"],
                          "base_config": bases[e.name].to_dict()}
        _write_atomic(chosen_path, json.dumps(chosen, indent=2))
        return settle(e) + ([r for a in ablations for r in settle(a)] if e is ref else [])

    first: List[_Run] = []
    inflight: Dict[str, int] = {}
    for e in entries:
        if e in ablations and ref.name not in chosen:
            continue  # its runs start with the reference's final runs
        runs = settle(e) if e not in tuned or e.name in chosen else advance(e)
        inflight[e.name] = sum(r.tunes is not None for r in runs)
        first += runs
    by_name = {e.name: e for e in entries}
    # the final runs of entries still tuning are not known yet: count them now for the progress bar
    pending = len(first) + sum(len(plans[e.name]) for e in tuned if inflight[e.name])
    pending += sum(len(plans[a.name]) for a in ablations if ref.name not in chosen)
    failed: Dict[str, bool] = {}

    def then(run: _Run, ok: bool) -> List[_Run]:
        name = run.tunes
        if name is None:
            return []
        inflight[name] -= 1
        failed[name] = failed.get(name, False) or not ok
        if inflight[name] or failed[name]:
            return []
        nxt = advance(by_name[name])
        inflight[name] = sum(r.tunes is not None for r in nxt)
        return nxt

    failures = _execute(first, jobs=jobs, total=pending, progress=progress, opts=opts, then=then)
    return failures + problems


def _point_score(run: Path, model: str, rule: str) -> float:
    """The validation checkpoint-selection score of a finished grid point (``-inf`` where it is not a number)."""
    from motorec.train import select_score

    valid = json.loads((run / "metrics.json").read_text())[model]["valid"]
    score = float(select_score(valid, rule))
    return score if math.isfinite(score) else -math.inf


def _check_chosen(path: Path, name: str, model: str, entry: Dict[str, Any], grid: Dict[str, Any], base) -> None:
    """Refuse to reuse a ``chosen.json`` entry (row ``name`` of ``model``) made with another grid (own keys
    included), selection rule or base config."""
    had = entry.get("grid") if isinstance(entry.get("grid"), dict) else {}
    had = {"lr": had.get("lr") or [], "lambda_reg": had.get("lambda_reg") or [],
           **({"own": had["own"]} if had.get("own") else {})}
    if had != grid:
        if had.get("own") != grid.get("own"):
            raise CompareError(f"{path} chose {name}'s setting on the own grid {had.get('own') or {}}, but this run "
                               f"asks for {grid.get('own') or {}}; use another --out")
        raise CompareError(f"{path} chose {name}'s setting on the grid {_fmt_grid(had)}, but this run asks for "
                           f"{_fmt_grid(grid)}: pass --grid-lr {_fmt_values(had['lr'])} --grid-reg "
                           f"{_fmt_values(had['lambda_reg'])} to continue it, or use another --out")
    if entry.get("select") != base.train.select:
        raise CompareError(f"{path} chose {name}'s setting by train.select {entry.get('select')!r}, but this run's "
                         f"config selects by {base.train.select!r}; use the same --config or another --out")
    read = _settings_read_by(base.to_dict(), model)

    def is_read(line: str) -> bool:  # a Config.differences line: "section.key: theirs -> ours"
        section, _, key = line.split(":", 1)[0].partition(".")
        return key in read.get(section, {})

    diff = [d for d in base.differences(entry.get("base_config") or {}) if "<missing>" not in d and is_read(d)]
    if diff:
        raise CompareError(f"{path} chose {name}'s setting under another --config ({'; '.join(diff[:3])}); use the "
                         "same --config or another --out")


def _settings_read_by(config: Dict[str, Any], model: str) -> Dict[str, Dict[str, Any]]:
    """The settings of ``config`` (a ``Config.to_dict()``) that ``model``'s results depend on, by section: a
    chosen setting (``chosen.json``) is reused across changes of any other setting. A model reads the shared
    ``model`` section, its own section (named after it), ``wrappers``, ``train`` and ``data``; not another
    model's section (the decoupled wrapper's ID scorer takes the shared keys only)."""
    from motorec.config import MODEL_NAMES

    return {sec: keys for sec, keys in config.items() if sec == model or sec not in MODEL_NAMES}
