"""Use a finished run: evaluate its checkpoints (:func:`evaluate_run`), write MoToRec's semantic IDs
(:func:`tokenize`), and write each user's top-K items, brand-new items included (:func:`recommend`).

Each takes a run directory written by :func:`motorec.experiments.train_models` (or ``motorec train``) and reads
it through :class:`motorec.train.RunDir`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from motorec.experiments.errors import ArgumentError
from motorec.experiments.training import load_data
from motorec.models import unwrap
from motorec.train import CheckpointError, RunDir, atomic_write, resolve_device

__all__ = ["open_run", "evaluate_run", "tokenize", "Tokens", "recommend", "Recommendations"]


def open_run(run: str | Path | RunDir) -> RunDir:
    """The :class:`~motorec.train.RunDir` of ``run``; raises CheckpointError when it is not a run directory."""
    rd = run if isinstance(run, RunDir) else RunDir(run)
    rd.read_info()
    return rd


def _trained(rd: RunDir, model: str) -> None:
    if not rd.has_checkpoint(model):
        raise CheckpointError(f"{str(rd.path)!r} has no trained {model} model (checkpoints/{model}/last.pt)")


def evaluate_run(run: str | Path | RunDir, *, models: Optional[Sequence[str]] = None,
                 data: Optional[str | Path] = None, device: str = "cpu") -> Dict[str, Dict[str, Any]]:
    """Re-evaluate the best (early-stopping) checkpoint of each model of a run.

    Args:
        run: the run directory.
        models: which models (default: every model of the run that has a checkpoint).
        data: evaluate on this MMRec folder or synthetic spec instead of the run's data (same split and seed).
        device: ``cpu``, ``cuda`` or ``cuda:N``.

    Returns:
        ``{model: {"valid"|"test": {setting: {metric: value}}}}``, shaped as the run's ``metrics.json``.
    """
    from motorec.eval import evaluate

    rd = open_run(run)
    info = rd.read_info()
    dev = resolve_device(device)
    ds = load_data(data if data is not None else info["data"], info["split"], info["data_seed"])
    names = list(models) if models else rd.trained_models()
    if not names:
        raise CheckpointError(f"{str(rd.path)!r} has no checkpoints")
    out: Dict[str, Any] = {}
    for name in names:
        model, cfg = rd.load_trained(name, ds, device)
        out[name] = {s: {g: {k: v if isinstance(v, int) else float(v) for k, v in m.items()} for g, m in
                         evaluate(model.score, ds.to(dev), split=s, batch_size=cfg.train.eval_batch_size,
                                  device=dev).items()} for s in ("valid", "test")}
    return out


@dataclass
class Tokens:
    """Each item's semantic IDs: ``codes[modality]`` is ``[num_items, levels]`` int64; ``paths`` the files
    written."""

    codes: Dict[str, Any]
    paths: List[Path]

    @property
    def num_items(self) -> int:
        return next(iter(self.codes.values())).shape[0] if self.codes else 0


def tokenize(run: str | Path | RunDir, *, output: Optional[str | Path] = None, device: str = "cpu") -> Tokens:
    """Write the semantic IDs (codes) of every item of a run's trained MoToRec.

    Args:
        run: a run directory with a trained ``motorec`` model (not ``model.continuous``).
        output: a ``.tsv`` (one row per item: ``itemID`` and per modality its codes joined by ``-``) or ``.npy``
            file (``[num_items, sum of levels]`` int64, modalities in order); default both, as
            ``RUN/tokens.tsv`` and ``RUN/tokens.npy``.
        device: ``cpu``, ``cuda`` or ``cuda:N``.

    Returns:
        :class:`Tokens`.
    """
    import numpy as np

    rd = open_run(run)
    _trained(rd, "motorec")
    if output is not None and Path(output).suffix not in (".tsv", ".npy"):
        raise ArgumentError(f"`output` must end in .tsv or .npy, got {Path(output).name!r}")
    ds = rd.load_dataset()
    model, cfg = rd.load_trained("motorec", ds, device)
    if cfg.settings().continuous:
        raise ArgumentError("this MoToRec was trained with motorec.continuous=true: it has no tokens")
    tokens = {m: c.cpu().numpy() for m, c in unwrap(model).tokenize().items()}  # the model inside any wrapper
    mods = list(tokens)
    table = np.concatenate([tokens[m] for m in mods], axis=1) if mods else np.zeros((ds.num_items, 0), np.int64)
    targets = [Path(output)] if output is not None else [rd.path / "tokens.tsv", rd.path / "tokens.npy"]
    for t in targets:
        if t.suffix == ".npy":
            atomic_write(t, lambda f: np.save(f, table))
        else:
            lines = ["itemID\t" + "\t".join(mods)] + [
                str(i) + "\t" + "\t".join("-".join(map(str, tokens[m][i])) for m in mods) for i in range(table.shape[0])]
            atomic_write(t, lambda f: f.write(("\n".join(lines) + "\n").encode()))
    return Tokens(tokens, targets)


@dataclass
class Recommendations:
    """What :func:`recommend` wrote: ``path``, ``k`` items per user for ``num_users`` users, out of
    ``num_items`` items of which ``new_items`` are new (ids ``catalog_items ..``)."""

    path: Path
    k: int
    num_users: int
    num_items: int
    catalog_items: int
    new_items: int


def recommend(run: str | Path | RunDir, *, model: str = "motorec",
              new_items: Optional[str | Path | Mapping[str, Any]] = None, top_k: int = 20,
              users: Optional[Sequence[int]] = None, output: Optional[str | Path] = None,
              device: str = "cpu") -> Recommendations:
    """Write each user's top-K items over the run's catalog (and ``new_items``) as a TSV
    (``userID, rank, itemID, score, kind``; kind ``cold``, ``warm`` or ``new``). Every item a user is known to
    have interacted with in the run's data (train, valid and test) is left out of that user's list.

    Args:
        run: the run directory.
        model: which trained model.
        new_items: brand-new items from their features alone (MoToRec only): a folder of ``<modality>_feat.npy``
            files or ``{modality: [N, width] array}``, one per trained modality; new item k gets id
            ``num_items + k``.
        top_k: items per user (>= 1; at most the catalog).
        users: user ids (default: every user).
        output: a ``.tsv`` file (default ``RUN/recommendations.tsv``).
        device: ``cpu``, ``cuda`` or ``cuda:N``.

    Returns:
        :class:`Recommendations`.
    """
    import torch

    from motorec.data.mmrec import read_features
    from motorec.eval.metrics import mask_pairs_, pairs_csr

    rd = open_run(run)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ArgumentError(f"`top_k` must be >= 1, got {top_k}")
    _trained(rd, model)
    outp = Path(output) if output is not None else rd.path / "recommendations.tsv"
    if outp.suffix != ".tsv":
        raise ArgumentError(f"`output` must end in .tsv, got {outp.name!r}")
    ds = rd.load_dataset()
    if users is None:
        user_ids = torch.arange(ds.num_users)
    else:
        ids = [int(u) for u in users]
        if not ids:
            raise ArgumentError("`users` names no user")
        bad = [u for u in ids if not 0 <= u < ds.num_users]
        if bad:
            raise ArgumentError(f"`users`: id(s) {bad[:5]} outside the run's users 0..{ds.num_users - 1}")
        user_ids = torch.tensor(list(dict.fromkeys(ids)))
    scorer, cfg = rd.load_trained(model, ds, device)
    n_new = 0
    if new_items is not None:
        if model != "motorec":
            raise ArgumentError(f"`new_items` needs `model` motorec (the {model} model cannot embed items it was "
                                "not built with)")
        if not isinstance(new_items, Mapping):
            if not Path(new_items).is_dir():
                raise ArgumentError(f"`new_items` {str(new_items)!r} is not a directory of <modality>_feat.npy files")
            feats = read_features(new_items)
        else:
            feats = {m: torch.as_tensor(f) for m, f in new_items.items()}
        try:  # the model validates the features (modalities, widths, values)
            scorer = scorer.with_new_items(feats)
        except ValueError as e:
            raise ArgumentError(f"`new_items` {_name(new_items)}: {e}") from None
        n_new = scorer.num_items - ds.num_items
    dev = resolve_device(device)
    k = min(top_k, scorer.num_items)
    # every item a user already has in the run's data (catalog ids only, so new items are never masked)
    _, k_rowptr, k_items = pairs_csr([ds.train, ds.valid, ds.test], ds.num_users, ds.num_items, dev)
    kinds = ["cold", "warm", "new"]
    kind_of = scorer.warm_mask.long().cpu()
    kind_of[ds.num_items:] = 2
    kind_of = kind_of.tolist()
    bs = max(1, cfg.train.eval_batch_size)

    def write(fh) -> None:
        fh.write(b"userID\trank\titemID\tscore\tkind\n")
        for start in range(0, user_ids.numel(), bs):
            ub = user_ids[start:start + bs].to(dev)
            s = mask_pairs_(scorer.score(ub).float(), ub, k_rowptr, k_items)
            top = s.topk(k, dim=1)
            lines = []
            for u, idx, vals in zip(ub.tolist(), top.indices.tolist(), top.values.tolist()):  # one copy per batch
                for rank, (i, v) in enumerate(zip(idx, vals), 1):
                    if v == float("-inf"):
                        break  # the user already has every remaining item
                    lines.append(f"{u}\t{rank}\t{i}\t{v:.6g}\t{kinds[kind_of[i]]}\n")
            fh.write("".join(lines).encode())

    with torch.no_grad():
        atomic_write(outp, write)
    return Recommendations(outp, k, int(user_ids.numel()), scorer.num_items, ds.num_items, n_new)


def _name(new_items) -> str:
    return repr(str(new_items)) if not isinstance(new_items, Mapping) else f"(modalities {sorted(new_items)})"
