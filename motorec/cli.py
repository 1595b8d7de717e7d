"""The ``motorec`` command line: ``train``, ``evaluate``, ``compare``, ``tokenize``, ``recommend``, ``bench``.

``motorec train`` without ``--model`` trains MoToRec and the three baselines and prints a results table;
without ``--data`` it uses the bundled MovieLens-100k. An output directory holds ``config.yaml``, ``run.json``
(where the data came from), ``checkpoints/<model>/last.pt``, ``train.log`` and ``metrics.json`` shaped
``m[model]["test"|"valid"][key][metric]`` (key: the settings cold, warm, hybrid, then hybrid_warm and
hybrid_cold, see :mod:`motorec.eval.metrics`; metric: recall@10, ndcg@10, recall@20, ndcg@20) with
``m[model]["seconds_per_epoch"]``. ``motorec compare`` trains every model on several cold-item draws and seeds
(one ``motorec train`` subprocess per run, resumable) and writes ``summary.json`` / ``summary.md``
(:mod:`motorec.eval.compare`); with ``--tune`` every baseline first picks its learning rate and regularization
from the same small grid on draw 0's validation split.

A user error (bad data, bad flag or config, missing backend, foreign checkpoint) prints one line
``motorec: error: ...`` and exits with code 2; a file of the run that cannot be written (a full disk) prints
one line naming the file and the cause and exits with code 1, the previous version of the file intact.
``MOTOREC_DEBUG=1`` shows the traceback instead.

Every command reads and writes a run through :class:`motorec.train.runs.RunDir`, and returns an
:class:`Outcome` (its exit code, and whether it left a torchrun process group) instead of setting globals.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

# ColdRec's settings: cold (warm items masked), warm (cold items masked), hybrid (nothing masked)
from motorec.eval.metrics import SETTINGS

__all__ = ["main", "UserError"]

EXIT_USAGE = 2
EXIT_WRITE = 1
# metrics.json key of `motorec train --inductive`'s run (motorec.train.inductive)
INDUCTIVE = "motorec_inductive"
# what `motorec compare` trains without --model: MoToRec, the ID backbone and every cold-start baseline
COMPARE_MODELS = ("motorec", "lightgcn", "lightgcn_content", "content", "knn", "aldi")


@dataclass
class Outcome:
    """What a command returns: its exit code, and whether it ran in a torchrun process group and left it (then
    :func:`main` ends the process itself, see there)."""

    code: int = 0
    left_process_group: bool = False


class UserError(Exception):
    """An error in what the user asked for; the CLI prints it in one line and exits with code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise UserError(f"{self.prog}: error: {message}")


def _user_errors():
    from motorec._dispatch import BackendUnavailable
    from motorec.config import ConfigError
    from motorec.train.checkpoint import CheckpointError

    errs = [UserError, ConfigError, CheckpointError, BackendUnavailable]
    try:
        from motorec.data import DataError

        errs.append(DataError)
    except ImportError:
        pass
    return tuple(errs)


