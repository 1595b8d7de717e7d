"""Load what ``motorec train`` wrote: a run directory's dataset and its trained models, for use in Python.

A run directory holds ``run.json`` (where the data came from, which split and seed), ``config.yaml`` and
``checkpoints/<model>/last.pt``. :func:`load_run` rebuilds the dataset the run was trained on and the model with
its best (early-stopping) weights::

    model, ds = load_run("runs/mine")                       # MoToRec, in eval mode
    scores = model.score(torch.arange(10))                  # [10, num_items]
    grown = model.with_new_items({"image": f_img, "text": f_txt})   # rank brand-new items too
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from motorec.train.checkpoint import CheckpointError, load_checkpoint

__all__ = ["load_run", "load_trained", "read_run_info"]


def read_run_info(run: str | Path) -> Dict[str, Any]:
    """``run.json`` of a run directory: ``{"data", "dataset", "split", "data_seed", "dataset_fingerprint",
    "models"}`` (``data`` is ``None`` for the bundled MovieLens-100k). Raises CheckpointError when ``run`` is
    not a run directory."""
    run = Path(run)
    if not (run / "run.json").is_file() or not (run / "config.yaml").is_file():
        raise CheckpointError(f"{str(run)!r} is not a motorec run directory (no run.json / config.yaml)")
    return json.loads((run / "run.json").read_text())


def load_trained(run: str | Path, name: str, dataset, device: str = "cpu"):
    """Model ``name`` of a run, built for ``dataset`` (which must be the data and split it was trained on) with
    its best (early-stopping) weights, in eval mode. Returns ``(model, config)``."""
    from motorec.config import Config
    from motorec.models import build_model
    from motorec.train.trainer import resolve_device

    run = Path(run)
    dev = resolve_device(device)
    state = load_checkpoint(run / "checkpoints" / name / "last.pt", map_location=dev)
    if state.get("dataset_fingerprint") != dataset.fingerprint():
        raise CheckpointError(f"the {name} checkpoint of {str(run)!r} was trained on other data or another split")
    cfg = Config.from_dict(state["config"])
    model = build_model(dataset.to(dev), cfg.model, backend=cfg.train.backend, device=str(dev))
    snap = state["best_state"] or {"model": state["model"]}
    model.load_state_dict(snap["model"])
    model.eval()
    return model, cfg


def load_run(run: str | Path, model: str = "motorec", *, data: Optional[str | Path] = None,
             device: str = "cpu") -> Tuple[Any, Any]:
    """``(trained model, dataset)`` of a run directory written by ``motorec train``.

    Args:
        run: the run directory.
        model: which of its models (``motorec``, ``lightgcn``, ``content``, ``lightgcn_content``).
        data: the MMRec folder, when it has moved since training (default: the path in ``run.json``; the
            bundled MovieLens-100k for runs trained on it).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
    """
    from motorec import data as mdata

    info = read_run_info(run)
    folder = data if data is not None else info["data"]
    if folder is None:
        ds = mdata.load_movielens100k(split=info["split"], seed=info["data_seed"])
    else:
        if not Path(folder).is_dir():
            raise mdata.DataError(f"the run's data folder {str(folder)!r} does not exist (pass data=...)")
        ds = mdata.load_mmrec(folder, split=info["split"], seed=info["data_seed"])
    trained, _ = load_trained(run, model, ds, device)
    return trained, ds
