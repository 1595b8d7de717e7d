"""Train a set of models on one dataset into one run directory (what ``motorec train`` does).

:func:`train_models` builds each model's config from one :class:`~motorec.config.Config`, loads the data once,
trains every model with :class:`motorec.train.Trainer` into a :class:`motorec.train.RunDir` (``config.yaml``,
``run.json``, ``train.log``, ``checkpoints/<model>/last.pt``, ``metrics.json``) and returns a
:class:`TrainResult`::

    from motorec.experiments import build_config, train_models

    cfg = build_config(epochs=2, seed=0)
    res = train_models(["lightgcn"], config=cfg, data="synthetic:users=60,items=80,interactions=900",
                       out="runs/tiny", quiet=True)
    res.metrics["lightgcn"]["test"]["cold"]["recall@20"]
"""
from __future__ import annotations

import datetime
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from motorec.config import DEFAULT_MODELS, MODEL_NAMES, Config
from motorec.eval.metrics import SETTINGS
from motorec.experiments.errors import ArgumentError

__all__ = ["build_config", "resolve_data", "load_data", "train_models", "TrainResult", "results_table",
           "INDUCTIVE"]

# metrics.json key of the inductive run (motorec.train.inductive)
INDUCTIVE = "motorec_inductive"


def resolve_data(data: Optional[str | Path]) -> Optional[str]:
    """What ``data`` names, as a run records it: ``None`` (the bundled MovieLens-100k), the synthetic spec as
    given (``synthetic[:key=value,...]``), or the absolute path of an MMRec folder.

    Raises:
        ArgumentError: ``data`` is neither a synthetic spec nor an existing folder.
        DataError: a synthetic spec with a bad key or value.
    """
    from motorec.data import parse_synthetic_spec

    if data is None:
        return None
    if parse_synthetic_spec(str(data)) is not None:
        return str(data)
    if not Path(data).is_dir():
        raise ArgumentError(f"`data` {str(data)!r} is not a directory (expected an MMRec folder with <name>.inter "
                            "and *_feat.npy, or synthetic[:key=value,...])")
    return str(Path(data).resolve())


def load_data(data: Optional[str | Path], split: str = "cold", seed: int = 0):
    """The :class:`motorec.data.Dataset` that ``data`` names (see :func:`resolve_data`), split by ``split``
    (``cold``: a draw of held-out items, ``warm``: the data's own labels) with split seed ``seed``."""
    from motorec import data as mdata

    if data is None:
        return mdata.load_movielens100k(split=split, seed=seed)
    if mdata.parse_synthetic_spec(str(data)) is not None:
        return mdata.load_synthetic_spec(str(data), split=split, seed=seed)
    return mdata.load_mmrec(resolve_data(data), split=split, seed=seed)


def build_config(config: Optional[Config | str | Path] = None, *, epochs: Optional[int] = None,
                 pretrain_epochs: Optional[int] = None, device: Optional[str] = None, backend: Optional[str] = None,
                 seed: Optional[int] = None, split: Optional[str] = None, split_seed: Optional[int] = None) -> Config:
    """A run's config: ``config`` (a :class:`~motorec.config.Config`, a YAML file, or ``None`` for the defaults)
    with the given settings replaced (``train.epochs``, ``train.pretrain_epochs``, ``train.device``,
    ``train.backend``, ``train.seed``, ``data.split``, ``data.seed`` = ``split_seed``; ``None`` keeps the
    config's). Raises ConfigError naming the setting for a bad value or file."""
    if config is None:
        cfg = Config()
    elif isinstance(config, Config):
        cfg = config
    elif isinstance(config, (str, Path)):
        cfg = Config.load(config)
    else:
        raise ArgumentError(f"`config` must be a Config, a YAML path or None, got {type(config).__name__}")
    train = {k: v for k, v in (("epochs", epochs), ("pretrain_epochs", pretrain_epochs), ("device", device),
                               ("backend", backend), ("seed", seed)) if v is not None}
    data = {k: v for k, v in (("split", split), ("seed", split_seed)) if v is not None}
    return cfg.replace(train=train, data=data)