# ---------------------------------------------------------------------------------------------- parser
def _grid_arg(key: str):
    """argparse ``type`` of ``compare --grid-lr`` / ``--grid-reg``: comma-separated numbers, checked."""
    def parse(text: str):
        from motorec.eval.compare import parse_grid

        try:
            return parse_grid(text, key)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def build_parser() -> argparse.ArgumentParser:
    from motorec import __version__
    from motorec.config import DEFAULT_MODELS, MODEL_NAMES
    from motorec.data.synthetic import SYNTHETIC_SPEC

    p = _Parser(prog="motorec", description="MoToRec: multimodal tokenization for cold-start recommendation.")
    p.add_argument("--version", action="version", version=f"motorec {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser,
                           metavar="{train,evaluate,compare,tokenize,recommend,bench}")

    t = sub.add_parser("train", help="train MoToRec and/or baselines; print and save metrics")
    t.add_argument("--data", metavar="DIR", help="MMRec-format folder, or synthetic[:key=value,...] (a topic-model catalog whose "
                   "features carry more or less of the signal; keys " + ", ".join(SYNTHETIC_SPEC) +
                   "; default: bundled MovieLens-100k)")
    t.add_argument("--model", choices=MODEL_NAMES, action="append",
                   help="model to train (repeatable; default: " + ", ".join(DEFAULT_MODELS) + ")")
    t.add_argument("--config", metavar="FILE", help="YAML config (sections model/train/data)")
    t.add_argument("--epochs", type=int, help="joint training epochs (overrides the config)")
    t.add_argument("--pretrain-epochs", type=int, help="tokenizer pre-training epochs (overrides the config)")
    t.add_argument("--split", choices=("cold", "warm"), help="cold-start split (default) or the data's x_label")
    t.add_argument("--out", metavar="DIR", help="output directory (default: runs/<timestamp>)")
    t.add_argument("--backend", choices=("auto", "torch", "cpu", "cuda", "triton"), help="kernel backend")
    t.add_argument("--device", help="cpu, cuda or cuda:N")
    t.add_argument("--seed", type=int, help="training seed (torch, numpy, random, sampler)")
    t.add_argument("--split-seed", type=int, help="seed of the cold-start split's draw of held-out items "
                   "(data.seed, default 0): another draw is another benchmark")
    t.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; 1 is often "
                   "fastest on a shared or small machine)")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    t.add_argument("--inductive", action="store_true", help="also train MoToRec without the held-out items' "
                   "features, add them afterwards with with_new_items, and report it beside the standard run as "
                   "motorec_inductive (cold split; needs --model motorec or the default models; no checkpoint)")
    t.add_argument("--quiet", action="store_true", help="no progress bars or log lines on stderr")

    e = sub.add_parser("evaluate", help="evaluate the best checkpoint(s) of a run")
    e.add_argument("run", metavar="RUN_DIR", help="a directory written by 'motorec train'")
    e.add_argument("--model", choices=MODEL_NAMES, action="append", help="model(s) to evaluate (default: all)")
    e.add_argument("--data", metavar="DIR", help="evaluate on this MMRec folder (or synthetic spec) instead of the "
                   "run's data")
    e.add_argument("--device", help="cpu, cuda or cuda:N")
    e.add_argument("--quiet", action="store_true")

    c = sub.add_parser("compare", help="train every model on several cold-item draws and seeds (one subprocess "
                       "per run, resumable); write summary.json / summary.md and print the table")
    c.add_argument("--out", metavar="DIR", required=True, help="output directory (runs/draw<d>_seed<s>/, summary)")
    c.add_argument("--draws", type=int, default=5, help="cold-item draws: split seeds 0..N-1 (default 5)")
    c.add_argument("--seeds", type=int, default=1, help="training seeds per draw: 0..N-1 (default 1)")
    c.add_argument("--model", choices=MODEL_NAMES, action="append",
                   help="model to compare (repeatable; default: " + ", ".join(COMPARE_MODELS) + ")")
    c.add_argument("--data", metavar="DIR", help="MMRec-format folder, or synthetic[:key=value,...] (a topic-model catalog whose "
                   "features carry more or less of the signal; keys " + ", ".join(SYNTHETIC_SPEC) +
                   "; default: bundled MovieLens-100k)")
    c.add_argument("--config", metavar="FILE", help="YAML config for every run (e.g. model.cold_calibration "
                   "for every model)")
    c.add_argument("--epochs", type=int, help="joint training epochs (overrides the config)")
    c.add_argument("--threads", type=int, default=1, help="torch CPU threads per run (default 1)")
    c.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    c.add_argument("--backend", choices=("auto", "torch", "cpu", "cuda", "triton"), help="kernel backend")
    c.add_argument("--device", help="cpu, cuda or cuda:N")
    c.add_argument("--tune", action="store_true", help="equal tuning first: every model but motorec picks "
                   "train.lr x model.lambda_reg from a small grid by its validation score on draw 0 / seed 0 "
                   "(OUT/tune/), then one run per draw, seed and model with its choice (docs/BASELINES.md)")
    c.add_argument("--tune-reference", action="store_true", help="with --tune: tune motorec as well")
    c.add_argument("--grid-lr", metavar="LRS", type=_grid_arg("lr"),
                   help="with --tune: comma-separated train.lr values, each > 0 (default 1e-3,5e-3)")
    c.add_argument("--grid-reg", metavar="REGS", type=_grid_arg("lambda_reg"),
                   help="with --tune: comma-separated model.lambda_reg values, each >= 0 (default 1e-4,1e-3)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    # "--grid-lr -1e-3" reaches the grid check (a clear error) instead of reading as an option: every argument
    # starting "-<digit>" or "-.<digit>" is a value here, as in Python >= 3.13 (compare has no such option)
    c._negative_number_matcher = re.compile(r"-\.?\d")

    k = sub.add_parser("tokenize", help="write each item's semantic IDs (codes) from a trained MoToRec")
    k.add_argument("run", metavar="RUN_DIR", help="a directory written by 'motorec train' with a motorec model")
    k.add_argument("--output", metavar="FILE", help="output .tsv or .npy (default: RUN_DIR/tokens.tsv and .npy)")
    k.add_argument("--device", help="cpu, cuda or cuda:N")

    r = sub.add_parser("recommend", help="write each user's top-K items from a trained model, brand-new items "
                       "(features only) included")
    r.add_argument("run", metavar="RUN_DIR", help="a directory written by 'motorec train'")
    r.add_argument("--model", choices=MODEL_NAMES, default="motorec", help="which trained model (default motorec)")
    r.add_argument("--new-items", metavar="DIR", help="a folder of <modality>_feat.npy files, one per modality "
                   "the model was trained on, row k = new item k (MoToRec only); new item k gets item id "
                   "num_items + k")
    r.add_argument("--top-k", type=int, default=20, help="items per user (default 20)")
    r.add_argument("--users", metavar="IDS", help="comma-separated user ids (default: every user)")
    r.add_argument("--output", metavar="FILE", help="output .tsv (default: RUN_DIR/recommendations.tsv)")
    r.add_argument("--device", help="cpu, cuda or cuda:N")

    b = sub.add_parser("bench", help="run the benchmark harness (benchmarks/ of a source checkout)")
    b.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to 'python -m benchmarks.run'")
    return p


# ---------------------------------------------------------------------------------------------- helpers
def _setup_logging(log_file: Optional[Path], quiet: bool) -> logging.Logger:
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


def data_arg(data: Optional[str]) -> Optional[str]:
    """What ``--data`` names, as recorded in a run (an absolute folder path, or the synthetic spec as given);
    raises :class:`UserError` for a folder that does not exist or a bad synthetic spec."""
    from motorec.data import parse_synthetic_spec

    if data is None:
        return None
    if parse_synthetic_spec(data) is not None:  # a bad spec raises DataError (a user error)
        return data
    if not Path(data).is_dir():
        raise UserError(f"--data {data!r} is not a directory (expected an MMRec folder with <name>.inter and "
                        "*_feat.npy, or synthetic[:key=value,...])")
    return str(Path(data).resolve())


def load_data(data: Optional[str], split: str, seed: int):
    """The dataset named on the command line (``None``: bundled MovieLens-100k; an MMRec folder; or a
    ``synthetic[:key=value,...]`` spec, :func:`motorec.data.load_synthetic_spec`), split with ``seed``."""
    from motorec import data as mdata

    if data is None:
        return mdata.load_movielens100k(split=split, seed=seed)
    if mdata.parse_synthetic_spec(data) is not None:
        return mdata.load_synthetic_spec(data, split=split, seed=seed)
    data_arg(data)
    return mdata.load_mmrec(data, split=split, seed=seed)


def _load_config(path: Optional[str]):
    from motorec.config import Config

    return Config.load(path) if path else Config()


def results_table(metrics: Dict[str, Any], split: str = "test") -> str:
    """Plain-text table per model: Recall@20 and NDCG@20 in the cold, warm and hybrid settings, and seconds per
    epoch (``-`` where a run has none)."""
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


# ---------------------------------------------------------------------------------------------- commands
def _train_config(args):
    """The run's config: the ``--config`` file (or the defaults) with the command line's overrides."""
    cfg = _load_config(args.config)
    train_over: Dict[str, Any] = {}
    for flag, key in (("epochs", "epochs"), ("pretrain_epochs", "pretrain_epochs"), ("device", "device"),
                      ("backend", "backend"), ("seed", "seed")):
        v = getattr(args, flag)
        if v is not None:
            train_over[key] = v
    data_over: Dict[str, Any] = {"split": args.split} if args.split else {}
    if args.split_seed is not None:
        data_over["seed"] = args.split_seed
    return cfg.replace(train=train_over, data=data_over)


def cmd_train(args) -> Outcome:
    from motorec.config import DEFAULT_MODELS
    from motorec.train import Trainer
    from motorec.train import distributed as _dist
    from motorec.train.runs import RunDir
    from motorec.train.trainer import resolve_device

    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    cfg = _train_config(args)
    device = resolve_device(cfg.train.device)
    if args.resume and not args.out:
        raise UserError("--resume needs --out DIR (the run to continue)")
    out = Path(args.out) if args.out else Path("runs") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    dctx = _dist.init_from_env(cfg.train.device)  # under torchrun: join the group; rank 0 writes the outputs
    device = _dist.local_device(dctx, device)  # resolved once, passed to every trainer
    main = dctx is None or dctx.is_main
    run = RunDir(_dist.on_main(dctx, lambda: str(out)))
    models: List[str] = list(dict.fromkeys(args.model)) if args.model else list(DEFAULT_MODELS)
    if args.inductive and ("motorec" not in models or dctx is not None or cfg.data.split != "cold"):
        raise UserError("--inductive needs MoToRec among the models (it uses with_new_items), the cold split, "
                        "and one process (not torchrun)")

    ds = load_data(args.data, cfg.data.split, cfg.data.seed)
    run.prepare(cfg, {"data": data_arg(args.data), "dataset": ds.name,
                      "split": cfg.data.split, "data_seed": cfg.data.seed, "dataset_fingerprint": ds.fingerprint(),
                      "models": models}, resume=args.resume, write=main)
    log = _setup_logging(run.log_path if main else None, args.quiet or not main)
    log.info("data: %s", ds.summary().replace("\n", " |"))
    log.info("output: %s", run.path)

    metrics: Dict[str, Any] = run.read_metrics() if args.resume else {}
    capped: List[str] = []  # models the epoch cap stopped before early stopping could (the trainer warned)
    for name in models:
        mcfg = cfg.replace(model={"name": name})
        trainer = Trainer(mcfg, ds, checkpoint_dir=run.checkpoint_dir(name), quiet=args.quiet or not main,
                          logger=log, device=device, dist=dctx)
        res = trainer.fit(resume=_dist.on_main(dctx, lambda: args.resume and run.has_checkpoint(name)))
        if res["hit_epoch_cap"]:
            capped.append(name)
        metrics[name] = {"valid": res["valid"], "test": res["test"], "seconds_per_epoch": res["seconds_per_epoch"],
                         "best_epoch": res["best_epoch"], "epochs_run": res["epochs_run"],
                         "early_stopped": res["early_stopped"]}
        if res["selected_epochs"] is not None:
            metrics[name]["selected_epochs"] = res["selected_epochs"]
        _dist.on_main(dctx, lambda: run.write_metrics(metrics))
        log.info("%s test: %s", name, "  ".join(f"{g} R@20={res['test'][g]['recall@20']:.4f}"
                                                for g in SETTINGS))
    shown = list(models)
    if args.inductive:
        from motorec.train.inductive import fit_inductive

        res = fit_inductive(cfg.replace(model={"name": "motorec"}), ds, quiet=args.quiet, logger=log, device=device)
        metrics[INDUCTIVE] = {"valid": res["valid"], "test": res["test"],
                              "seconds_per_epoch": res["seconds_per_epoch"], "best_epoch": res["best_epoch"],
                              "epochs_run": res["epochs_run"], "early_stopped": res["early_stopped"],
                              "new_items": res["num_new_items"]}
        run.write_metrics(metrics)
        shown.append(INDUCTIVE)
        log.info("%s test: %s", INDUCTIVE, "  ".join(f"{g} R@20={res['test'][g]['recall@20']:.4f}"
                                                     for g in SETTINGS))
    if main:
        print(results_table({k: metrics[k] for k in shown}))
        if args.inductive:
            print(f"\n{INDUCTIVE}: MoToRec trained without the {metrics[INDUCTIVE]['new_items']} held-out items' "
                  "features (selected on warm validation: no cold validation item is in its catalog), the items "
                  "added afterwards by with_new_items; evaluated on the full catalog")
        if capped:
            print(f"\nnote: {', '.join(capped)} reached the epoch cap ({cfg.train.epochs}) before early stopping: "
                  "validation recall was still improving, so these may be undertrained (raise --epochs)")
        print(f"\nwrote {run.metrics_path}")
    if dctx is None:
        return Outcome(0)
    dctx.barrier()  # every rank leaves together: a rank exiting with live gloo threads aborts
    _dist.shutdown()
    return Outcome(0, left_process_group=True)


def _run_dir(path: str):
    from motorec.train.runs import RunDir

    run = RunDir(path)
    run.read_info()  # refuses a directory that is not a run
    return run


def cmd_evaluate(args) -> Outcome:
    from motorec.eval import evaluate
    from motorec.train.trainer import resolve_device

    run = _run_dir(args.run)
    info = run.read_info()
    device = args.device or "cpu"
    dev = resolve_device(device)
    ds = load_data(args.data or info["data"], info["split"], info["data_seed"])
    names = args.model or run.trained_models()
    if not names:
        raise UserError(f"{str(run.path)!r} has no checkpoints")
    out: Dict[str, Any] = {}
    for name in names:
        model, cfg = run.load_trained(name, ds, device)
        out[name] = {s: {g: {k: v if isinstance(v, int) else float(v) for k, v in m.items()} for g, m in
                         evaluate(model.score, ds.to(dev), split=s, batch_size=cfg.train.eval_batch_size,
                                  device=dev).items()} for s in ("valid", "test")}
    print(results_table(out))
    return Outcome(0)


def cmd_compare(args) -> Outcome:
    from motorec.eval.compare import GRID_LR, GRID_REG, CompareError, run_compare

    for flag in ("draws", "seeds", "threads", "jobs"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.epochs is not None and args.epochs < 0:
        raise UserError(f"--epochs must be >= 0, got {args.epochs}")
    data = data_arg(args.data)  # a missing folder or a bad synthetic spec is refused before any run
    if args.config is not None:
        _load_config(args.config)  # a bad config is refused here, not once per run
    if not args.tune:
        extra = [f for f, v in (("--tune-reference", args.tune_reference), ("--grid-lr", args.grid_lr),
                                ("--grid-reg", args.grid_reg)) if v]
        if extra:
            raise UserError(f"{', '.join(extra)} only apply with --tune")
    models = list(dict.fromkeys(args.model)) if args.model else list(COMPARE_MODELS)
    out = Path(args.out)
    tuning = dict(tune=True, grid_lr=args.grid_lr or GRID_LR, grid_reg=args.grid_reg or GRID_REG,
                  tune_reference=args.tune_reference) if args.tune else {}
    try:
        run_compare(out, models=models, draws=args.draws, seeds=args.seeds,
                    data=data,
                    config=None if args.config is None else str(Path(args.config).resolve()), epochs=args.epochs,
                    threads=args.threads, jobs=args.jobs, backend=args.backend, device=args.device,
                    progress=not args.quiet, **tuning)
    except CompareError as e:  # an output directory this command cannot continue (other layout, grid)
        raise UserError(str(e)) from None
    except RuntimeError as e:  # some runs failed: the finished ones stay, a re-run resumes the others
        print(f"motorec: error: {e}", file=sys.stderr)
        return Outcome(EXIT_WRITE)
    print((out / "summary.md").read_text(), end="")
    print(f"\nwrote {out / 'summary.json'} and {out / 'summary.md'}")
    return Outcome(0)


def cmd_tokenize(args) -> Outcome:
    import numpy as np

    from motorec.train.checkpoint import atomic_write

    run = _run_dir(args.run)
    if not run.has_checkpoint("motorec"):
        raise UserError(f"{str(run.path)!r} has no trained motorec model (checkpoints/motorec/last.pt)")
    if args.output and Path(args.output).suffix not in (".tsv", ".npy"):
        raise UserError(f"--output must end in .tsv or .npy, got {Path(args.output).name!r}")
    ds = run.load_dataset()
    model, cfg = run.load_trained("motorec", ds, args.device or "cpu")
    if cfg.model.continuous:
        raise UserError("this MoToRec was trained with model.continuous=true: it has no tokens")
    tokens = {m: c.cpu().numpy() for m, c in model.tokenize().items()}
    mods = list(tokens)
    table = np.concatenate([tokens[m] for m in mods], axis=1) if mods else np.zeros((ds.num_items, 0), np.int64)
    targets = [Path(args.output)] if args.output else [run.path / "tokens.tsv", run.path / "tokens.npy"]
    for t in targets:
        if t.suffix == ".npy":
            atomic_write(t, lambda f: np.save(f, table))
        else:
            lines = ["itemID\t" + "\t".join(mods)] + [
                str(i) + "\t" + "\t".join("-".join(map(str, tokens[m][i])) for m in mods) for i in range(table.shape[0])]
            atomic_write(t, lambda f: f.write(("\n".join(lines) + "\n").encode()))
        print(f"wrote {t} ({table.shape[0]} items; columns: "
              + ", ".join(f"{m} x{tokens[m].shape[1]}" for m in mods) + ")")
    return Outcome(0)


def _parse_users(spec: Optional[str], num_users: int):
    import torch

    if spec is None:
        return torch.arange(num_users)
    try:
        ids = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--users must be comma-separated integer user ids, got {spec!r}") from None
    if not ids:
        raise UserError("--users names no user")
    bad = [u for u in ids if not 0 <= u < num_users]
    if bad:
        raise UserError(f"--users: id(s) {bad[:5]} outside the run's users 0..{num_users - 1}")
    return torch.tensor(list(dict.fromkeys(ids)))


def cmd_recommend(args) -> Outcome:
    """Top-K lists per user over the run's catalog (and ``--new-items``): every item a user is known to have
    interacted with in the run's data (train, valid and test) is left out of that user's list."""
    import torch

    from motorec.data.mmrec import read_features
    from motorec.eval.metrics import mask_pairs_, pairs_csr
    from motorec.train.checkpoint import atomic_write
    from motorec.train.trainer import resolve_device

    run = _run_dir(args.run)
    if args.top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {args.top_k}")
    if not run.has_checkpoint(args.model):
        raise UserError(f"{str(run.path)!r} has no trained {args.model} model (checkpoints/{args.model}/last.pt)")
    outp = Path(args.output) if args.output else run.path / "recommendations.tsv"
    if outp.suffix != ".tsv":
        raise UserError(f"--output must end in .tsv, got {outp.name!r}")
    ds = run.load_dataset()
    users = _parse_users(args.users, ds.num_users)
    model, cfg = run.load_trained(args.model, ds, args.device or "cpu")
    n_new = 0
    if args.new_items:
        if args.model != "motorec":
            raise UserError(f"--new-items needs --model motorec (the {args.model} model cannot embed items it "
                            "was not built with)")
        if not Path(args.new_items).is_dir():
            raise UserError(f"--new-items {args.new_items!r} is not a directory of <modality>_feat.npy files")
        try:  # the model validates the features (modalities, widths, values)
            model = model.with_new_items(read_features(args.new_items))
        except ValueError as e:
            raise UserError(f"--new-items {args.new_items!r}: {e}") from None
        n_new = model.num_items - ds.num_items
    dev = resolve_device(args.device or "cpu")
    k = min(args.top_k, model.num_items)
    # every item a user already has in the run's data (catalog ids only, so new items are never masked)
    _, k_rowptr, k_items = pairs_csr([ds.train, ds.valid, ds.test], ds.num_users, ds.num_items, dev)
    kinds = ["cold", "warm", "new"]
    kind_of = model.warm_mask.long().cpu()
    kind_of[ds.num_items:] = 2
    kind_of = kind_of.tolist()
    bs = max(1, cfg.train.eval_batch_size)

    def write(fh) -> None:
        fh.write(b"userID\trank\titemID\tscore\tkind\n")
        for start in range(0, users.numel(), bs):
            ub = users[start:start + bs].to(dev)
            s = mask_pairs_(model.score(ub).float(), ub, k_rowptr, k_items)
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
    print(f"wrote {outp} (top {k} of {model.num_items} items for {users.numel()} users"
          + (f"; {n_new} new items are ids {ds.num_items}..{ds.num_items + n_new - 1}" if n_new else "") + ")")
    return Outcome(0)


def cmd_bench(args) -> Outcome:
    root = Path(__file__).resolve().parent.parent
    bench = root / "benchmarks"
    if not (bench / "run.py").is_file() and not (bench / "harness.py").is_file():
        raise UserError(f"no benchmarks found at {str(bench)!r}: 'motorec bench' needs a source checkout of "
                        "motorec (the benchmarks/ folder is not installed with the package)")
    module = "benchmarks.run" if (bench / "run.py").is_file() else "benchmarks.harness"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    extra = [a for a in args.args if a != "--"]
    return Outcome(subprocess.call([sys.executable, "-m", module, *extra], cwd=root, env=env))


def main(argv: Optional[List[str]] = None) -> int:
    """The ``motorec`` command (console script and ``python -m motorec``): :func:`run`, then, when ``train``
    ran in a torchrun process group, the end of the process.

    Even after a rank has left the group, gloo's communication threads can be torn down by static destructors
    at interpreter exit, which aborts the process ("terminate called without an active exception") in about
    one run in three on a loaded 2-core machine, and torchrun then kills the other rank. Every output is
    written and closed when ``run`` returns, so such a rank ends with ``os._exit`` instead of running those
    destructors. A program that calls motorec in-process should call :func:`run`, which never exits.
    """
    outcome = execute(argv)
    if outcome.left_process_group:
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(outcome.code)
    return outcome.code


def run(argv: Optional[List[str]] = None) -> int:
    """Run one ``motorec`` command in this process and return its exit code (0 ok, 1 a file could not be
    written, 2 user error, 130 interrupted); never exits the process (see :func:`main`)."""
    return execute(argv).code


def execute(argv: Optional[List[str]] = None) -> Outcome:
    """Run one ``motorec`` command in this process; errors become one line on stderr and an exit code."""
    from motorec.train.checkpoint import WriteError

    errors = (UserError,)
    try:
        errors = _user_errors()
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return Outcome(EXIT_USAGE)
        cmd = {"train": cmd_train, "evaluate": cmd_evaluate, "compare": cmd_compare, "tokenize": cmd_tokenize,
               "recommend": cmd_recommend, "bench": cmd_bench}
        return cmd[args.command](args)
    except (*errors, WriteError) as e:
        if os.environ.get("MOTOREC_DEBUG"):
            raise
        msg = " ".join(str(e).split())
        print(msg if msg.startswith("motorec") else f"motorec: error: {msg}", file=sys.stderr)
        return Outcome(EXIT_WRITE if isinstance(e, WriteError) else EXIT_USAGE)
    except KeyboardInterrupt:
        print("motorec: interrupted", file=sys.stderr)
        return Outcome(130)
    finally:
        # Leave a torchrun process group before the interpreter exits: its communication threads would
        # otherwise be torn down by static destructors ("terminate called without an active exception").
        from motorec.train import distributed as _dist

        _dist.shutdown()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
