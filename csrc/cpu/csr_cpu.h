// OpenMP CSR row kernels shared by spmm_cpu.cpp and propagate_cpu.cpp.
//
// Rows are cut into chunks of about equal work (nnz + rows) by binary search on rowptr, because power-law
// degrees make equal row counts badly unbalanced. A row is computed in feature tiles whose accumulators are 8
// vector registers (GCC vector types); the vector width follows the best ISA found at run time (AVX-512 /
// AVX2 clones through the `target` attribute, since the extension is built without -march). Widths that are
// not a multiple of 16 bytes take a generic path with accumulators in L1.
// One tile walk fuses the layer-mean epilogue of propagate: no extra pass over the features.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "../csr_check.h"

#if defined(__GNUC__)
#define MOTOREC_INLINE inline __attribute__((always_inline))
#define MOTOREC_RESTRICT __restrict__
#define MOTOREC_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define MOTOREC_INLINE inline
#define MOTOREC_RESTRICT
#define MOTOREC_UNLIKELY(x) (x)
#endif

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define MOTOREC_X86_CLONES 1
#endif

namespace motorec {
namespace cpu {

// What a row tile does with its accumulated A[r, :] @ src (`acc`):
enum Mode : int {
  kSpmm = 0,  // out[r] = acc
  kMid = 1,   // next[r] = acc; out[r] = (first ? x0[r] : out[r]) + acc     (propagate, layer l < L)
  kLast = 2,  // out[r] = ((first ? x0[r] : out[r]) + acc) * scale           (propagate, layer L)
};

template <typename T, typename I>
struct RowArgs {
  const int64_t* rowptr;
  const I* col;
  const T* val;
  const T* src;  // [C, D] input of this layer
  T* out;        // [R, D] spmm output, or the running layer sum / final output of propagate
  T* next;       // [R, D] this layer's A @ src, read by the next layer (kMid only)
  const T* x0;   // [R, D] layer-0 term added by the first layer, else nullptr
  T scale;
  int64_t D;
  int64_t C;  // rows of src: col must lie in [0, C)
};

template <int MODE, typename T, typename I>
MOTOREC_INLINE void store_tile(const RowArgs<T, I>& a, int64_t r, int64_t d0, const T* MOTOREC_RESTRICT acc, int w) {
  T* MOTOREC_RESTRICT o = a.out + r * a.D + d0;
  if (MODE == kSpmm) {
#pragma omp simd
    for (int k = 0; k < w; ++k) o[k] = acc[k];
    return;
  }
  const T* MOTOREC_RESTRICT prev = a.x0 != nullptr ? a.x0 + r * a.D + d0 : o;
  if (MODE == kMid) {
    T* MOTOREC_RESTRICT n = a.next + r * a.D + d0;
#pragma omp simd
    for (int k = 0; k < w; ++k) {
      n[k] = acc[k];
      o[k] = prev[k] + acc[k];
    }
  } else {
    const T s = a.scale;
#pragma omp simd
    for (int k = 0; k < w; ++k) o[k] = (prev[k] + acc[k]) * s;
  }
}

// Gathered rows of src are scattered in memory: prefetch every cache line of a tile a few edges ahead.
constexpr int64_t kPrefetch = 8;
constexpr int kLine = 64;

// A tile of W columns held in W / VL vectors of VB bytes (GCC vector extensions: the clone's ISA decides
// whether a 64-byte vector is one zmm or two ymm). Plain arrays with unrolled loops left GCC emitting scalar
// FMAs and spilled accumulators.
template <int MODE, typename T, typename I, int W, int VB>
MOTOREC_INLINE void row_tile(const RowArgs<T, I>& a, int64_t r, int64_t p, int64_t q, int64_t d0, char* bad) {
  constexpr int VL = VB / static_cast<int>(sizeof(T));
  constexpr int NV = W / VL;
  static_assert(NV * VL == W, "tile width must be a multiple of the vector length");
  typedef T V __attribute__((vector_size(VB)));
  V acc[NV];
#pragma GCC unroll 16
  for (int i = 0; i < NV; ++i) acc[i] = V{};
  const I* MOTOREC_RESTRICT col = a.col;
  const T* MOTOREC_RESTRICT val = a.val;
  const T* MOTOREC_RESTRICT src = a.src + d0;
  const int64_t D = a.D;
  for (int64_t e = p; e < q; ++e) {
    if (e + kPrefetch < q) {
      const T* pf = src + static_cast<int64_t>(col[e + kPrefetch]) * D;
#pragma GCC unroll 16
      for (int k = 0; k < W; k += kLine / static_cast<int>(sizeof(T))) __builtin_prefetch(pf + k);
    }
    const int64_t c = static_cast<int64_t>(col[e]);
    if (MOTOREC_UNLIKELY(static_cast<uint64_t>(c) >= static_cast<uint64_t>(a.C))) {
      *bad = 1;
      continue;
    }
    const T v = val[e];
    const T* MOTOREC_RESTRICT xr = src + c * D;
#pragma GCC unroll 16
    for (int i = 0; i < NV; ++i) {
      V xv;
      __builtin_memcpy(&xv, xr + i * VL, VB);
      acc[i] += v * xv;
    }
  }
  T res[W];
  __builtin_memcpy(res, acc, sizeof(res));
  store_tile<MODE>(a, r, d0, res, W);
}

// A tile of a run-time width w <= W: for feature widths that are not a multiple of the vector width, where
// the fixed-width ladder would walk the row's edges once per power of two. Accumulators stay in L1.
template <int MODE, typename T, typename I, int W>
MOTOREC_INLINE void row_tile_dyn(const RowArgs<T, I>& a, int64_t r, int64_t p, int64_t q, int64_t d0, int w, char* bad) {
  T acc[W];
  for (int k = 0; k < w; ++k) acc[k] = T(0);
  const I* MOTOREC_RESTRICT col = a.col;
  const T* MOTOREC_RESTRICT val = a.val;
  const T* MOTOREC_RESTRICT src = a.src + d0;
  const int64_t D = a.D;
  for (int64_t e = p; e < q; ++e) {
    if (e + kPrefetch < q) {
      const T* pf = src + static_cast<int64_t>(col[e + kPrefetch]) * D;
      for (int k = 0; k < w; k += kLine / static_cast<int>(sizeof(T))) __builtin_prefetch(pf + k);
    }
    const int64_t c = static_cast<int64_t>(col[e]);
    if (MOTOREC_UNLIKELY(static_cast<uint64_t>(c) >= static_cast<uint64_t>(a.C))) {
      *bad = 1;
      continue;
    }
    const T v = val[e];
    const T* MOTOREC_RESTRICT xr = src + c * D;
#pragma omp simd
    for (int k = 0; k < w; ++k) acc[k] += v * xr[k];
  }
  store_tile<MODE>(a, r, d0, acc, w);
}

// One dot product per row (D = 1).
template <int MODE, typename T, typename I>
MOTOREC_INLINE void row_dot(const RowArgs<T, I>& a, int64_t r, int64_t p, int64_t q, char* bad) {
  T s = 0;
  for (int64_t e = p; e < q; ++e) {
    const int64_t c = static_cast<int64_t>(a.col[e]);
    if (MOTOREC_UNLIKELY(static_cast<uint64_t>(c) >= static_cast<uint64_t>(a.C))) {
      *bad = 1;
      continue;
    }
    s += a.val[e] * a.src[c];
  }
  const T acc[1] = {s};
  store_tile<MODE>(a, r, 0, acc, 1);
}

// Tiles of W columns while they fit, then one tile each of W/2, W/4, ..., down to one vector.
template <int MODE, typename T, typename I, int W, int MINW, int VB>
MOTOREC_INLINE void row_tiles(const RowArgs<T, I>& a, int64_t r, int64_t p, int64_t q, int64_t d0, char* bad) {
  constexpr int TB = W * static_cast<int>(sizeof(T)) < VB ? W * static_cast<int>(sizeof(T)) : VB;
  for (; d0 + W <= a.D; d0 += W) row_tile<MODE, T, I, W, TB>(a, r, p, q, d0, bad);
  if constexpr (W > MINW) row_tiles<MODE, T, I, W / 2, MINW, VB>(a, r, p, q, d0, bad);
}

template <int MODE, typename T, typename I, int VB>
MOTOREC_INLINE void rows_impl(const RowArgs<T, I>& a, int64_t r0, int64_t r1, char* bad) {
  constexpr int W = 8 * VB / static_cast<int>(sizeof(T));  // 8 vector registers of accumulators
  constexpr int MINW = 16 / static_cast<int>(sizeof(T));  // narrowest fixed tile: one 16-byte vector
  constexpr int WDYN = 256 / static_cast<int>(sizeof(T));
  const int64_t D = a.D;
  if (D == 1) {
    for (int64_t r = r0; r < r1; ++r) row_dot<MODE, T, I>(a, r, a.rowptr[r], a.rowptr[r + 1], bad);
  } else if (D % MINW == 0) {
    for (int64_t r = r0; r < r1; ++r) row_tiles<MODE, T, I, W, MINW, VB>(a, r, a.rowptr[r], a.rowptr[r + 1], 0, bad);
  } else {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t p = a.rowptr[r], q = a.rowptr[r + 1];
      for (int64_t d0 = 0; d0 < D; d0 += WDYN)
        row_tile_dyn<MODE, T, I, WDYN>(a, r, p, q, d0, static_cast<int>(std::min<int64_t>(WDYN, D - d0)), bad);
    }
  }
}

// Per-ISA entry points: rows [r0, r1) with the widest tile that fits 8 vector registers of accumulators.
template <int MODE, typename T, typename I>
void rows_default(const RowArgs<T, I>& a, int64_t r0, int64_t r1, char* bad) {
  rows_impl<MODE, T, I, 16>(a, r0, r1, bad);
}
#ifdef MOTOREC_X86_CLONES
template <int MODE, typename T, typename I>
__attribute__((target("avx2,fma"))) void rows_avx2(const RowArgs<T, I>& a, int64_t r0, int64_t r1, char* bad) {
  rows_impl<MODE, T, I, 32>(a, r0, r1, bad);
}
template <int MODE, typename T, typename I>
__attribute__((target("avx512f,avx2,fma"))) void rows_avx512(const RowArgs<T, I>& a, int64_t r0, int64_t r1, char* bad) {
  rows_impl<MODE, T, I, 64>(a, r0, r1, bad);
}
#endif

template <typename T, typename I>
using RowsFn = void (*)(const RowArgs<T, I>&, int64_t, int64_t, char*);

// MOTOREC_CPU_ISA=default|avx2|avx512 caps the ISA (for benchmarking and testing each path).
inline int isa_level() {
  static const int level = [] {
    int best = 0;
#ifdef MOTOREC_X86_CLONES
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = 1;
    if (best == 1 && __builtin_cpu_supports("avx512f")) best = 2;
#endif
    if (const char* env = std::getenv("MOTOREC_CPU_ISA")) {
      const std::string s(env);
      const int cap = s == "default" ? 0 : s == "avx2" ? 1 : 2;
      best = std::min(best, cap);
    }
    return best;
  }();
  return level;
}

template <int MODE, typename T, typename I>
RowsFn<T, I> rows_fn() {
#ifdef MOTOREC_X86_CLONES
  switch (isa_level()) {
    case 2:
      return &rows_avx512<MODE, T, I>;
    case 1:
      return &rows_avx2<MODE, T, I>;
    default:
      break;
  }
#endif
  return &rows_default<MODE, T, I>;
}

// Row boundaries of `chunks` pieces of about equal work, work(r) = rowptr[r] + r (edges plus row overhead).
inline std::vector<int64_t> partition_rows(const int64_t* rowptr, int64_t R, int64_t chunks) {
  std::vector<int64_t> bounds(chunks + 1);
  const int64_t total = rowptr[R] + R;
  bounds[0] = 0;
  for (int64_t k = 1; k < chunks; ++k) {
    const int64_t target = static_cast<int64_t>(static_cast<double>(total) * k / chunks);
    int64_t lo = bounds[k - 1], hi = R;  // first r in [lo, R] with work(r) >= target
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (rowptr[mid] + mid < target) lo = mid + 1; else hi = mid;
    }
    bounds[k] = lo;
  }
  bounds[chunks] = R;
  return bounds;
}

