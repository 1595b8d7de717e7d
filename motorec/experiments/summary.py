"""The summary of a ``motorec compare`` output directory (:func:`summarize`, :func:`format_summary`), the
token statistics of MoToRec's runs (:func:`token_stats`), and one table over several output directories, e.g.
one per catalog (:func:`collect`, ``motorec compare --collect``).

``OUT/summary.json`` (:func:`summarize`) holds ``models`` (the rows), ``entries`` (each row's model, variant and
config overrides), ``draw_ids`` (the compared draws) and ``row_draws`` (``{row: its draw ids}``: the first N of
``draw_ids``, fewer than all for a row given fewer by ``draws_for``), ``seeds``, ``data``, ``reference``, and

* ``table[row][setting][metric]``: ``{"mean", "sd", "runs"}`` over the row's runs, and
  ``table[row][setting]["per_draw"][metric]``: one value per draw of ``row_draws[row]`` (seeds averaged);
  ``table[row]["cost"]``: ``{"seconds_per_epoch", "train_seconds"}``; ``table[row]["tokens"]``: ``None`` or
  ``{"perplexity", "unused_codes", "churn", "churn_level0"}``, each the mean over draws of :func:`token_stats`
  (``None`` unless every run of the row reports it);
* ``draw_stats[setting]``: the strongest baseline row (``against``) and per row, on the draws it shares with
  that row, mean ± sd over the row's own draws, the ratio of means with a bootstrap interval, the paired
  Wilcoxon p, the draws won and ``n`` (the draws paired);
* ``tests[setting]``: the reference row against that baseline, ``draws`` = the draws paired;
* ``tuning``, ``provenance`` (commit and command), ``runs`` (the ``(draw, seed)`` pairs read).
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from motorec.eval.stats import bootstrap_ratio_ci, draw_means, wilcoxon_signed_rank
from motorec.experiments.errors import ArgumentError, CompareError

__all__ = ["summarize", "format_summary", "setting_metrics", "token_stats", "collect", "format_collected",
           "row_draw_counts", "same_data", "data_label", "SETTING_NAMES", "METRICS", "SCALE_ROWS", "REFERENCE",
           "TOKEN_STATS", "ABLATION_KEY"]

SETTING_NAMES = ("cold", "warm", "hybrid")
METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")
SCALE_ROWS = ("random", "popularity_oracle")
# metrics.json keys of the three settings: the protocol's names, or the names used before they existed
_LEGACY = {"cold": "cold_only", "warm": "warm_only", "hybrid": "overall"}
# the model the paired tests are about; its defaults were chosen on validation, so --tune leaves it out
REFERENCE = "motorec"
TOKEN_STATS = ("perplexity", "unused_codes", "churn", "churn_level0")
# the draws_for key that names every ablation row at once
ABLATION_KEY = "ablations"
# a trainer epoch line of train.log: "<time> <model> epoch <n> key=value ..."
_EPOCH_LINE = re.compile(r"^\S+ (\S+) epoch (\d+) (.*)$")


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


# ---------------------------------------------------------------------------------------------- data and draws
def data_label(data: Optional[str]) -> str:
    """How a summary names its catalog: the synthetic spec as given, an MMRec folder's name, or the bundled
    MovieLens-100k for ``None``."""
    if data is None:
        return "MovieLens-100k (bundled)"
    return str(data) if str(data).startswith("synthetic") else Path(str(data)).name


def same_data(a: Optional[str], b: Optional[str]) -> bool:
    """Whether two runs' ``data`` (``run.json``) name the same catalog: equal, or two synthetic specs with the
    same values (``synthetic:seed=1,noise=2`` is ``synthetic:noise=2,seed=1``)."""
    if a == b:
        return True
    if a is None or b is None:
        return False
    from motorec.data import DataError, parse_synthetic_spec

    try:
        pa, pb = parse_synthetic_spec(str(a)), parse_synthetic_spec(str(b))
    except DataError:
        return False
    return pa is not None and pa == pb


def row_draw_counts(rows: Dict[str, Dict[str, Any]], draws: int,
                    draws_for: Optional[str | Dict[str, int]]) -> Dict[str, int]:
    """How many draws each row runs: ``draws``, or fewer where ``draws_for`` says (``{key: n}`` or the text
    ``"key=n,key=n"``). A key is a row name (``knn+wrapped``, ``motorec-no_rarity``), a model name (every row of
    that model, ablation rows included) or :data:`ABLATION_KEY` (every ablation row); a row named by several
    keys takes the most specific: its own name (where that is not a model's name), then ``ablations``, then its
    model. ``rows`` maps each row name to ``{"model", "variant", ...}`` (:func:`summarize`'s ``entries``).

    Raises:
        ArgumentError: (``draws_for``) a malformed or repeated key, a key naming no row, ``n < 1``, or a row
            given more draws than ``draws`` (named).
    """
    counts = {name: draws for name in rows}
    if not draws_for:
        return counts
    pairs: List[Tuple[str, Any]]
    if isinstance(draws_for, str):
        pairs = []
        for part in filter(None, (p.strip() for p in draws_for.split(","))):
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise ArgumentError(f"`draws_for` expects ROW=N[,ROW=N...], got {part!r}")
            try:
                pairs.append((key.strip(), int(value)))
            except ValueError:
                raise ArgumentError(f"`draws_for`: {key.strip()}'s number of draws must be an integer, got "
                                    f"{value!r}") from None
    else:
        pairs = list(dict(draws_for).items())
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ArgumentError(f"`draws_for` repeats a key: {','.join(keys)}")
    models = {e["model"] for e in rows.values()}
    ablation_rows = [n for n, e in rows.items() if e.get("variant") == "ablation"]
    rank: Dict[str, int] = {}  # row -> specificity of the key that set it (2 row, 1 ablations, 0 model)
    for key, n in pairs:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ArgumentError(f"`draws_for`: {key}'s number of draws must be an integer >= 1, got {n!r}")
        if key in rows and key not in models:
            hit, level = [key], 2
        elif key == ABLATION_KEY and ablation_rows:
            hit, level = ablation_rows, 1
        elif key in models:
            hit, level = [name for name, e in rows.items() if e["model"] == key], 0
        else:
            raise ArgumentError(f"`draws_for`: {key!r} names no row of this comparison; rows: {', '.join(rows)}"
                                + (f"; or a model: {', '.join(sorted(models))}" if models else "")
                                + (f"; or {ABLATION_KEY}" if ablation_rows else ""))
        if n > draws:
            raise ArgumentError(f"`draws_for`: row(s) {', '.join(hit)} ({key}={n}) ask for more draws than "
                                f"`draws` ({draws})")
        for name in hit:
            if rank.get(name, -1) < level:
                counts[name], rank[name] = n, level
    return counts


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


def _check_run_data(where: Path, data: Optional[str]) -> Optional[str]:
    """The split a run's ``run.json`` records (``None`` without one); raises CompareError when the run was
    trained on another catalog than ``data``."""
    path = where / "run.json"
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    if "data" in info and not same_data(info["data"], data):
        raise CompareError(f"{where} was trained on {data_label(info['data'])} ({info['data']!r}), not on "
                           f"{data_label(data)} ({data!r}): one output directory holds one catalog; pass the same "
                           "--data, or use another --out")
    return info.get("split")


def check_out_data(out: Path, data: Optional[str]) -> None:
    """Refuse an output directory whose finished or started runs (their ``run.json``) were trained on another
    catalog than ``data`` (CompareError naming the run), before anything new is trained."""
    for pattern in ("runs/draw*_seed*", "runs/draw*_seed*/*", "tune/*/*"):
        for where in sorted(Path(out).glob(pattern)):
            if where.is_dir():
                _check_run_data(where, data)


def _read_run(out: Path, draw: int, seed: int, rows: Dict[str, str], data: Optional[str]
              ) -> Tuple[Dict[str, Any], Optional[str], bool, Dict[str, Path]]:
    """``({row: metrics.json entry}, the run's split or None, per_row, {row: its run directory})`` of one
    ``(draw, seed)``: from ``OUT/runs/draw<d>_seed<s>/metrics.json`` (one run of every model) or, as ``--tune``
    / ``--variants`` write them, from ``OUT/runs/draw<d>_seed<s>/<row>/metrics.json``; ``rows`` maps each row to
    its model (the ``metrics.json`` key). Raises FileNotFoundError naming what is missing, CompareError for a
    run on another catalog than ``data``."""
    run = _run_dir(out, draw, seed)
    per_model = not (run / "metrics.json").is_file()
    entries: Dict[str, Any] = {}
    dirs: Dict[str, Path] = {}
    split = None
    for name, model in rows.items():
        where = run / name if per_model else run
        if not _run_complete(where, [model]):
            what = f"run draw {draw} seed {seed}" + (f" of {name}" if per_model else "")
            raise FileNotFoundError(f"{what} is missing or unfinished: {where}")
        entries[name] = json.loads((where / "metrics.json").read_text())[model]
        dirs[name] = where
        split = _check_run_data(where, data) or split
    return entries, split, per_model, dirs


# ---------------------------------------------------------------------------------------------- token statistics
def _mean(values: Sequence[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def _log_churn(log: Path, model: str) -> Dict[str, Optional[float]]:
    """``{"churn", "churn_level0"}`` of ``model``'s joint epochs in a ``train.log``: per epoch that logs them,
    the mean over modalities of ``churn_<m>`` (any level changed) and of ``churn_<m>_level0``, then the mean
    over those epochs (``None`` where no epoch logs one). An epoch logged twice (a resumed run) counts once, its
    last line."""
    epochs: Dict[int, Dict[str, float]] = {}
    if log.is_file():
        with open(log, errors="replace") as fh:
            for line in fh:
                m = _EPOCH_LINE.match(line.rstrip("\n"))
                if m is None or m.group(1) != model:
                    continue
                kv = dict(p.split("=", 1) for p in m.group(3).split() if "=" in p)
                if kv.get("stage") != "joint":
                    continue
                churn = {}
                for k, v in kv.items():
                    if k.startswith("churn_"):
                        try:
                            churn[k] = float(v)
                        except ValueError:
                            pass
                epochs[int(m.group(2))] = churn
    any_level = [_mean([v for k, v in c.items() if not k.endswith("_level0")]) for c in epochs.values()]
    level0 = [_mean([v for k, v in c.items() if k.endswith("_level0")]) for c in epochs.values()]
    return {"churn": _mean([v for v in any_level if v is not None]),
            "churn_level0": _mean([v for v in level0 if v is not None])}


def token_stats(entry: Dict[str, Any], log: Optional[Path], model: str) -> Dict[str, Optional[float]]:
    """One run's token statistics, each ``None`` where the run does not report it (a baseline, a continuous
    MoToRec, a run without ``train.log``):

    * ``perplexity``: the selected model's codebook perplexity (``metrics.json`` ``model_stats``
      ``perplexity_<m>_level<l>``: exp of the entropy of the catalog's codes, K when all K codes are used
      evenly), averaged over modalities and levels;
    * ``unused_codes``: the fraction of codes no item has (``unused_codes_<m>_level<l>``), averaged alike;
    * ``churn`` / ``churn_level0``: the mean per joint epoch (the first has none: nothing to compare with) of
      the fraction of items whose tokens (any level / the first level) changed since the previous epoch,
      averaged over modalities, from ``model``'s epoch lines in ``log`` (:func:`_log_churn`).

    ``entry`` is the run's ``metrics.json`` entry of ``model``.
    """
    stats = entry.get("model_stats") or {}
    out: Dict[str, Optional[float]] = {
        "perplexity": _mean([float(v) for k, v in stats.items() if k.startswith("perplexity_")]),
        "unused_codes": _mean([float(v) for k, v in stats.items() if k.startswith("unused_codes_")])}
    out.update(_log_churn(log, model) if log is not None else {"churn": None, "churn_level0": None})
    return out


def _row_tokens(runs: Sequence[Tuple[int, Dict[str, Optional[float]]]]) -> Optional[Dict[str, Optional[float]]]:
    """A row's token statistics from its runs' ``(draw, token_stats)``: per key, seeds averaged within a draw,
    then the mean over draws (``None`` unless every run reports it); ``None`` when the row reports none."""
    out: Dict[str, Optional[float]] = {}
    for k in TOKEN_STATS:
        vals = [t[k] for _, t in runs]
        if vals and all(v is not None for v in vals):
            out[k] = _mean(draw_means(vals, [d for d, _ in runs])[1])
        else:
            out[k] = None
    return out if any(v is not None for v in out.values()) else None


# ---------------------------------------------------------------------------------------------- summarize
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


def _tuning(out: Path, models: Sequence[str], own_rule: bool) -> Dict[str, Any]:
    """What ``--tune`` chose (``OUT/tune/chosen.json``) for the summary: the grid, the selection rule and per row
    its lr / lambda_reg and own keys (an untuned row: those its first run was trained with, ``None`` if unknown)."""
    path = out / "tune" / "chosen.json"
    chosen = json.loads(path.read_text()) if path.is_file() else {}
    per: Dict[str, Any] = {}
    grid = select = None
    for name in models:
        if name in chosen:
            e = chosen[name]
            grid = {"lr": e["grid"]["lr"], "lambda_reg": e["grid"]["lambda_reg"]}
            select = e["select"]
            per[name] = {"tuned": True, "lr": e["lr"], "lambda_reg": e["lambda_reg"], "score": e["score"],
                         "points": e["points"], "own": e.get("own", {}), "own_points": e.get("own_points", {})}
        else:
            runs = sorted((out / "runs").glob(f"draw*_seed*/{name}"))
            got = _trained_lr_reg(runs[0]) if runs else None
            per[name] = {"tuned": False, "lr": None if got is None else got[0],
                         "lambda_reg": None if got is None else got[1]}
    rule = ("train.lr x model.lambda_reg first; then, at that point, each key of the model's own grid "
            "(motorec.experiments.grids.TUNING_GRID) one at a time in the grid's order, each at the values chosen "
            "before it (a tie keeps the config's value)") if own_rule else "train.lr x model.lambda_reg"
    return {"grid": grid, "select": select, "on": {"draw": 0, "seed": 0, "split": "valid"}, "rule": rule,
            "models": per}


def _cost(entries: Sequence[Dict[str, Any]]) -> Dict[str, Optional[float]]:
    """Mean over runs of ``seconds_per_epoch`` and of the training seconds (seconds per epoch x epochs run) of a
    row's ``metrics.json`` entries (``None`` where a run does not record them)."""
    spe = [e.get("seconds_per_epoch") for e in entries]
    total = [s * e["epochs_run"] if s is not None and e.get("epochs_run") is not None else None
             for s, e in zip(spe, entries)]
    ok = [v for v in spe if isinstance(v, (int, float)) and math.isfinite(v)]
    ok_t = [v for v in total if isinstance(v, (int, float)) and math.isfinite(v)]
    return {"seconds_per_epoch": sum(ok) / len(ok) if len(ok) == len(spe) and ok else None,
            "train_seconds": sum(ok_t) / len(ok_t) if len(ok_t) == len(total) and ok_t else None}


def _paired(per_draw: Dict[str, List[float]], row_draws: Dict[str, List[int]], a: str, b: str
            ) -> Tuple[List[float], List[float]]:
    """Rows ``a`` and ``b``'s per-draw values (``per_draw[row]``, aligned with ``row_draws[row]``) on the draws
    both have, in draw order."""
    ia, ib = row_draws[a], row_draws[b]
    shared = [d for d in ia if d in ib]
    return [per_draw[a][ia.index(d)] for d in shared], [per_draw[b][ib.index(d)] for d in shared]


def _strongest(table: Dict[str, Any], row_draws: Dict[str, List[int]], baselines: Sequence[str], st: str) -> str:
    """The baseline row with the highest mean Recall@20 in setting ``st`` over the draws every baseline row has
    (with equal draws: its mean over runs)."""
    common = [d for d in row_draws[baselines[0]] if all(d in row_draws[b] for b in baselines)]

    def score(name: str) -> float:
        v, ids = table[name][st]["per_draw"]["recall@20"], row_draws[name]
        return sum(v[ids.index(d)] for d in common) / len(common)

    return max(baselines, key=score)


def _draw_stats(table: Dict[str, Any], rows: Sequence[str], baselines: Sequence[str],
                row_draws: Dict[str, List[int]]) -> Dict[str, Any]:
    """Per setting: the strongest baseline row (:func:`_strongest`) and, for every row, at the draw level (one
    value per draw: seeds averaged first), mean ± sd over the row's draws and, on the draws it shares with that
    baseline (``n``), the ratio of means, the paired Wilcoxon p, the bootstrap 95% interval of the ratio and the
    draws won."""
    out: Dict[str, Any] = {}
    if not baselines:
        return out
    for st in SETTING_NAMES:
        best = _strongest(table, row_draws, baselines, st)
        per: Dict[str, Any] = {}
        for name in rows:
            per[name] = {}
            for k in ("recall@20", "ndcg@20"):
                pd = {n: table[n][st]["per_draw"][k] for n in (name, best)}
                a, b = _paired(pd, row_draws, name, best)
                mean, sd = _mean_sd(pd[name])
                w = wilcoxon_signed_rank(a, b)
                ci = bootstrap_ratio_ci(a, b)
                per[name][k] = {"mean": mean, "sd": sd, "ratio": ci["ratio"], "ci_low": ci["low"],
                                "ci_high": ci["high"], "p_value": w["p_value"], "wins": int(w["wins"]),
                                "losses": int(w["losses"]), "n": len(a)}
        out[st] = {"against": best, "rows": per}
    return out


def _row_table(runs: Sequence[Tuple[int, Dict[str, Any]]]) -> Dict[str, Any]:
    """Per setting, a row's mean ± sd over its runs' test metrics (``(draw, metrics.json "test" entry)``) and
    its per-draw means of Recall@20 and NDCG@20."""
    out: Dict[str, Any] = {}
    draws = [d for d, _ in runs]
    for st in SETTING_NAMES:
        vals = {k: [setting_metrics(m, st)[k] for _, m in runs] for k in METRICS}
        entry: Dict[str, Any] = {}
        for k, v in vals.items():
            mean, sd = _mean_sd(v)
            entry[k] = {"mean": mean, "sd": sd, "runs": v}
        entry["per_draw"] = {k: draw_means(vals[k], draws)[1] for k in ("recall@20", "ndcg@20")}
        out[st] = entry
    return out


def summarize(out: str | Path, *, models: Sequence[str], draws: int, seeds: int, data: Optional[str] = None,
              reference: str = REFERENCE, scale_rows: bool = True, draws_from: int = 0,
              entries: Optional[Dict[str, Dict[str, Any]]] = None,
              provenance: Optional[Dict[str, Any]] = None,
              draws_for: Optional[str | Dict[str, int]] = None) -> Dict[str, Any]:
    """Read ``OUT/runs/*/metrics.json`` of every ``(draw, seed)`` (draws ``draws_from .. draws_from + draws - 1``)
    or ``OUT/runs/*/<row>/metrics.json`` (the per-row runs of ``--tune`` / ``--variants``) and write
    ``OUT/summary.json`` and ``OUT/summary.md`` (fields: the module docstring). ``models`` are the rows;
    ``entries`` maps each row to ``{"model", "variant", "overrides"}`` (default: each row is its model under the
    config); ``draws_for`` gives some rows fewer draws, the first N (:func:`row_draw_counts`). The paired tests
    are at the draw level, on the draws both rows have: :data:`REFERENCE`'s row ``reference`` against the
    strongest baseline row (a row of another model). Returns the summary dict.

    Raises:
        FileNotFoundError: a run is missing or unfinished (named). CompareError: a run on another catalog than
        ``data``. ArgumentError: a bad ``draws_for``.
    """
    out = Path(out)
    entries = entries or {name: {"model": name, "variant": "config", "overrides": {}} for name in models}
    rows = {name: entries[name]["model"] for name in models}
    draw_ids = list(range(draws_from, draws_from + draws))
    counts = row_draw_counts({n: entries[n] for n in models}, draws, draws_for)
    row_draws = {name: draw_ids[:counts[name]] for name in models}
    got_runs: Dict[str, List[Tuple[int, Dict[str, Any], Path]]] = {name: [] for name in models}
    scale: Dict[str, List[Tuple[int, Dict[str, Any]]]] = {name: [] for name in SCALE_ROWS}
    runs: List[Dict[str, int]] = []
    split = "cold"
    tuned_layout = False
    for d in draw_ids:
        want = {name: model for name, model in rows.items() if d in row_draws[name]}
        for s in range(seeds):
            got, run_split, per_model, dirs = _read_run(out, d, s, want, data)
            split = run_split or split
            tuned_layout = tuned_layout or per_model
            for name in want:
                got_runs[name].append((d, got[name], dirs[name]))
            if scale_rows:
                for name, m in _scale_rows(data, split, d, s).items():
                    scale[name].append((d, m))
            runs.append({"draw": d, "seed": s})
    table: Dict[str, Any] = {}
    for name in models:
        table[name] = _row_table([(d, e["test"]) for d, e, _ in got_runs[name]])
        table[name]["cost"] = _cost([e for _, e, _ in got_runs[name]])
        table[name]["tokens"] = _row_tokens([(d, token_stats(e, where / "train.log", rows[name]))
                                             for d, e, where in got_runs[name]])
    if scale_rows:
        for name in SCALE_ROWS:
            table[name] = _row_table(scale[name])
            row_draws[name] = list(draw_ids)
    baselines = [n for n in models if rows[n] != REFERENCE]
    tests: Dict[str, Any] = {}
    if reference in models and baselines:
        for st in SETTING_NAMES:
            best = _strongest(table, row_draws, baselines, st)
            tests[st] = {"against": best, "level": "draw"}
            for k in ("recall@20", "ndcg@20"):
                a, b = _paired({n: table[n][st]["per_draw"][k] for n in (reference, best)}, row_draws, reference,
                               best)
                ci = bootstrap_ratio_ci(a, b)
                tests[st][k] = {"ratio": ci["ratio"], "ci_low": ci["low"], "ci_high": ci["high"],
                                **wilcoxon_signed_rank(a, b)}
            tests[st]["draws"] = len(a)
    chosen_path = out / "tune" / "chosen.json"
    own_rule = any(e.get("own") for e in (json.loads(chosen_path.read_text()).values()
                                          if chosen_path.is_file() else []))
    summary = {"models": list(models), "entries": entries, "draws": draws, "draws_from": draws_from,
               "draw_ids": draw_ids, "row_draws": row_draws, "seeds": seeds, "split": split, "data": data,
               "reference": reference, "table": table, "tests": tests,
               "draw_stats": _draw_stats(table, list(models), baselines, row_draws),
               "tuning": _tuning(out, models, own_rule) if tuned_layout and (out / "tune").is_dir() else None,
               "provenance": provenance, "runs": runs}
    _write_atomic(out / "summary.json", json.dumps(summary, indent=2))
    _write_atomic(out / "summary.md", format_summary(summary))
    return summary


# ---------------------------------------------------------------------------------------------- summary.md
def _fmt_seconds(v: Optional[float]) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def _fmt_draws(ids: Sequence[int]) -> str:
    ids = list(ids)
    if ids and ids == list(range(ids[0], ids[-1] + 1)) and len(ids) > 1:
        return f"{ids[0]}-{ids[-1]}"
    return ",".join(map(str, ids))


def _summary_row_draws(summary: Dict[str, Any]) -> Dict[str, List[int]]:
    """``{row: its draw ids}`` of a summary, for summaries written before per-row draws too (every row: every
    draw)."""
    ids = summary.get("draw_ids") or list(range(summary["draws"]))
    return {name: list((summary.get("row_draws") or {}).get(name, ids)) for name in summary["table"]}


def format_summary(summary: Dict[str, Any]) -> str:
    """Markdown tables of a :func:`summarize` result: mean ± sd per row and setting with its cost and its number
    of draws, the draw-level statistics against the strongest baseline, the token statistics, the tuning,
    per-draw Recall@20 and the paired tests of the reference. Reads summaries written before draw ids, cost,
    draw-level statistics, per-row draws and token statistics were recorded."""
    table, tests = summary["table"], summary["tests"]
    n_runs = summary["draws"] * summary["seeds"]
    draw_ids = summary.get("draw_ids") or list(range(summary["draws"]))
    row_draws = _summary_row_draws(summary)
    uneven = any(len(v) != len(draw_ids) for v in row_draws.values())
    prov = summary.get("provenance") or {}
    lines = []
    if prov:
        dirty = " (with uncommitted changes)" if prov.get("dirty") else ""
        lines += [f"Commit: {prov.get('commit') or 'unknown'}{dirty}", "", f"Command: `{prov.get('command')}`", ""]
    if "data" in summary:
        lines += [f"Data: {data_label(summary['data'])}", ""]
    fewer = (" (a row with fewer, column draws, runs the first of them)" if uneven else "")
    lines += [f"Test split, cold-item draws {_fmt_draws(draw_ids)}{fewer} x {summary['seeds']} seed(s) = {n_runs} "
              "runs; mean ± sd over runs; cost: mean over runs of seconds per training epoch and of training "
              "seconds (epochs run x seconds per epoch).", "",
              "| model | " + " | ".join(f"{st} R@20 | {st} N@20" for st in SETTING_NAMES)
              + " | s/epoch | train s | draws |",
              "|---|" + "---|" * (2 * len(SETTING_NAMES) + 3)]
    for name, per in table.items():
        cells = []
        for st in SETTING_NAMES:
            for k in ("recall@20", "ndcg@20"):
                cells.append(f"{per[st][k]['mean']:.4f} ± {per[st][k]['sd']:.4f}")
        cost = per.get("cost") or {}
        cells += [_fmt_seconds(cost.get("seconds_per_epoch")), _fmt_seconds(cost.get("train_seconds")),
                  str(len(row_draws[name]))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for st, ds in (summary.get("draw_stats") or {}).items():
        over = ("the draws each row shares with it (n; the ratio and its interval on those draws too, the mean ± sd "
                "on the row's own draws)" if uneven else f"{len(draw_ids)} draws")
        lines += ["", f"Draw level, {st} setting, Recall@20 (one value per draw, seeds averaged first; ratio of "
                  f"means to the strongest baseline by mean, {ds['against']}; paired two-sided Wilcoxon over "
                  f"{over}; percentile bootstrap 95% interval of the ratio, 10,000 resamples of draws, seed 0):", "",
                  "| model | mean ± sd over draws | ratio | 95% interval | p | wins/n |", "|---|---|---|---|---|---|"]
        for name, r in ds["rows"].items():
            r = r["recall@20"]
            lines.append(f"| {name} | {r['mean']:.4f} ± {r['sd']:.4f} | {r['ratio']:.3f} | "
                         f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {r['p_value']:.4f} | {r['wins']}/{r['n']} |")
    lines += _format_tokens(table, row_draws)
    if summary.get("tuning"):
        lines += [""] + _format_tuning(summary["tuning"], summary.get("reference", REFERENCE))
        if 0 in draw_ids:
            lines += ["", "Note: draw 0, where the tuning chose each setting, is among the compared draws; a report "
                      "on draws no choice was made on uses --draws-from 1 or later."]
    for st in SETTING_NAMES:
        lines += ["", f"Per-draw Recall@20, {st} setting (mean over seeds):", "",
                  "| model | " + " | ".join(f"draw {d}" for d in draw_ids) + " |",
                  "|---|" + "---|" * len(draw_ids)]
        for name, per in table.items():
            by = dict(zip(row_draws[name], per[st]["per_draw"]["recall@20"]))
            lines.append(f"| {name} | " + " | ".join(f"{by[d]:.4f}" if d in by else "-" for d in draw_ids) + " |")
    if tests:
        level = "draws" if any(t.get("level") == "draw" for t in tests.values()) else "runs"
        ns = [t.get("draws", len(draw_ids)) if level == "draws" else n_runs for t in tests.values()]
        over = f"{ns[0]} {level}" if len(set(ns)) == 1 else "the draws both rows have (n)"
        lines += ["", f"Paired two-sided Wilcoxon signed-rank tests, {summary['reference']} against the strongest "
                  f"baseline per setting (by mean Recall@20), over {over}:", "",
                  "| setting | against | R@20 ratio | wins/losses | p | N@20 ratio | p |" + (" n |" if uneven else ""),
                  "|---|---|---|---|---|---|---|" + ("---|" if uneven else "")]
        for (st, t), n in zip(tests.items(), ns):
            r, nd = t["recall@20"], t["ndcg@20"]
            lines.append(f"| {st} | {t['against']} | {r['ratio']:.3f} | {int(r['wins'])}/{int(r['losses'])} | "
                         f"{r['p_value']:.4f} | {nd['ratio']:.3f} | {nd['p_value']:.4f} |"
                         + (f" {n} |" if uneven else ""))
        lines.append("")
        lines.append(f"(with {min(ns)} {level} the smallest attainable exact p is {2 / 2 ** min(ns):.4f})")
    return "\n".join(lines) + "\n"


def _format_tokens(table: Dict[str, Any], row_draws: Dict[str, List[int]]) -> List[str]:
    """The summary.md "Tokens" section: the rows with token statistics (none: no section)."""
    rows = [(name, per["tokens"]) for name, per in table.items() if per.get("tokens")]
    if not rows:
        return []

    def cell(v: Optional[float], digits: int) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    lines = ["", "Tokens (mean over draws, seeds averaged first): codebook perplexity of the selected model and "
             "its fraction of unused codes, averaged over modalities and levels; churn: the fraction of items whose "
             "tokens changed since the previous joint epoch (any level / the first level), averaged over modalities "
             "and over the joint epochs after the first:", "",
             "| model | draws | perplexity | unused codes | churn / epoch | level-0 churn / epoch |",
             "|---|---|---|---|---|---|"]
    for name, t in rows:
        lines.append(f"| {name} | {len(row_draws[name])} | {cell(t['perplexity'], 2)} | {cell(t['unused_codes'], 3)} "
                     f"| {cell(t['churn'], 3)} | {cell(t['churn_level0'], 3)} |")
    return lines


def _format_tuning(tuning: Dict[str, Any], reference: str) -> List[str]:
    """The summary.md lines of :func:`_tuning`: the grid, the rule, and a table of each row's setting."""
    grid = tuning["grid"]
    if grid is None:
        lines = ["Equal tuning (--tune): no compared model was tuned."]
    else:
        lines = [f"Equal tuning (--tune): every tuned model's train.lr in {{{', '.join(map(repr, grid['lr']))}}} x "
                 f"model.lambda_reg in {{{', '.join(map(repr, grid['lambda_reg']))}}}, chosen by the validation "
                 f"checkpoint-selection score (train.select = {tuning['select']}) of one run per point on draw 0, "
                 "seed 0 (a tie keeps the earlier point, the default first); every run above uses its model's "
                 "choice." + (f" Rule: {tuning['rule']}." if tuning.get("rule") else "")]
    lines += ["", "| model | lr | lambda_reg | own keys | valid score | grid (lr / lambda_reg: score) |",
              "|---|---|---|---|---|---|"]

    def num(v: Optional[float]) -> str:
        return "-" if v is None else repr(v)

    for name, t in tuning["models"].items():
        if t["tuned"]:
            pts = ", ".join(f"{p['lr']!r} / {p['lambda_reg']!r}: {p['score']:.4f}" for p in t["points"])
            own = ", ".join(f"{k} {v!r}" for k, v in (t.get("own") or {}).items()) or "-"
            lines.append(f"| {name} | {num(t['lr'])} | {num(t['lambda_reg'])} | {own} | {t['score']:.4f} | {pts} |")
        else:
            own_defaults = name == reference or name.startswith(REFERENCE)
            why = "not tuned: its defaults were chosen on validation" if own_defaults else "not tuned"
            lines.append(f"| {name} | {num(t['lr'])} | {num(t['lambda_reg'])} | - | - | {why} |")
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


# ---------------------------------------------------------------------------------------------- collect
def collect(outs: Sequence[str | Path], report: str | Path) -> Dict[str, Any]:
    """One table of several ``motorec compare`` output directories side by side (e.g. MovieLens-100k and the
    synthetic catalogs, one directory each), from their ``summary.json``; writes ``REPORT/collected.json`` and
    ``REPORT/collected.md`` (:func:`format_collected`).

    Per catalog (its summary's ``data``) and row: the row's number of draws and, per setting, its mean
    Recall@20 over draws and, on the draws it shares with the catalog's reference row (``n``), the ratio of
    means row / reference with the percentile bootstrap 95% interval over draws and the paired two-sided
    Wilcoxon p; ``strongest``: the row is the setting's strongest baseline (the summary's ``draw_stats``).

    Returns:
        ``{"catalogs": [{"out", "data", "label", "reference", "commit", "draw_ids", "rows": {row: {"draws": int,
        setting: {"mean", "ratio", "ci_low", "ci_high", "p_value", "n", "strongest"}}}}]}`` (the ratio fields
        ``None`` for the reference row and where a catalog has no reference row).

    Raises:
        ArgumentError: (``collect``) no directory, a repeated one, or one without ``summary.json``.
    """
    if not outs:
        raise ArgumentError("`collect` needs at least one compare output directory")
    paths = [Path(o).resolve() for o in outs]
    if len(set(paths)) != len(paths):
        raise ArgumentError(f"`collect` names a directory twice: {', '.join(map(str, outs))}")
    catalogs = []
    for path in paths:
        f = path / "summary.json"
        if not f.is_file():
            raise ArgumentError(f"`collect`: {str(path)!r} has no summary.json (run motorec compare --out there "
                                "first)")
        s = json.loads(f.read_text())
        ref = s.get("reference", REFERENCE)
        row_draws = _summary_row_draws(s)
        strongest = {st: (s.get("draw_stats") or {}).get(st, {}).get("against") for st in SETTING_NAMES}
        rows: Dict[str, Any] = {}
        for name in s["models"]:
            r: Dict[str, Any] = {"draws": len(row_draws[name])}
            for st in SETTING_NAMES:
                per_draw = {n: s["table"][n][st]["per_draw"]["recall@20"] for n in (name, ref) if n in s["table"]}
                cell: Dict[str, Any] = {"mean": _mean(per_draw[name]), "ratio": None, "ci_low": None, "ci_high": None,
                                        "p_value": None, "n": len(per_draw[name]), "strongest": strongest[st] == name}
                if name != ref and ref in per_draw:
                    a, b = _paired(per_draw, row_draws, name, ref)
                    ci = bootstrap_ratio_ci(a, b)
                    cell.update(ratio=ci["ratio"], ci_low=ci["low"], ci_high=ci["high"],
                                p_value=wilcoxon_signed_rank(a, b)["p_value"], n=len(a))
                r[st] = cell
            rows[name] = r
        catalogs.append({"out": str(path), "data": s.get("data"), "label": data_label(s.get("data")),
                         "reference": ref, "commit": (s.get("provenance") or {}).get("commit"),
                         "draw_ids": s.get("draw_ids") or list(range(s["draws"])), "rows": rows})
    labels = [c["label"] for c in catalogs]
    for c in catalogs:  # two directories of one catalog (e.g. two configs): tell them apart by folder
        if labels.count(c["label"]) > 1:
            c["label"] += f" ({Path(c['out']).name})"
    result = {"catalogs": catalogs}
    report = Path(report)
    report.mkdir(parents=True, exist_ok=True)
    _write_atomic(report / "collected.json", json.dumps(result, indent=2))
    _write_atomic(report / "collected.md", format_collected(result))
    return result


def format_collected(result: Dict[str, Any]) -> str:
    """The markdown of :func:`collect`: one table, a line per catalog and row, then each catalog's source."""
    lines = ["Test Recall@20, mean over draws, per catalog and row; ratio: the row's mean over the reference row's "
             "(ref) on the draws both have, with its percentile bootstrap 95% interval over draws (10,000 "
             "resamples, seed 0) and the paired two-sided Wilcoxon p; n: the row's draws (paired draws after a "
             "slash where fewer); *: the setting's strongest baseline.", "",
             "| catalog | row | n | " + " | ".join(f"{st} R@20 | {st} ratio [95% CI] | {st} p" for st in SETTING_NAMES)
             + " |", "|---|---|---|" + "---|" * (3 * len(SETTING_NAMES))]
    for c in result["catalogs"]:
        for name, r in c["rows"].items():
            paired = {r[st]["n"] for st in SETTING_NAMES}
            n = str(r["draws"]) + (f"/{min(paired)}" if min(paired) < r["draws"] else "")
            cells = []
            for st in SETTING_NAMES:
                e = r[st]
                mean = f"{e['mean']:.4f}" + ("*" if e["strongest"] else "")
                if name == c["reference"]:
                    cells += [mean, "ref", "-"]
                elif e["ratio"] is None:
                    cells += [mean, "-", "-"]
                else:
                    cells += [mean, f"{e['ratio']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}]", f"{e['p_value']:.4f}"]
            lines.append(f"| {c['label']} | {name} | {n} | " + " | ".join(cells) + " |")
    lines += ["", "Sources:"]
    for c in result["catalogs"]:
        lines.append(f"- {c['label']}: {c['out']} (draws {_fmt_draws(c['draw_ids'])}, reference {c['reference']}, "
                     f"commit {c['commit'] or 'unknown'})")
    return "\n".join(lines) + "\n"
