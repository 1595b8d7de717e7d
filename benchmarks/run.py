"""Run every benchmark (``benchmarks/bench_*.py``), print one table, append the CSV and draw the charts.

Usage::

    python -m benchmarks.run --quick             # the target shapes (CPU: the CPU targets; GPU: the issue's)
    python -m benchmarks.run --full --out DIR    # the whole grid, CSV and PNGs into DIR
    python -m benchmarks.run --only propagate,residual_quantize --providers torch,cpu

Each ``bench_<name>.py`` exposes ``BENCHES`` (a list of :class:`benchmarks.harness.OpBench`). Rows are written
to ``<out>/<device-slug>.csv`` as they are measured. Exit status 1 when any row FAILED its check.
"""
from __future__ import annotations

import argparse
import glob
import importlib
import os
import sys
import time
from typing import List, Optional, Sequence

from benchmarks import harness

HERE = os.path.dirname(os.path.abspath(__file__))
# The issue targets first (a run cut by a time limit keeps them); spmm, one layer of propagate, last.
ORDER = ("residual_quantize", "propagate", "train", "spmm")


def discover() -> List[str]:
    """Names ``<name>`` of every ``benchmarks/bench_<name>.py``, in :data:`ORDER`, then any others."""
    names = [os.path.basename(p)[len("bench_"):-3] for p in glob.glob(os.path.join(HERE, "bench_*.py"))]
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_arguments(parser)
    parser.add_argument("--only", default=None, help=f"comma-separated benches to run (of: {', '.join(discover())})")
    parser.add_argument("--no-plot", action="store_true", help="do not draw the PNG charts")
    args = parser.parse_args(argv)
    names = discover()
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise SystemExit(f"--only: unknown bench {', '.join(unknown)}; benches are {', '.join(names)}")
        names = [n for n in names if n in wanted]
    runner = harness.runner_from_args(args)
    print(f"# {runner.base['device']}, torch {runner.base['torch_version']}, triton {runner.base['triton_version']}, "
          f"git {runner.base['git_sha']}, size={runner.size}, benches: {', '.join(names)}"
          + ("" if args.no_csv else f" -> {runner.csv_path}"), flush=True)
    t0 = time.perf_counter()
    for name in names:
        mod = importlib.import_module(f"benchmarks.bench_{name}")
        print(f"\n## {name}", flush=True)
        for bench in mod.BENCHES:
            runner.run(bench)
    print()
    print(harness.format_table(runner.rows))
    print(harness.summary(runner.rows))
    print(f"({time.perf_counter() - t0:.0f} s)")
    if not args.no_plot and not args.no_csv:
        try:
            from benchmarks import plot

            for path in plot.plot_csv(runner.csv_path, args.out):
                print(f"wrote {path}")
        except ImportError as e:  # matplotlib is optional (pip install motorec[bench])
            print(f"no charts: {e}")
    return 1 if any(str(r.get("status", "")).startswith("FAILED") for r in runner.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