inline int num_threads_for(int64_t work) {
  // Below ~32k multiply-adds a parallel region costs more than it saves.
  if (work < (int64_t{1} << 15) || omp_in_parallel()) return 1;
  return std::max(1, at::get_num_threads());
}

// Validates rowptr's contents (starts at 0, non-decreasing, ends at nnz), linear in rows. Column indices are
// checked inside the kernels (an out-of-range edge is skipped and flagged, then report_bad_col raises).
inline void check_rowptr(const char* op, const int64_t* rowptr, int64_t R, int64_t nnz, int threads) {
  TORCH_CHECK(rowptr[0] == 0, op, ": rowptr[0] must be 0, got ", rowptr[0]);
  TORCH_CHECK(rowptr[R] == nnz, op, ": rowptr[-1] must equal nnz = ", nnz, ", got ", rowptr[R]);
  int64_t bad_row = -1;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(max : bad_row)
  for (int64_t r = 0; r < R; ++r)
    if (rowptr[r + 1] < rowptr[r]) bad_row = std::max(bad_row, r);
  TORCH_CHECK(bad_row < 0, op, ": rowptr must be non-decreasing, but rowptr[", bad_row + 1, "] < rowptr[", bad_row,
              "]");
}

// Raises naming an out-of-range column index, after a kernel flagged one (the slow path).
template <typename I>
[[noreturn]] void report_bad_col(const char* op, const I* col, int64_t nnz, int64_t num_cols) {
  for (int64_t e = 0; e < nnz; ++e) {
    const int64_t c = static_cast<int64_t>(col[e]);
    TORCH_CHECK(c >= 0, op, ": col contains a negative index (", c, ")");
    TORCH_CHECK(c < num_cols, op, ": col contains index ", c, ", out of range for x with ", num_cols, " rows");
  }
  TORCH_CHECK(false, op, ": col changed while the kernel ran");
}

// Calls fn(T{}, I{}) with T the dtype of x (float or double) and I the index type of col.
template <typename Fn>
void dispatch_types(at::ScalarType xt, at::ScalarType it, Fn&& fn) {
  auto with_index = [&](auto t) {
    if (it == at::kInt) fn(t, int32_t{});
    else fn(t, int64_t{});
  };
  if (xt == at::kFloat) with_index(float{});
  else with_index(double{});
}

}  // namespace cpu
}  // namespace motorec