@dataclass
class TrainResult:
    """What :func:`train_models` did.

    Attributes:
        out: the run directory.
        metrics: ``metrics.json`` as written: ``metrics[model]["valid"|"test"][setting][metric]`` plus
            ``seconds_per_epoch``, ``best_epoch``, ``epochs_run``, ``early_stopped`` (and ``selected_epochs``
            for a model selected part by part; ``new_items`` for :data:`INDUCTIVE`). With ``resume`` it keeps
            the entries of models trained before.
        models: the entries this call trained, in order (:data:`INDUCTIVE` last when asked for).
        capped: models the epoch cap stopped before early stopping could (they may be undertrained).
        config: the run's config (before each model's name is set).
        is_main: false on every rank but rank 0 of a torchrun group (which alone writes files).
        left_process_group: the call ran in a torchrun process group and left it (see :func:`motorec.cli.main`).
    """

    out: Path
    metrics: Dict[str, Any]
    models: List[str]
    capped: List[str] = field(default_factory=list)
    config: Optional[Config] = None
    is_main: bool = True
    left_process_group: bool = False

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.json"

    def table(self, split: str = "test") -> str:
        """:func:`results_table` of the models this call trained."""
        return results_table({k: self.metrics[k] for k in self.models}, split)


def results_table(metrics: Dict[str, Any], split: str = "test") -> str:
    """Plain-text table per model: Recall@20 and NDCG@20 in the cold, warm and hybrid settings, and seconds per
    epoch (``-`` where a run has none). ``metrics`` is shaped as ``metrics.json``."""
    head = f"{'model':<18}" + "".join(f"{g + ' R@20':>13}{g + ' N@20':>13}" for g in SETTINGS) + f"{'s/epoch':>10}"
    lines = [f"{split} results (cold: warm items masked; warm: cold items masked; hybrid: nothing masked)", head,
             "-" * len(head)]
    for name, m in metrics.items():
        row = f"{name:<18}"
        for g in SETTINGS:
            gm = m.get(split, {}).get(g, {})
            row += f"{gm.get('recall@20', float('nan')):>13.4f}{gm.get('ndcg@20', float('nan')):>13.4f}"
        spe = m.get("seconds_per_epoch")
        row += f"{spe:>10.2f}" if isinstance(spe, (int, float)) and spe == spe else f"{'-':>10}"  # evaluate: none
        lines.append(row)
    return "\n".join(lines)


def setup_logging(log_file: Optional[Path], quiet: bool) -> logging.Logger:
    """The ``motorec`` logger, writing to ``log_file`` (``None``: no file) and, unless ``quiet``, stderr."""
    log = logging.getLogger("motorec")
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    log.propagate = False
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    if log_file is not None:
        fh = _LogFile(log_file)
        fh.setFormatter(fmt)
        log.addHandler(fh)
    if not quiet:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(fmt)
        log.addHandler(sh)
    return log


class _LogFile(logging.FileHandler):
    def handleError(self, record) -> None:
        # A log line that cannot be written (a full disk) is dropped instead of printing a traceback per line;
        # the run's next file write (checkpoint, metrics) then fails and says so in one line.
        pass


def _entry(res: Dict[str, Any]) -> Dict[str, Any]:
    out = {k: res[k] for k in ("valid", "test", "seconds_per_epoch", "best_epoch", "epochs_run", "early_stopped")}
    # time per stage, peak memory, and what the model reports of itself (e.g. MoToRec's codebook usage)
    return {**out, **{k: res[k] for k in ("seconds", "peak_rss_mb", "model_stats") if res.get(k)}}


