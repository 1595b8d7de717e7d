"""One run of :func:`motorec.experiments.run_compare` in its own process: ``python -m motorec.experiments.worker
--out DIR --split-seed D --seed S --model M [...]`` trains through :func:`motorec.experiments.train_models` and
prints the results table (the run's log). Exit codes as the ``motorec`` command's: 0 done, 2 a user error, 1 a
file that could not be written, each as one line on stderr.

A process per run keeps runs apart (memory, threads, a crash) and lets ``jobs`` of them go at a time.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m motorec.experiments.worker",
                                description="train models on one cold-item draw and seed (one compare run)")
    p.add_argument("--out", required=True, help="the run directory")
    p.add_argument("--model", action="append", required=True, help="model to train (repeatable)")
    p.add_argument("--split-seed", type=int, required=True, help="the cold-item draw (data.seed)")
    p.add_argument("--seed", type=int, required=True, help="the training seed (train.seed)")
    p.add_argument("--data", help="MMRec folder or synthetic spec (default: bundled MovieLens-100k)")
    p.add_argument("--config", help="YAML config")
    p.add_argument("--epochs", type=int, help="joint training epochs")
    p.add_argument("--backend", help="kernel backend")
    p.add_argument("--device", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log lines on stderr")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Parse ``argv``, train, print the results table; returns the exit code."""
    from motorec.experiments.errors import USER_ERRORS
    from motorec.experiments.training import build_config, train_models
    from motorec.train import WriteError

    args = _parser().parse_args(argv)
    try:
        cfg = build_config(args.config, epochs=args.epochs, device=args.device, backend=args.backend,
                           seed=args.seed, split_seed=args.split_seed)
        res = train_models(args.model, config=cfg, data=args.data, out=args.out, resume=args.resume,
                           threads=args.threads, quiet=args.quiet)
    except (*USER_ERRORS, WriteError) as e:
        print("motorec: error: " + " ".join(str(e).split()), file=sys.stderr)
        return 1 if isinstance(e, WriteError) else 2
    print(res.table())
    print(f"\nwrote {res.metrics_path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
