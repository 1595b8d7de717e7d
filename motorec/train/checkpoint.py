"""Atomic checkpoints that load with ``torch.load(weights_only=True)``.

A checkpoint (like every file of a run, :func:`atomic_write`) is written to a temporary file in the target's
directory, flushed and ``fsync``-ed, then moved over the target with ``os.replace`` (atomic on POSIX and
Windows), and the directory is fsync-ed: a crash leaves either the old file or the new one, never a torn one.
A write that fails (a full disk, no permission) removes the temporary file and raises :class:`WriteError`
naming the file and the cause. Everything stored is a tensor, a number, a string, or a list/dict of those, so
no pickle code runs on load.
"""
from __future__ import annotations

import contextlib
import os
import random
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Dict, Optional

import numpy as np
import torch

__all__ = ["CheckpointError", "WriteError", "atomic_write", "save_checkpoint", "load_checkpoint", "rng_state",
           "set_rng_state", "FORMAT_VERSION"]

# 2: the model's whole state is state["model"] (kNN graphs and the like through get_extra_state), with the
#    parameter names of the composed models. Version 1 kept a separate "extra" dict and other names.
FORMAT_VERSION = 2
_WHY_REFUSED = {1: "written before model state moved into one state_dict with the composed models' names; "
                   "retrain, or read it with a motorec from before that change"}


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, of another format, or from another config/dataset."""


class WriteError(Exception):
    """A file of a run could not be written; the message names the file and the cause (e.g. ``cannot write
    runs/x/metrics.json: No space left on device``). The file's previous content, if any, is intact."""


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """``write(f)`` into a temporary file beside ``path``, then fsync and ``os.replace`` it over ``path``.

    On failure the temporary file is removed and an error that comes from the operating system (however deep
    in the exception chain: ``torch.save`` wraps it in a RuntimeError) is raised as :class:`WriteError`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        cause = _os_error(e)
        if cause is None:
            raise
        raise WriteError(f"cannot write {path}: {cause.strerror or cause}") from e
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # directories cannot be opened on some platforms (Windows)
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _os_error(e: Optional[BaseException]) -> Optional[OSError]:
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def save_checkpoint(state: Dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically (:func:`atomic_write`)."""
    state = dict(state, format_version=FORMAT_VERSION)
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location="cpu") -> Dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; raise :class:`CheckpointError` with a clear message for a
    missing, truncated, foreign or wrong-version file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, wrong magic, unpickling refused
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {str(path)!r} is damaged or not a motorec checkpoint "
                              f"({type(e).__name__}: {msg[:200]})") from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a motorec checkpoint (no format_version)")
    if state["format_version"] != FORMAT_VERSION:
        why = _WHY_REFUSED.get(state["format_version"])
        raise CheckpointError(f"checkpoint {str(path)!r} has format version {state['format_version']}, "
                              f"this motorec reads version {FORMAT_VERSION}" + (f" ({why})" if why else ""))
    return state


def rng_state(generator: torch.Generator | None = None) -> Dict[str, Any]:
    """The state of every random number generator a run uses, as weights-only-loadable values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    st: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(np_state[0]), "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_state[0]), "state": list(py_state[1]),
                   "gauss_next": py_state[2] if py_state[2] is None else float(py_state[2])},
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        st["generator"] = generator.get_state()
    return st


def set_rng_state(st: Dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(st["torch"].cpu())
    n = st["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = st["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in st["cuda"]])
    if generator is not None and "generator" in st:
        generator.set_state(st["generator"].cpu())
