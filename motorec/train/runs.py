"""A run directory: the files ``motorec train`` writes and every other command reads, owned by :class:`RunDir`.

A run directory holds ``config.yaml``, ``run.json`` (where the data came from, which split and seed),
``metrics.json``, ``train.log`` and ``checkpoints/<model>/last.pt``. Every file is written atomically
(:func:`motorec.train.checkpoint.atomic_write`): a failed write leaves the previous version and raises
:class:`~motorec.train.checkpoint.WriteError` naming the file and the cause.

:func:`load_run` rebuilds the dataset a run was trained on and a model with its best (early-stopping) weights::

    model, ds = load_run("runs/mine")                       # MoToRec, in eval mode
    scores = model.score(torch.arange(10))                  # [10, num_items]
    grown = model.with_new_items({"image": f_img, "text": f_txt})   # rank brand-new items too
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from motorec.config import Config
from motorec.train.checkpoint import CheckpointError, atomic_write, load_checkpoint
from motorec.train.device import resolve_device

__all__ = ["RunDir", "check_same_config", "load_run", "load_trained", "read_run_info", "run_info"]


def check_same_config(config: Config, saved: Dict[str, Any], what: str, *, fingerprint: Optional[str] = None) -> None:
    """Refuse to continue ``what`` (a checkpoint, a run) written with another configuration: raise
    :class:`CheckpointError` naming the differing settings (``section.key: theirs -> ours``). ``saved`` is the
    stored ``Config.to_dict()``; ``fingerprint`` the stored fingerprint where there is one. Settings that only
    change how long or where a run goes (``train.epochs``, ``train.device``, ...) may differ."""
    diff = config.differences(saved or {})
    if not diff and (fingerprint is None or fingerprint == config.fingerprint()):
        return
    shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
    model = (saved or {}).get("model", {}).get("name")
    raise CheckpointError(f"{what} was written with another configuration (model {model!r}"
                          f"{': ' + shown if shown else ''}); use a fresh --out directory or the same config")


def run_info(dataset, *, data: Optional[str], models, split: str, data_seed: int) -> Dict[str, Any]:
    """What ``run.json`` records of a run on ``dataset``: ``data`` (the absolute MMRec folder, the synthetic spec,
    or ``None`` for the bundled MovieLens-100k) and the dataset's name, ``split``, ``data_seed``, fingerprint,
    the ``models`` trained, and ``text_encoder`` (the versions of the libraries that encoded its text features,
    from ``dataset.info``; ``None`` where the loader encoded none)."""
    return {"data": data, "dataset": dataset.name, "split": split, "data_seed": data_seed,
            "dataset_fingerprint": dataset.fingerprint(), "models": list(models),
            "text_encoder": dataset.info.get("text_encoder")}


class RunDir:
    """The files of one run.

    ``RunDir(path)`` only names the directory; :meth:`prepare` creates it for training (or checks that a run to
    resume was made with the same configuration); :meth:`read_info`, :meth:`load_trained` read a finished one.

    Args:
        path: the run directory.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------------ file names
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def info_path(self) -> Path:
        return self.path / "run.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.json"

    @property
    def log_path(self) -> Path:
        return self.path / "train.log"

    def checkpoint_dir(self, model: str) -> Path:
        return self.path / "checkpoints" / model

    def checkpoint(self, model: str) -> Path:
        return self.checkpoint_dir(model) / "last.pt"

    def has_checkpoint(self, model: str) -> bool:
        return self.checkpoint(model).is_file()

    # ------------------------------------------------------------------ writing
    def prepare(self, config: Config, info: Dict[str, Any], *, resume: bool, write: bool = True) -> None:
        """Create the directory for training ``config``; with ``resume`` first check that a run already here
        was made with the same configuration (:func:`check_same_config`). ``write`` (false on all ranks but
        rank 0 of a distributed run) writes ``config.yaml`` and ``run.json`` (``info``)."""
        if self.path.exists() and not self.path.is_dir():
            raise CheckpointError(f"--out {str(self.path)!r} exists and is not a directory")
        if resume and self.config_path.is_file():
            check_same_config(config, Config.load(self.config_path).to_dict(), f"run {str(self.path)!r}")
        if write:
            atomic_write(self.config_path, lambda f: f.write(config.to_yaml().encode()))
            self.write_json(self.info_path, info)

    def write_json(self, path: Path, obj: Any) -> None:
        atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=False).encode()))

    def read_metrics(self) -> Dict[str, Any]:
        """``metrics.json`` (empty when there is none yet)."""
        return json.loads(self.metrics_path.read_text()) if self.metrics_path.is_file() else {}

    def write_metrics(self, metrics: Dict[str, Any]) -> None:
        self.write_json(self.metrics_path, metrics)

    # ------------------------------------------------------------------ reading
    def read_info(self) -> Dict[str, Any]:
        """``run.json`` (:func:`run_info`): ``{"data", "dataset", "split", "data_seed", "dataset_fingerprint",
        "models", "text_encoder"}`` (``data`` is ``None`` for the bundled MovieLens-100k; runs written before
        ``text_encoder`` existed lack it). Raises CheckpointError when this is not a run directory."""
        if not self.info_path.is_file() or not self.config_path.is_file():
            raise CheckpointError(f"{str(self.path)!r} is not a motorec run directory (no run.json / config.yaml)")
        return json.loads(self.info_path.read_text())

    def trained_models(self) -> list:
        """The models of ``run.json`` that have a checkpoint, in training order."""
        return [n for n in self.read_info()["models"] if self.has_checkpoint(n)]

    def load_trained(self, name: str, dataset, device: str = "cpu"):
        """Model ``name`` built for ``dataset`` (the data and split it was trained on) with its best
        (early-stopping) weights, in eval mode. Returns ``(model, config)``."""
        from motorec.models import build_model

        dev = resolve_device(device)
        state = load_checkpoint(self.checkpoint(name), map_location=dev)
        if state.get("dataset_fingerprint") != dataset.fingerprint():
            raise CheckpointError(f"the {name} checkpoint of {str(self.path)!r} was trained on other data or another "
                                  "split")
        cfg = Config.from_dict(state["config"])
        model = build_model(dataset.to(dev), cfg.settings(), wrappers=cfg.wrappers, backend=cfg.train.backend,
                            propagation=cfg.train.propagation, fanout=cfg.train.fanout,
                            device=str(dev))
        model.load_state_dict(state["best_state"] or state["model"])
        model.eval()
        return model, cfg

    def load_dataset(self, data: Optional[str | Path] = None):
        """The dataset the run was trained on: ``data`` (an MMRec folder or a synthetic spec), else what
        ``run.json`` names, else the bundled MovieLens-100k; with the run's split and split seed."""
        from motorec import data as mdata

        info = self.read_info()
        folder = data if data is not None else info["data"]
        if folder is None:
            return mdata.load_movielens100k(split=info["split"], seed=info["data_seed"])
        if mdata.parse_synthetic_spec(str(folder)) is not None:
            return mdata.load_synthetic_spec(str(folder), split=info["split"], seed=info["data_seed"])
        if not Path(folder).is_dir():
            raise mdata.DataError(f"the run's data folder {str(folder)!r} does not exist (pass data=...)")
        return mdata.load_mmrec(folder, split=info["split"], seed=info["data_seed"])


def read_run_info(run: str | Path) -> Dict[str, Any]:
    """``run.json`` of a run directory (:meth:`RunDir.read_info`)."""
    return RunDir(run).read_info()


def load_trained(run: str | Path, name: str, dataset, device: str = "cpu"):
    """Model ``name`` of a run, built for ``dataset``, with its best weights (:meth:`RunDir.load_trained`)."""
    return RunDir(run).load_trained(name, dataset, device)


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
    rd = RunDir(run)
    ds = rd.load_dataset(data)
    trained, _ = rd.load_trained(model, ds, device)
    return trained, ds
