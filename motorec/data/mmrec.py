"""Loader for MMRec-format dataset folders (Amazon Baby / Sports / Clothing as distributed by MMRec).

A folder holds:

* ``<name>.inter``: tab-separated text with a header line; columns ``userID``, ``itemID`` and ``x_label``
  (0 train, 1 valid, 2 test); other columns (ratings, timestamps) are ignored. Ids are non-negative integers.
* one or more ``<modality>_feat.npy``: a 2-D numeric array, row ``k`` = item ``k`` (``image_feat.npy`` ->
  modality ``"image"``, ``text_feat.npy`` -> ``"text"``). All files must have the same number of rows.

Every problem raises :class:`~motorec.data.DataError` with one line naming the file, column and value.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from motorec.data.dataset import SPLITS, DataError, Dataset
from motorec.data.split import cold_start_split, warm_split

__all__ = ["load_mmrec", "read_inter", "read_features"]

USER_COL, ITEM_COL, LABEL_COL = "userID", "itemID", "x_label"


def _to_int(values: List[str], path: Path, column: str) -> np.ndarray:
    try:
        return np.array(values).astype(np.int64)
    except (ValueError, OverflowError):
        for row, v in enumerate(values):
            try:
                int(v)
            except (ValueError, OverflowError):
                raise DataError(f"{path}: column {column!r} has a non-integer value {v!r} "
                                f"(data row {row + 1}, line {row + 2})") from None
        raise DataError(f"{path}: column {column!r} could not be read as integers") from None


def read_inter(path, *, require_label: bool = True) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Read an MMRec ``.inter`` file with plain string splitting and numpy (no pandas).

    Returns ``(users, items, labels)`` as int64 arrays; ``labels`` is ``None`` when the file has no
    ``x_label`` column and ``require_label`` is false. Checks: header present, required columns present,
    every row has enough fields, integer non-negative ids, labels in {0, 1, 2}, at least one row.

    Shapes:
        -> users [E], items [E], labels [E] or None
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataError(f"{path}: empty file (expected a tab-separated header with {USER_COL}, {ITEM_COL}, {LABEL_COL})")
    header = [h.strip() for h in lines[0].split("\t")]
    need = [USER_COL, ITEM_COL] + ([LABEL_COL] if require_label or LABEL_COL in header else [])
    missing = [c for c in need if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(map(repr, missing))} in header {header} "
                        f"(the header must be tab-separated)")
    idx = {c: header.index(c) for c in need}
    body = lines[1:]
    if not body:
        raise DataError(f"{path}: no interactions after the header")
    rows = [line.split("\t") for line in body]
    width = max(idx.values()) + 1
    short = [k for k, r in enumerate(rows) if len(r) < width] if min(map(len, rows)) < width else []
    if short:
        k = short[0]
        raise DataError(f"{path}: line {k + 2} has {len(rows[k])} tab-separated field(s), expected {len(header)}")
    cols = {c: _to_int([r[i] for r in rows], path, c) for c, i in idx.items()}
    for c in (USER_COL, ITEM_COL):
        neg = np.flatnonzero(cols[c] < 0)
        if neg.size:
            raise DataError(f"{path}: column {c!r} has a negative id {int(cols[c][neg[0]])} (line {neg[0] + 2})")
    labels = cols.get(LABEL_COL)
    if labels is not None:
        bad = np.flatnonzero((labels < 0) | (labels > 2))
        if bad.size:
            raise DataError(f"{path}: column {LABEL_COL!r} has value {int(labels[bad[0]])} (line {bad[0] + 2}); "
                            f"expected 0 (train), 1 (valid) or 2 (test)")
    return cols[USER_COL], cols[ITEM_COL], labels


def read_features(folder) -> Dict[str, torch.Tensor]:
    """Load every ``*_feat.npy`` in ``folder`` as float32, sorted by modality name.

    Checks: at least one file, readable without pickle, 2-D numeric with at least one column, equal row
    counts, all values finite.

    Shapes:
        -> {modality: [num_items, d_m] float32}
    """
    folder = Path(folder)
    files = sorted(folder.glob("*_feat.npy"))
    if not files:
        raise DataError(f"{folder}: no feature files (expected one or more <modality>_feat.npy, "
                        f"e.g. image_feat.npy, text_feat.npy)")
    feats: Dict[str, torch.Tensor] = {}
    rows_of: Dict[str, int] = {}
    for f in files:
        name = f.name[: -len("_feat.npy")]
        if not name:
            raise DataError(f"{f}: feature file name has no modality before '_feat.npy'")
        try:
            arr = np.load(f, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{f}: cannot read as a .npy array ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        if not isinstance(arr, np.ndarray) or arr.ndim != 2:
            raise DataError(f"{f}: expected a 2-D array [num_items, dim], got shape {getattr(arr, 'shape', None)}")
        if arr.dtype.kind not in "fiu":
            raise DataError(f"{f}: expected numeric features, got dtype {arr.dtype}")
        if arr.shape[1] == 0:
            raise DataError(f"{f}: feature dimension is 0 (shape {arr.shape})")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        finite = np.isfinite(arr)
        if not finite.all():
            r, c = np.argwhere(~finite)[0]
            raise DataError(f"{f}: non-finite value {arr[r, c]} at row {r}, column {c}")
        feats[name] = torch.from_numpy(arr)
        rows_of[f.name] = arr.shape[0]
    if len(set(rows_of.values())) > 1:
        desc = ", ".join(f"{k}: {v}" for k, v in rows_of.items())
        raise DataError(f"{folder}: feature files have different row counts ({desc}); row k must be item k in all")
    return feats


def _find_inter(folder: Path) -> Path:
    inters = sorted(p for p in folder.glob("*.inter") if p.is_file())
    if not inters:
        raise DataError(f"{folder}: no .inter file (expected <name>.inter with columns {USER_COL}, {ITEM_COL}, {LABEL_COL})")
    if len(inters) == 1:
        return inters[0]
    preferred = folder / f"{folder.name}.inter"
    if preferred in inters:
        return preferred
    raise DataError(f"{folder}: several .inter files ({', '.join(p.name for p in inters)}); "
                    f"keep one, or name it {folder.name}.inter")


def load_mmrec(folder, *, split: str = "cold", seed: int = 0, cold_ratio: float = 0.2) -> Dataset:
    """Load an MMRec-format folder into a validated :class:`Dataset`.

    Args:
        folder: the dataset folder (see the module docstring for its contents).
        split: ``"cold"`` (default): strict item cold-start split drawn afresh by
            :func:`~motorec.data.split.cold_start_split` (``cold_ratio`` of the items held out, half valid,
            half test, seeded); the file's ``x_label`` is ignored (but still validated when present, and the
            column is optional). ``"warm"``: the file's ``x_label`` (required) gives train/valid/test, via
            :func:`~motorec.data.split.warm_split`.
        seed, cold_ratio: for the cold split.

    ``num_users = max userID + 1``; ``num_items`` = number of feature rows (items without interactions are
    allowed: they are cold by construction). Repeated (user, item) pairs count once.

    Shapes:
        -> Dataset with train/valid/test [E, 2] int64 and features {modality: [num_items, d] float32}
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if folder is None or not str(folder):
        raise DataError("no data folder given")
    folder = Path(os.path.expanduser(str(folder)))
    if not folder.exists():
        raise DataError(f"data folder not found: {folder}")
    if not folder.is_dir():
        raise DataError(f"data path is not a folder: {folder}")
    inter = _find_inter(folder)
    feats = read_features(folder)
    users, items, labels = read_inter(inter, require_label=(split == "warm"))
    num_items = next(iter(feats.values())).shape[0]
    over = np.flatnonzero(items >= num_items)
    if over.size:
        raise DataError(f"{inter}: column {ITEM_COL!r} has id {int(items[over[0]])} (line {over[0] + 2}) but the "
                        f"feature files have only {num_items} rows (ids must be < {num_items})")
    num_users = int(users.max()) + 1
    pairs = torch.from_numpy(np.stack([users, items], axis=1))
    if split == "cold":
        res = cold_start_split(pairs, num_users, num_items, cold_ratio=cold_ratio, seed=seed)
    else:
        res = warm_split(pairs, torch.from_numpy(labels), num_users, num_items)
    info = dict(res.info, source=str(folder))
    return Dataset(num_users=num_users, num_items=num_items, train=res.train, valid=res.valid, test=res.test,
                   features=feats, name=inter.stem, split=split, cold_valid_items=res.cold_valid_items,
                   cold_test_items=res.cold_test_items, info=info)
