#!/usr/bin/env bash
# The CUDA C++ part of the GPU check, short (about 5 minutes): build _C with a plain g++ (the GPU image's
# /opt/gcc/bin/g++ links a private static C++ runtime: see setup.py), the C++ error path, the op tests with every
# result named (-v), the merge-path sweep, the train/spmm/propagate rows. Usage: bash benchmarks/gpu_cuda_check.sh OUTDIR
set -u -o pipefail
OUT=${1:?usage: bash benchmarks/gpu_cuda_check.sh OUTDIR}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 MOTOREC_WITH_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=$(nproc) PIP_NO_INDEX=1
[ -x /usr/bin/g++ ] && export CXX=${CXX:-/usr/bin/g++} CC=${CC:-/usr/bin/gcc}
FAILED=0
t() { local s=$1; shift; echo "== $* (timeout ${s}s)"; timeout --kill-after=5 "$s" "$@"; local rc=$?; echo "== rc=$rc"; (( rc != 0 )) && FAILED=$((FAILED+1)); return 0; }
t 100 "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . > "$OUT/build.log" 2>&1; tail -2 "$OUT/build.log"
t 30 "$PY" -m benchmarks.c_error_path 2>&1 | tee -a "$OUT/build.log"
t 30 "$PY" -c "import motorec; print(motorec.ops.explain(device='cuda'))" 2>&1 | tee -a "$OUT/build.log" | grep -E "loads|raised|auto picks|Error"
t ${TESTS_S:-80} "$PY" -m pytest tests/ops tests/cli/test_cli_bad_input.py tests/data/test_data_bad_input.py tests/train/test_step_sync.py -m "not slow" \
    -rfE -p no:cacheprovider -n 12 -v --timeout 60 > "$OUT/tests.log" 2>&1
grep -E "FAILED|ERROR|passed|failed" "$OUT/tests.log" | tail -25
t ${SWEEP_S:-50} "$PY" -m benchmarks.cuda_segment_sweep --segments 128 --items 64,128,256 --out "$OUT/sweep.csv" > "$OUT/sweep.log" 2>&1
tail -22 "$OUT/sweep.log"
t ${BENCH_S:-100} "$PY" -m benchmarks.run --quick --out "$OUT" --no-plot --only train,spmm,propagate > "$OUT/bench.log" 2>&1
grep -E "^(train|spmm|propagate) .* (cuda|auto|torch) " "$OUT/bench.log" | cut -c1-150 | tail -30
echo "gpu_cuda_check: $FAILED failed step(s)"
