#!/usr/bin/env bash
# The test command the README gives: the whole suite, plus the CPU benchmark regression suite in quick mode;
# the 25 slowest tests are listed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pytest tests benchmarks/test_bench_cpu.py -q --durations=25 "$@"