def train_models(models: Optional[Sequence[str]] = None, *, config: Optional[Config | str | Path] = None,
                 data: Optional[str | Path] = None, out: Optional[str | Path] = None, resume: bool = False,
                 inductive: bool = False, threads: Optional[int] = None, quiet: bool = False) -> TrainResult:
    """Train ``models`` one after the other on one dataset into the run directory ``out``.

    Args:
        models: model names (:data:`motorec.config.MODEL_NAMES`; default :data:`motorec.config.DEFAULT_MODELS`);
            a repeated name is trained once.
        config: a :class:`~motorec.config.Config`, a YAML file or ``None`` (defaults); see :func:`build_config`.
            ``config.model.name`` is replaced by each model's name, ``config.data`` picks the split and its seed.
        data: an MMRec folder, a ``synthetic[:key=value,...]`` spec or ``None`` (bundled MovieLens-100k).
        out: the run directory (default ``runs/<timestamp>`` under the current directory).
        resume: continue from the checkpoints in ``out`` (refused if they were made with another config).
        inductive: also train MoToRec without the held-out items' features and add them afterwards
            (:func:`motorec.train.inductive.fit_inductive`), reported as :data:`INDUCTIVE`; needs ``motorec``
            among ``models``, the cold split, and one process.
        threads: CPU threads for torch (``torch.set_num_threads``; default: torch's choice).
        quiet: no progress bars or log lines on stderr (``train.log`` is written regardless).

    Under torchrun the models train data-parallel; rank 0 writes the files, and every rank leaves the process
    group before returning (``left_process_group``).

    Returns:
        a :class:`TrainResult`; ``metrics.json`` is rewritten after each model.

    Raises:
        ArgumentError: a bad argument (named); ConfigError, DataError, CheckpointError: a bad config, dataset
        or run directory to resume; WriteError: a file of the run could not be written.
    """
    from motorec.train import RunDir, Trainer, cpu_allocator, resolve_device, run_info
    from motorec.train import distributed as _dist

    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ArgumentError(f"`threads` must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    models = list(dict.fromkeys(models)) if models else list(DEFAULT_MODELS)
    unknown = [m for m in models if m not in MODEL_NAMES]
    if unknown:
        raise ArgumentError(f"`models`: unknown model(s) {unknown}; choose from {list(MODEL_NAMES)}")
    cfg = build_config(config)
    device = resolve_device(cfg.train.device)
    if resume and not out:
        raise ArgumentError("`resume` needs `out` DIR (the run to continue)")
    out = Path(out) if out else Path("runs") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    dctx = _dist.init_from_env(cfg.train.device)  # under torchrun: join the group; rank 0 writes the outputs
    device = _dist.local_device(dctx, device)  # resolved once, passed to every trainer
    main = dctx is None or dctx.is_main
    run = RunDir(_dist.on_main(dctx, lambda: str(out)))
    if inductive and ("motorec" not in models or dctx is not None or cfg.data.split != "cold"):
        raise ArgumentError("`inductive` needs MoToRec among the models (it uses with_new_items), the cold split, "
                            "and one process (not torchrun)")

    ds = load_data(data, cfg.data.split, cfg.data.seed)
    run.prepare(cfg, run_info(ds, data=resolve_data(data), models=models, split=cfg.data.split,
                              data_seed=cfg.data.seed), resume=resume, write=main)
    log = setup_logging(run.log_path if main else None, quiet or not main)
    log.info("data: %s", ds.summary().replace("\n", " |"))
    log.info("output: %s", run.path)
    log.info("allocator: %s", cpu_allocator())

    metrics: Dict[str, Any] = run.read_metrics() if resume else {}
    capped: List[str] = []
    for name in models:
        trainer = Trainer(cfg.replace(model={"name": name}), ds, checkpoint_dir=run.checkpoint_dir(name),
                          quiet=quiet or not main, logger=log, device=device, dist=dctx)
        res = trainer.fit(resume=_dist.on_main(dctx, lambda: resume and run.has_checkpoint(name)))
        if res["hit_epoch_cap"]:
            capped.append(name)
        metrics[name] = _entry(res)
        if res["selected_epochs"] is not None:
            metrics[name]["selected_epochs"] = res["selected_epochs"]
        _dist.on_main(dctx, lambda: run.write_metrics(metrics))
        log.info("%s test: %s", name, "  ".join(f"{g} R@20={res['test'][g]['recall@20']:.4f}" for g in SETTINGS))
    trained = list(models)
    if inductive:
        from motorec.train.inductive import fit_inductive

        res = fit_inductive(cfg.replace(model={"name": "motorec"}), ds, quiet=quiet, logger=log, device=device)
        metrics[INDUCTIVE] = {**_entry(res), "new_items": res["num_new_items"]}
        run.write_metrics(metrics)
        trained.append(INDUCTIVE)
        log.info("%s test: %s", INDUCTIVE, "  ".join(f"{g} R@20={res['test'][g]['recall@20']:.4f}"
                                                     for g in SETTINGS))
    result = TrainResult(run.path, metrics, trained, capped, cfg, is_main=main)
    if dctx is not None:
        dctx.barrier()  # every rank leaves together: a rank exiting with live gloo threads aborts
        _dist.shutdown()
        result.left_process_group = True
    return result
