"""motorec benchmark suite: one harness (:mod:`benchmarks.harness`), one ``bench_<op>.py`` per op, the
end-to-end training benchmark, plots, and the pytest-benchmark CPU regression suite.

Run everything with ``python -m benchmarks.run --quick`` (or ``--full``); see ``benchmarks/README.md``.
"""
