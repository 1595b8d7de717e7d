"""Write a small synthetic dataset as an MMRec folder, for tests that drive ``motorec train`` in a subprocess."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def write_mmrec(folder: Path, *, num_users: int = 120, num_items: int = 80, num_interactions: int = 1500,
                seed: int = 1) -> Path:
    """``folder/synth.inter`` (x_label 0/1/2 from a warm split) and ``image_feat.npy`` / ``text_feat.npy``."""
    from motorec.data import synthetic

    ds = synthetic(num_users, num_items, num_interactions=num_interactions, modalities={"image": 12, "text": 6},
                   seed=seed, split="warm")
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["userID\titemID\tx_label"]
    for label, pairs in enumerate((ds.train, ds.valid, ds.test)):
        rows += [f"{u}\t{i}\t{label}" for u, i in pairs.tolist()]
    (folder / "synth.inter").write_text("\n".join(rows) + "\n")
    for m, f in ds.features.items():
        np.save(folder / f"{m}_feat.npy", f.numpy())
    return folder


def small_config(path: Path, **overrides) -> Path:
    """A YAML config for a fast run (tiny model, small batches); ``overrides`` are nested section dicts (MoToRec's own
    keys under ``motorec``)."""
    import yaml

    cfg = {"model": {"dim": 16},
           "motorec": {"latent_dim": 8, "hidden_dims": [16], "num_levels": 2, "codebook_size": 8, "knn_k": 4},
           "train": {"epochs": 3, "pretrain_epochs": 0, "batch_size": 64, "lr": 0.01, "patience": 0, "seed": 0}}
    for sec, vals in overrides.items():
        cfg.setdefault(sec, {}).update(vals)
    path.write_text(yaml.safe_dump(cfg))
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env() -> dict:
    import os

    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("MOTOREC_DEBUG", None)
    return env


def load_model_state(ckpt: Path) -> dict:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    return state["model"]
