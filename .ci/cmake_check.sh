#!/usr/bin/env bash
# Configure, build and test the libtorch (CMake) build of motorec's ops into build-cmake/; fails loudly.
# Usage: .ci/cmake_check.sh [extra cmake configure args, e.g. -DWITH_CUDA=ON]   (env: PYTHON, JOBS, BUILD_DIR)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
JOBS=${JOBS:-$(nproc)}
BUILD_DIR=${BUILD_DIR:-build-cmake}
mkdir -p "$BUILD_DIR"

PREFIX=$("$PYTHON" -c "import torch.utils; print(torch.utils.cmake_prefix_path)")
echo "cmake_check: torch $("$PYTHON" -c 'import torch; print(torch.__version__)') from $PREFIX"
echo "cmake_check: cmake -S . -B $BUILD_DIR -DCMAKE_PREFIX_PATH=$PREFIX -DCMAKE_BUILD_TYPE=Release $*"
if ! cmake -S . -B "$BUILD_DIR" -DCMAKE_PREFIX_PATH="$PREFIX" -DCMAKE_BUILD_TYPE=Release "$@" >"$BUILD_DIR/check-configure.log" 2>&1; then
  cat "$BUILD_DIR/check-configure.log" >&2
  echo "cmake_check: FAILED at configure" >&2
  exit 1
fi
echo "cmake_check: cmake --build $BUILD_DIR -j $JOBS"
if ! cmake --build "$BUILD_DIR" -j "$JOBS" >"$BUILD_DIR/check-build.log" 2>&1; then
  grep -E "error|Error" -A3 "$BUILD_DIR/check-build.log" | head -100 >&2
  echo "cmake_check: FAILED at build (full log: $BUILD_DIR/check-build.log)" >&2
  exit 1
fi
echo "cmake_check: ctest --test-dir $BUILD_DIR --output-on-failure"
if ! (cd "$BUILD_DIR" && ctest --output-on-failure); then
  echo "cmake_check: FAILED at ctest" >&2
  exit 1
fi

echo "cmake_check: ok"
