#!/usr/bin/env bash
# Compile-check every csrc/cuda/*.cu with nvcc (no link, no GPU needed), in parallel.
#
# The CPU torch wheel ships the CUDA-facing headers but not the CMake-generated
# c10/cuda/impl/cuda_cmake_macros.h, hence -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE (the file only sets export
# macros); the C++ ABI define must match torch's or host code would not link against it in a real build.
# Usage: .ci/nvcc_check.sh [extra nvcc flags...]   (env: PYTHON, NVCC, NVCC_ARCH=sm_90, JOBS,
#        NVCC_KEEP_DIR: keep each file's .o and nvcc log there; benchmarks/compile_check.py reads them)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
NVCC=${NVCC:-nvcc}
ARCH=${NVCC_ARCH:-sm_90}
JOBS=${JOBS:-$(nproc)}

if ! command -v "$NVCC" >/dev/null 2>&1; then
  echo "nvcc_check: FAILED: nvcc not found (set NVCC=/path/to/nvcc)" >&2
  exit 1
fi
mapfile -t INCLUDES < <("$PYTHON" -c "from torch.utils.cpp_extension import include_paths; print('\n'.join(include_paths()))")
ABI=$("$PYTHON" -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))")
shopt -s nullglob
SOURCES=(csrc/cuda/*.cu)
if [ ${#SOURCES[@]} -eq 0 ]; then
  echo "nvcc_check: FAILED: no csrc/cuda/*.cu found" >&2
  exit 1
fi

# The -D__CUDA_NO_* flags and --expt-relaxed-constexpr are what torch.utils.cpp_extension passes to nvcc
# (setup.py's build), so the check sees the same half/bf16 operator set as the real build.
FLAGS=(-c -std=c++17 "-arch=$ARCH" -O3 --expt-relaxed-constexpr -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE
       -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__
       -D__CUDA_NO_HALF2_OPERATORS__
       "-D_GLIBCXX_USE_CXX11_ABI=$ABI" -DMOTOREC_WITH_CUDA=1 -Xcompiler -fPIC -Xptxas -warn-spills
       -diag-suppress=3306)
for inc in "${INCLUDES[@]}"; do FLAGS+=("-I$inc"); done
FLAGS+=("$@")

if [ -n "${NVCC_KEEP_DIR:-}" ]; then
  OUT=$NVCC_KEEP_DIR
  mkdir -p "$OUT"
else
  OUT=$(mktemp -d)
  trap 'rm -rf "$OUT"' EXIT
fi
echo "nvcc_check: $("$NVCC" --version | tail -1)"
echo "nvcc_check: $NVCC ${FLAGS[*]} <file.cu> -o <tmp>.o   (${#SOURCES[@]} files, $JOBS in parallel)"

pids=()
for src in "${SOURCES[@]}"; do
  name=$(basename "$src" .cu)
  (
    start=$(date +%s)
    if "$NVCC" "${FLAGS[@]}" "$src" -o "$OUT/$name.o" >"$OUT/$name.log" 2>&1; then
      echo "ok   $src ($(( $(date +%s) - start )) s)" >"$OUT/$name.status"
    else
      echo "FAIL $src" >"$OUT/$name.status"
      exit 1
    fi
  ) &
  pids+=($!)
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 0.2; done
done

failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
for src in "${SOURCES[@]}"; do
  name=$(basename "$src" .cu)
  cat "$OUT/$name.status" 2>/dev/null || echo "FAIL $src (no status)"
  # Errors in full; warnings from our own files (torch's headers are not ours to fix), and register spills.
  if grep -q "FAIL" "$OUT/$name.status" 2>/dev/null; then
    cat "$OUT/$name.log" >&2
  else
    grep -E "^csrc/.*warning|spill" "$OUT/$name.log" | grep -v " 0 bytes spill stores, 0 bytes spill loads" || true
  fi
done
if [ "$failed" -ne 0 ]; then
  echo "nvcc_check: FAILED" >&2
  exit 1
fi
echo "nvcc_check: all ${#SOURCES[@]} CUDA sources compile for $ARCH"
