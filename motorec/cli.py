"""The ``motorec`` command line: ``train``, ``evaluate``, ``compare``, ``tokenize``, ``recommend``, ``bench``.

Each command parses its flags, calls :mod:`motorec.experiments` (the Python API for runs) and prints what it
returns. ``motorec train`` without ``--model`` trains MoToRec and the three baselines and prints a results
table; without ``--data`` it uses the bundled MovieLens-100k. An output directory holds ``config.yaml``,
``run.json`` (where the data came from), ``checkpoints/<model>/last.pt``, ``train.log`` and ``metrics.json``
shaped ``m[model]["test"|"valid"][key][metric]`` (key: the settings cold, warm, hybrid, then hybrid_warm and
hybrid_cold, see :mod:`motorec.eval.metrics`; metric: recall@10, ndcg@10, recall@20, ndcg@20) with
``m[model]["seconds_per_epoch"]`` (:func:`motorec.experiments.train_models`). ``motorec compare`` trains every
model on several cold-item draws and seeds (one process per run, resumable) and writes ``summary.json`` /
``summary.md`` (:mod:`motorec.experiments.compare`); with ``--tune`` every baseline first picks its learning
rate and regularization from the same small grid on draw 0's validation split.

A user error (bad data, bad flag or config, missing backend, foreign checkpoint) prints one line
``motorec: error: ...`` and exits with code 2 (an :class:`~motorec.experiments.ArgumentError` names the flag of
the argument); a file of the run that cannot be written (a full disk) prints one line naming the file and the
cause and exits with code 1, the previous version of the file intact. ``MOTOREC_DEBUG=1`` shows the traceback
instead. Every command returns an :class:`Outcome` (its exit code, and whether it left a torchrun process group)
instead of setting globals.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from motorec.experiments import COMPARE_MODELS, INDUCTIVE, ArgumentError
from motorec.experiments.training import results_table

__all__ = ["main", "run", "UserError", "results_table", "COMPARE_MODELS", "INDUCTIVE"]

EXIT_USAGE = 2
EXIT_WRITE = 1


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


def _flag(name: str) -> str:
    """The flag of an experiments function's argument (``top_k`` -> ``--top-k``)."""
    return {"models": "--model"}.get(name, "--" + name.replace("_", "-"))


# ---------------------------------------------------------------------------------------------- parser
def _grid_arg(key: str):
    """argparse ``type`` of ``compare --grid-lr`` / ``--grid-reg``: comma-separated numbers, checked."""
    def parse(text: str):
        from motorec.experiments.compare import parse_grid

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
    t.add_argument("--config", metavar="FILE", help="YAML config (sections model, one per model, wrappers, train, "
                   "data)")
    t.add_argument("--print-config", action="store_true",
                   help="print the full effective config (the defaults with --config and the flags applied) and exit")
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
    c.add_argument("--draws", type=int, default=5, help="cold-item draws: split seeds F..F+N-1 (default 5)")
    c.add_argument("--draws-from", type=int, default=0, metavar="F", help="first draw (default 0); tuning stays "
                   "on draw 0, so a report on --draws-from 5 uses draws no choice was made on")
    c.add_argument("--variants", default="plain,wrapped", help="plain (wrappers off: ensemble 1, decoupled false; "
                   "row <model>) and/or wrapped (the config's wrappers; row <model>+wrapped); default both")
    c.add_argument("--ablations", action="store_true", help="add MoToRec's ablation rows (motorec-<name>: "
                   "no_sparse, no_rarity, no_item_item, continuous, no_tokenizer)")
    c.add_argument("--draws-for", metavar="ROW=N,...", help="fewer draws for some rows (their first N <= --draws): "
                   "ROW a row (knn+wrapped), a model (all its rows) or 'ablations'; the most specific wins")
    c.add_argument("--collect", nargs="+", metavar="DIR", help="train nothing: tabulate these compare outputs (e.g. "
                   "one per catalog) side by side into --out/collected.md")
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
                   "train.lr x model.lambda_reg, then each own key one at a time, by its validation score on draw 0 / "
                   "seed 0 (OUT/tune/), then one run per draw, seed and row with its choice (docs/BASELINES.md)")
    c.add_argument("--tune-reference", action="store_true", help="with --tune: tune motorec as well")
    c.add_argument("--no-own-grids", action="store_true", help="with --tune: only lr x reg, not each model's own "
                   "keys (motorec.experiments.grids)")
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


