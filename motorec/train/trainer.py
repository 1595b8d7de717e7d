"""The training loop: tokenizer pre-training, joint training, early stopping, checkpoints, resume.

Epochs are counted over both stages: epochs ``0 .. pretrain_epochs - 1`` pre-train the tokenizer (models
with one), the next ``epochs`` train everything jointly with BPR batches. After each epoch a checkpoint
(model, optimizer, every RNG, early-stopping state, config, dataset fingerprint) is written atomically to
``<checkpoint_dir>/last.pt``; ``resume=True`` continues from it and gives the same result as an
uninterrupted run with the same seed.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from motorec.config import Config, ConfigError
from motorec.eval.metrics import mean_of_means_se, mean_se, sample_users
from motorec.models import Recommender, build_model
from motorec.train import distributed as _dist
from motorec.train.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from motorec.train.device import resolve_device
from motorec.train.runs import check_same_config
from motorec.train.sampler import BPRSampler

__all__ = ["Trainer", "seed_everything", "resolve_device", "select_score", "select_score_se", "make_optimizer",
           "peak_memory_mb", "autocast_context"]

SELECT_METRIC = "recall@20"


def select_score(valid: Dict[str, Dict[str, float]], rule: str) -> float:
    """The number checkpoint selection maximizes (``train.select``) from :func:`motorec.eval.evaluate`'s
    validation result: ``"warm_cold_mean"`` = the mean of the ``warm`` and ``cold`` settings' Recall@20, or one
    setting's Recall@20. A setting without validation users is left out of the mean (a warm split has no cold
    items); a single setting without any falls back to ``hybrid``."""
    if rule == "warm_cold_mean":
        parts = [valid[st][SELECT_METRIC] for st in ("warm", "cold") if valid[st].get("num_users")]
        return sum(parts) / len(parts) if parts else valid["hybrid"][SELECT_METRIC]
    return valid[rule if valid[rule].get("num_users") else "hybrid"][SELECT_METRIC]


def select_score_se(per_user: Dict[str, Dict[str, torch.Tensor]], rule: str) -> float:
    """The standard error of :func:`select_score` over the validation users, from :func:`motorec.eval.evaluate`'s
    ``per_user`` values (the same settings and fallbacks as :func:`select_score`): a setting's Recall@20 has
    :func:`~motorec.eval.metrics.mean_se`; the warm/cold mean :func:`~motorec.eval.metrics.mean_of_means_se`
    (a user with warm and cold held-out items is in both means). NaN with fewer than two users."""
    def has(st: str) -> bool:
        return per_user[st]["users"].numel() > 0

    if rule == "warm_cold_mean":
        parts = [per_user[st] for st in ("warm", "cold") if has(st)]
        if len(parts) == 2:
            (w, c) = parts
            return mean_of_means_se(w["users"], w[SELECT_METRIC], c["users"], c[SELECT_METRIC])
        return mean_se((parts[0] if parts else per_user["hybrid"])[SELECT_METRIC])
    return mean_se(per_user[rule if has(rule) else "hybrid"][SELECT_METRIC])


def peak_memory_mb(device: Optional[torch.device] = None) -> Dict[str, float]:
    """``{"peak_rss_mb": the process's peak resident memory so far}``, plus ``"peak_cuda_mb"`` (the peak of
    ``torch.cuda.max_memory_allocated``) when ``device`` is a CUDA device; MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    out = {"peak_rss_mb": rss / 2**20 if sys.platform == "darwin" else rss / 1024}
    if device is not None and device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _now(device: torch.device) -> float:
    """A stage boundary's clock: waits for the device's queued work first (once per stage, not per step)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The training steps' forward context for ``train.precision``: ``torch.autocast`` to bfloat16 for ``bf16``
    (the backward and the optimizer run outside it, in the parameters' float32), nothing for ``fp32``."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(model: torch.nn.Module, *, lr: float, weight_decay: float = 0.0):
    """Adam over ``model``'s parameters, as one fused kernel (``fused=True``) where torch has it for every
    parameter's device and dtype (CPU and CUDA floating point): the same update rule as the per-parameter loop,
    about a fifth of its time on a CPU for MoToRec's ~30 small parameter tensors (the loop is ~260 ops a step,
    the fused form a few). Elsewhere (or for non-float parameters) the default implementation.

    The parameters a model trains with sparse row gradients (:meth:`Recommender.sparse_parameters`: the ID
    tables under ``train.propagation: history``) go to :class:`RowSparseAdam` instead (torch's SparseAdam,
    lazy Adam: a row's moments and value move only in the steps whose batch reaches it), in a
    :class:`SparseDenseAdam`:
    a step then costs the batch's rows, not the tables'."""
    sparse = {id(p): p for m in model.modules() if isinstance(m, Recommender) for p in m.sparse_parameters()}
    params = [p for p in model.parameters() if id(p) not in sparse]
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    if not sparse:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    if weight_decay:
        raise ConfigError(f"train.weight_decay must be 0 with train.propagation: history (its ID tables train "
                          f"with SparseAdam, which has no weight decay; model.lambda_reg is the L2), got {weight_decay}")
    dense = torch.optim.Adam(params, lr=lr, fused=fused or None) if params else None
    return SparseDenseAdam(dense, RowSparseAdam(list(sparse.values()), lr=lr))


class RowSparseAdam(torch.optim.SparseAdam):
    """``torch.optim.SparseAdam`` (lazy Adam: the moments and values of the rows in a step's sparse gradient
    move, the others stay) with the same update and state, computed with one sort per parameter (the gradient's
    coalesce) and row gathers/scatters on its rows: torch's goes through ``sparse_mask`` and sparse additions,
    several sorts of the gradient's rows per step."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, sign = float(group["lr"]), group["eps"], -1.0 if group.get("maximize", False) else 1.0
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise RuntimeError("RowSparseAdam takes sparse gradients only (a dense one reached a parameter "
                                       "of Recommender.sparse_parameters())")
                grad = p.grad.coalesce()
                rows, g = grad.indices()[0], grad.values()
                if g.shape[0] == 0:
                    continue
                g = g.reshape(g.shape[0], -1) * sign
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                m_all, v_all = state["exp_avg"].view(p.shape[0], -1), state["exp_avg_sq"].view(p.shape[0], -1)
                m = m_all.index_select(0, rows).lerp_(g, 1 - beta1)
                v = v_all.index_select(0, rows).mul_(beta2).addcmul_(g, g, value=1 - beta2)
                m_all.index_copy_(0, rows, m)
                v_all.index_copy_(0, rows, v)
                step_size = lr * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
                p.view(p.shape[0], -1).index_add_(0, rows, m.div_(v.sqrt_().add_(eps)), alpha=-step_size)
        return loss


class SparseDenseAdam:
    """Two optimizers stepped as one: ``dense`` (Adam; ``None`` when every parameter is sparse) and ``sparse``
    (:class:`RowSparseAdam`, for the parameters with sparse gradients); what the trainer calls of an optimizer
    (``zero_grad``, ``step``, ``state_dict``, ``load_state_dict``, ``param_groups``)."""

    def __init__(self, dense: Optional[torch.optim.Optimizer], sparse: torch.optim.Optimizer) -> None:
        self.dense, self.sparse = dense, sparse
        self._parts = [o for o in (dense, sparse) if o is not None]

    @property
    def param_groups(self) -> List[Dict[str, Any]]:
        return [g for o in self._parts for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self._parts:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self._parts:
            o.step()

    def state_dict(self) -> Dict[str, Any]:
        return {"dense": None if self.dense is None else self.dense.state_dict(), "sparse": self.sparse.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if set(state) != {"dense", "sparse"}:
            raise ValueError("the optimizer state is not a SparseDenseAdam's (the checkpoint was written with another "
                             "train.propagation)")
        if (state["dense"] is None) != (self.dense is None):
            raise ValueError("the optimizer state does not match this model's dense parameters")
        if self.dense is not None:
            self.dense.load_state_dict(state["dense"])
        self.sparse.load_state_dict(state["sparse"])


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and Python's ``random``."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _progress(iterable, *, total: int, desc: str, quiet: bool):
    disable = quiet or not sys.stderr.isatty()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, disable=disable, dynamic_ncols=True)


class Trainer:
    """Train one model on one dataset.

    Args:
        config: the full :class:`~motorec.config.Config` (``config.model.name`` picks the model).
        dataset: a :class:`motorec.data.Dataset`.
        checkpoint_dir: where ``last.pt`` goes (``None``: no checkpoints, no resume).
        quiet: no progress bars and no log lines on stderr.
        logger: where epoch lines go (default: the ``motorec`` logger).
        evaluate_fn: ``evaluate(score_fn, dataset, split=..., ...)`` (default :func:`motorec.eval.evaluate`).
        device: the device to train on (default: ``config.train.device``, checked by :func:`resolve_device`).
        dist: the :class:`~motorec.train.distributed.DistContext` of a data-parallel run (``None``: one process);
            ``device`` is then this rank's device.

    :meth:`fit` returns ``{"valid": metrics, "test": metrics, "best_epoch", "epochs_run", "early_stopped",
    "hit_epoch_cap", "seconds_per_epoch", "seconds", "peak_rss_mb", "history"}`` (and ``peak_cuda_mb`` on CUDA;
    :func:`peak_memory_mb`) (``early_stopped`` false: the epoch cap ended training; ``hit_epoch_cap``: it did so
    with ``patience`` > 0, and a warning says the model may be undertrained), with ``metrics[key][metric]`` for
    ``key`` in cold / warm / hybrid / hybrid_warm / hybrid_cold (:func:`motorec.eval.evaluate`). Each evaluated
    ``history`` row also holds ``valid_cold_recall@20``, ``valid_warm_recall@20``, ``valid_hybrid_recall@20``
    and ``select_score``: what ``train.select`` makes of them (:func:`select_score`), which early stopping
    compares, and ``select_score_se``, its standard error over the users ranked (:func:`select_score_se`); all
    from one evaluation pass. With ``train.eval_users`` > 0 these validations rank a fixed sample of that many
    validation users, drawn once from ``train.seed`` (:func:`motorec.eval.metrics.sample_users`); the final
    ``valid`` and ``test`` results rank every user.

    Time and memory per stage, in every row: ``seconds_pretrain`` (a pre-training epoch's steps) or, for joint
    epochs, ``seconds_steps`` (sampling and steps) and ``seconds_epoch_start`` (the model's
    :meth:`~motorec.models.base.Recommender.on_epoch_start`: catalog passes, graph rebuilds; a model may itemize
    them in its ``epoch_log``), ``seconds_valid`` on validated epochs, ``seconds_checkpoint`` with a checkpoint
    directory (the epoch's write; the copy of the row stored in that write lacks it), and the peaks so far
    (:func:`peak_memory_mb`). ``seconds`` in the result sums every ``seconds_*`` key over the rows by stage and
    adds ``final_valid`` and ``test``, the final evaluations.

    Which epoch's weights are kept is the model's selection strategy (``Recommender.selection``: one state at the
    best ``train.select`` score, or, for a model whose parts are scored apart, one state per part); early
    stopping counts the validations in a row in which the strategy kept nothing new, the same for every model.
    ``selected_epochs`` says which epoch each part was selected at (``None`` for a model selected as a whole).
    """

    def __init__(self, config: Config, dataset, *, checkpoint_dir: Optional[str | Path] = None, quiet: bool = False,
                 logger: Optional[logging.Logger] = None, evaluate_fn: Optional[Callable] = None,
                 device: Optional[torch.device] = None, dist: Optional[_dist.DistContext] = None) -> None:
        self.config = config.validate()
        self.dataset = dataset
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.quiet = quiet
        self.log = logger or logging.getLogger("motorec")
        if evaluate_fn is None:
            from motorec.eval import evaluate as evaluate_fn
        self.evaluate_fn = evaluate_fn
        self.dist = dist
        self.device = device if device is not None else _dist.local_device(dist, resolve_device(config.train.device))
        self.model: Optional[Recommender] = None

    @property
    def checkpoint_path(self) -> Optional[Path]:
        return None if self.checkpoint_dir is None else self.checkpoint_dir / "last.pt"

    # ------------------------------------------------------------------ helpers
    def evaluate(self, split: str) -> Dict[str, Dict[str, float]]:
        """Full-ranking metrics of the current model on ``split`` (``valid`` or ``test``) in every setting."""
        assert self.model is not None
        self.model.eval()
        return self._evaluate_scores(self.model.score, split)

    def _evaluate_scores(self, score_fn: Callable, split: str, *, users: Optional[torch.Tensor] = None,
                         per_user: bool = False):
        """Metrics of ``score_fn`` on ``split`` (the ``users`` given, or all); with ``per_user``, ``(metrics,
        the per-user values)``."""
        extra: Dict[str, Any] = {"per_user": True} if per_user else {}
        if users is not None:
            extra["users"] = users
        res = _dist.on_main(self.dist, lambda: self.evaluate_fn(
            score_fn, self.dataset, split=split, batch_size=self.config.train.eval_batch_size,
            device=self.device, backend=self.config.train.backend, **extra))
        res = dict(res)
        values = res.pop("per_user", None)
        out = {g: {k: v if isinstance(v, int) else float(v) for k, v in m.items()} for g, m in res.items()}
        return (out, values) if per_user else out

    def _snapshot(self) -> Dict[str, Any]:
        state = self.model.state_dict()
        # inference tensors cannot be changed in place (torch refuses), so the copies share them: the selected
        # states and the checkpoint (torch.save writes a shared storage once) hold each of them once
        return copy.deepcopy(state, {id(t): t for t in _tensors(state) if t.is_inference()})

    def _check_compatible(self, state: Dict[str, Any], fingerprint: str) -> None:
        path = self.checkpoint_path
        check_same_config(self.config, state.get("config") or {}, f"checkpoint {str(path)!r}",
                          fingerprint=state.get("config_fingerprint"))
        if state.get("dataset_fingerprint") != fingerprint:
            raise CheckpointError(f"checkpoint {str(path)!r} was written for another dataset or split; "
                                  "use a fresh --out directory or the same data")

    # ------------------------------------------------------------------ the loop
    def fit(self, *, resume: bool = False) -> Dict[str, Any]:
        cfg, tc = self.config, self.config.train
        seed_everything(tc.seed)
        ds = self.dataset.to(self.device)
        self.dataset = ds
        fingerprint = ds.fingerprint()
        model = build_model(ds, cfg.settings(), wrappers=cfg.wrappers, backend=tc.backend, device=str(self.device),
                            propagation=tc.propagation, fanout=tc.fanout)
        self.model = model
        opt = make_optimizer(model, lr=tc.lr, weight_decay=tc.weight_decay)
        self._step = _dist.make_step(model, self.dist)  # model.<loss>(batch), or this rank's shard under DDP
        gen = torch.Generator(device=self.device).manual_seed(tc.seed)
        sampler = BPRSampler(ds.train, ds.num_items, batch_size=tc.batch_size)
        pre = tc.pretrain_epochs if model.has_tokenizer else 0
        total_epochs = pre + tc.epochs
        # the same users every validation (and after a resume): scores of different epochs stay comparable
        valid_users = sample_users(ds, "valid", tc.eval_users, seed=tc.seed)
        dev = self.device

        epoch, bad, stopped = 0, 0, False
        selection = model.selection(tc.select, lambda v: select_score(v, tc.select), SELECT_METRIC)
        history: list = []
        train_seconds: list = []
        if resume:
            path = self.checkpoint_path
            if path is None:
                raise CheckpointError("resume needs a checkpoint directory holding last.pt")
            state = _dist.load_on_main(self.dist, load_checkpoint, path, map_location=self.device)
            self._check_compatible(state, fingerprint)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            set_rng_state(state["rng"], gen)
            epoch, bad, stopped = state["epoch"], state["bad_epochs"], state["stopped"]
            try:
                selection.load_state_dict(state["selection"])
            except (KeyError, ValueError) as e:
                raise CheckpointError(f"checkpoint {str(path)!r}: its selection state does not fit this run ({e}); "
                                     "train into a fresh --out directory") from None
            history = list(state["history"])
            train_seconds = list(state["train_seconds"])
            self.log.info("resumed %s from %s at epoch %d", cfg.model.name, path, epoch)

        while epoch < total_epochs and not stopped:
            t0 = _now(dev)
            model.train()
            if epoch < pre:
                parts = self._pretrain_epoch(model, opt, gen, epoch)
                row = {"epoch": epoch, "stage": "pretrain", "seconds_pretrain": _now(dev) - t0, **parts}
            else:
                joint = epoch - pre
                model.on_epoch_start(joint)
                t1 = _now(dev)
                parts = self._joint_epoch(model, opt, sampler, gen, joint)
                t2 = _now(dev)
                train_seconds.append(t2 - t0)
                row = {"epoch": epoch, "stage": "joint", "seconds": t2 - t0, "seconds_epoch_start": t1 - t0,
                       "seconds_steps": t2 - t1, **parts}
                row.update(model.epoch_log())
                if (joint + 1) % tc.eval_every == 0 or epoch == total_epochs - 1:
                    model.eval()
                    valid, values = self._evaluate_scores(model.score, "valid", users=valid_users, per_user=True)
                    score = select_score(valid, tc.select)
                    for st in ("cold", "warm", "hybrid"):
                        row[f"valid_{st}_{SELECT_METRIC}"] = valid[st][SELECT_METRIC]
                    row["select_score"] = score
                    row["select_score_se"] = select_score_se(values, tc.select)
                    improved = selection.update(
                        epoch=epoch, valid=valid, snapshot=self._snapshot, row=row,
                        evaluate=lambda scorer: self._evaluate_scores(scorer.score, "valid", users=valid_users))
                    if improved:
                        bad = 0
                    else:
                        bad += 1
                        if tc.patience and bad >= tc.patience:
                            stopped = True
                    row["seconds_valid"] = _now(dev) - t2
            history.append(row)
            epoch += 1
            t_save = _now(dev)
            if self.checkpoint_path is not None:
                def save() -> None:  # on rank 0; a failed write (WriteError) is raised on every rank alike
                    save_checkpoint({
                        "model": model.state_dict(), "optimizer": opt.state_dict(),
                        "rng": rng_state(gen), "epoch": epoch, "bad_epochs": bad, "stopped": stopped,
                        # the state to restore, and the selection's own (which shares its tensors: stored once)
                        "best_state": selection.best_state, "selection": selection.state_dict(), "history": history,
                        "train_seconds": train_seconds, "config": cfg.to_dict(),
                        "config_fingerprint": cfg.fingerprint(), "dataset_fingerprint": fingerprint,
                        "model_name": cfg.model.name,
                    }, self.checkpoint_path)

                _dist.on_main(self.dist, save)
                row["seconds_checkpoint"] = time.perf_counter() - t_save
            row.update(peak_memory_mb(dev))
            self.log.info("%s epoch %d %s", cfg.model.name, epoch - 1,
                          " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                                   if k != "epoch"))
            if stopped:
                self.log.info("%s: early stop after epoch %d (best valid %s %s %.4f at epoch %d)",
                              cfg.model.name, epoch - 1, tc.select, SELECT_METRIC, selection.best,
                              selection.best_epoch)

        # the cap ended training while early stopping was on, so validation improved within the last `patience`
        # evaluations (the loop only ends unstopped at the cap)
        best_epoch = selection.best_epoch
        hit_cap = not stopped and tc.patience > 0 and best_epoch >= 0
        if hit_cap:
            self.log.warning("%s: reached the epoch cap (%d joint epochs) without early stopping; validation %s "
                             "%s last improved at epoch %d, so the model may be undertrained: raise --epochs "
                             "(train.epochs)", cfg.model.name, tc.epochs, tc.select, SELECT_METRIC,
                             best_epoch)
        if selection.best_state is not None:
            model.load_state_dict(selection.best_state)
        elif pre and tc.epochs == 0:
            model.on_epoch_start(0)
        t_final = _now(dev)
        valid = self.evaluate("valid")
        t_test = _now(dev)
        test = self.evaluate("test")
        stage_seconds = _stage_seconds(history)
        stage_seconds.update(final_valid=t_test - t_final, test=_now(dev) - t_test)
        self.log.info("%s: seconds per stage %s; peak memory %s", cfg.model.name,
                      " ".join(f"{k}={v:.2f}" for k, v in stage_seconds.items()),
                      " ".join(f"{k}={v:.0f}" for k, v in peak_memory_mb(dev).items()))
        for phrase in selection.describe():
            self.log.info("%s: %s", cfg.model.name, phrase)
        return {"valid": valid, "test": test, "best_epoch": best_epoch, "epochs_run": epoch,
                "selected_epochs": selection.summary(), "model_stats": model.model_stats(),
                "early_stopped": bool(stopped), "hit_epoch_cap": hit_cap,
                "seconds_per_epoch": float(np.mean(train_seconds)) if train_seconds else float("nan"),
                "seconds": stage_seconds, **peak_memory_mb(dev), "history": history}

    def _pretrain_epoch(self, model, opt, gen, epoch) -> Dict[str, float]:
        n = model.num_items
        perm = torch.randperm(n, device=self.device, generator=gen)
        bs = self.config.train.batch_size
        sums: Dict[str, torch.Tensor] = {}
        steps = 0
        for start in _progress(range(0, n, bs), total=(n + bs - 1) // bs, desc=f"pretrain {epoch}", quiet=self.quiet):
            with self._autocast():
                loss, parts = self._step("pretrain_loss", perm[start:start + bs])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            _accumulate(sums, parts)
        return _epoch_means(sums, steps)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast_context(self.device, self.config.train.precision)

    def _joint_epoch(self, model, opt, sampler, gen, joint) -> Dict[str, float]:
        sums: Dict[str, torch.Tensor] = {}
        steps = 0
        for batch in _progress(sampler.epoch(gen), total=len(sampler), desc=f"{self.config.model.name} {joint}",
                               quiet=self.quiet):
            with self._autocast():
                loss, parts = self._step("loss", batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            _accumulate(sums, {"loss": loss.detach(), **parts})
        return _epoch_means(sums, steps)


def _stage_seconds(history: list) -> Dict[str, float]:
    """Each ``seconds_<stage>`` key of the history rows summed over the rows, keyed by ``<stage>``."""
    out: Dict[str, float] = {}
    for row in history:
        for k, v in row.items():
            if k.startswith("seconds_") and isinstance(v, (int, float)):
                out[k[len("seconds_"):]] = out.get(k[len("seconds_"):], 0.0) + float(v)
    return out


def _tensors(obj: Any):
    """Every tensor in a nest of dicts, lists and tuples (a state dict and its extra states)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _accumulate(sums: Dict[str, torch.Tensor], parts: Dict[str, Any]) -> None:
    """Add a step's loss parts (0-dim tensors, or numbers) into ``sums`` on their device, in float64: no host
    read per step (each would stall a GPU's queue); :func:`_epoch_means` reads them once."""
    for k, v in parts.items():
        v = v.detach().double() if isinstance(v, torch.Tensor) else torch.tensor(float(v), dtype=torch.float64)
        sums[k] = sums[k] + v.to(sums[k].device) if k in sums else v


def _epoch_means(sums: Dict[str, torch.Tensor], steps: int) -> Dict[str, float]:
    """Per-step means of the accumulated parts as Python floats (one host read for all of them)."""
    if not sums:
        return {}
    keys = list(sums)
    dev = sums[keys[0]].device
    values = torch.stack([sums[k].to(dev) for k in keys]).tolist()
    return {k: v / max(steps, 1) for k, v in zip(keys, values)}