# ---------------------------------------------------------------------------------------------- commands
def cmd_train(args) -> Outcome:
    from motorec.experiments import build_config, train_models

    cfg = build_config(args.config, epochs=args.epochs, pretrain_epochs=args.pretrain_epochs, device=args.device,
                       backend=args.backend, seed=args.seed, split=args.split, split_seed=args.split_seed)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return Outcome(0)
    res = train_models(args.model, config=cfg, data=args.data, out=args.out, resume=args.resume,
                       inductive=args.inductive, threads=args.threads, quiet=args.quiet)
    if res.is_main:
        print(res.table())
        if args.inductive:
            print(f"\n{INDUCTIVE}: MoToRec trained without the {res.metrics[INDUCTIVE]['new_items']} held-out items' "
                  "features (selected on warm validation: no cold validation item is in its catalog), the items "
                  "added afterwards by with_new_items; evaluated on the full catalog")
        if res.capped:
            print(f"\nnote: {', '.join(res.capped)} reached the epoch cap ({cfg.train.epochs}) before early stopping: "
                  "validation recall was still improving, so these may be undertrained (raise --epochs)")
        print(f"\nwrote {res.metrics_path}")
    return Outcome(0, left_process_group=res.left_process_group)


def cmd_evaluate(args) -> Outcome:
    from motorec.experiments import evaluate_run

    print(results_table(evaluate_run(args.run, models=args.model, data=args.data, device=args.device or "cpu")))
    return Outcome(0)


def cmd_compare(args) -> Outcome:
    from motorec.experiments import run_compare
    from motorec.experiments.summary import collect

    name = "collected" if args.collect else "summary"
    defaults = {"model": None, "data": None, "config": None, "epochs": None, "tune": False, "ablations": False,
                "draws_for": None, "draws": 5, "draws_from": 0, "seeds": 1, "grid_lr": None, "grid_reg": None,
                "tune_reference": False, "no_own_grids": False, "variants": "plain,wrapped"}
    ignored = [k for k, v in defaults.items() if args.collect and getattr(args, k) != v]
    if ignored:
        raise SystemExit("motorec compare: --collect trains nothing; drop " + ", ".join(
            "--" + k.replace("_", "-") for k in ignored))
    try:
        if args.collect:
            collect(args.collect, args.out)
        else:
            run_compare(args.out, models=args.model, draws=args.draws, seeds=args.seeds, data=args.data,
                        config=args.config, epochs=args.epochs, threads=args.threads, jobs=args.jobs,
                        backend=args.backend, device=args.device, progress=not args.quiet, tune=args.tune,
                        grid_lr=args.grid_lr, grid_reg=args.grid_reg, tune_reference=args.tune_reference,
                        draws_from=args.draws_from, variants=args.variants.split(","), ablations=args.ablations,
                        own_grids=not args.no_own_grids, draws_for=args.draws_for)
    except RuntimeError as e:  # some runs failed: the finished ones stay, a re-run resumes the others
        print(f"motorec: error: {e}", file=sys.stderr)
        return Outcome(EXIT_WRITE)
    out = Path(args.out)
    print((out / f"{name}.md").read_text(), end="")
    print(f"\nwrote {out / f'{name}.json'} and {out / f'{name}.md'}")
    return Outcome(0)


def cmd_tokenize(args) -> Outcome:
    from motorec.experiments import tokenize

    tok = tokenize(args.run, output=args.output, device=args.device or "cpu")
    for path in tok.paths:
        print(f"wrote {path} ({tok.num_items} items; columns: "
              + ", ".join(f"{m} x{c.shape[1]}" for m, c in tok.codes.items()) + ")")
    return Outcome(0)


def cmd_recommend(args) -> Outcome:
    """Top-K lists per user over the run's catalog (and ``--new-items``), known items left out."""
    from motorec.experiments import recommend

    users = None
    if args.users is not None:
        try:
            users = [int(x) for x in args.users.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"--users must be comma-separated integer user ids, got {args.users!r}") from None
    r = recommend(args.run, model=args.model, new_items=args.new_items, top_k=args.top_k, users=users,
                  output=args.output, device=args.device or "cpu")
    print(f"wrote {r.path} (top {r.k} of {r.num_items} items for {r.num_users} users"
          + (f"; {r.new_items} new items are ids {r.catalog_items}..{r.num_items - 1}" if r.new_items else "") + ")")
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
    from motorec.experiments import USER_ERRORS
    from motorec.train.checkpoint import WriteError

    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return Outcome(EXIT_USAGE)
        cmd = {"train": cmd_train, "evaluate": cmd_evaluate, "compare": cmd_compare, "tokenize": cmd_tokenize,
               "recommend": cmd_recommend, "bench": cmd_bench}
        return cmd[args.command](args)
    except (UserError, *USER_ERRORS, WriteError) as e:
        if os.environ.get("MOTOREC_DEBUG"):
            raise
        msg = " ".join((e.render(_flag) if isinstance(e, ArgumentError) else str(e)).split())
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
