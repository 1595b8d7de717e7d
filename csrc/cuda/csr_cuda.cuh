// CUDA CSR row kernels shared by spmm_cuda.cu and propagate_cuda.cu.
//
// Layout: a group of G lanes (G a power of two <= 32, several groups per warp when D is small) computes one
// row; each lane owns VEC contiguous features and reads them with one 16-byte load (float4, 2 x double,
// 8 x half/bf16) per edge. The group reads G (col, val) pairs at once, coalesced, and broadcasts them with
// shuffles (GE-SpMM's coalesced row caching). Accumulation is float32 (float64 for double).
//
// Power-law rows: a row of more than S edges would hold one group for its whole length (one dependent
// round trip to memory per few edges), so the edge list is cut into fixed segments of S edges; a first
// kernel sums each heavy row's part of each segment into a workspace (deterministic, no atomics), and the
// row kernel adds those partial sums instead of walking the heavy row. The row kernel's epilogue also fuses
// propagate's running layer mean. S is kDefaultSegment unless MOTOREC_CUDA_SEGMENT says otherwise (a
// tuning knob read at each call; README "Installing and building"); the measurements behind the default
// are in benchmarks/results/GPU_NOTES.md.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "../csr_check.h"

namespace motorec {
namespace cuda {

constexpr int kBlock = 256;
constexpr int64_t kDefaultSegment = 128;

// The segment length S: MOTOREC_CUDA_SEGMENT (an integer in [16, 1 << 20]) or kDefaultSegment.
inline int64_t segment_length() {
  const char* env = std::getenv("MOTOREC_CUDA_SEGMENT");
  if (env == nullptr || *env == '\0') return kDefaultSegment;
  char* end = nullptr;
  const long long s = std::strtoll(env, &end, 10);
  TORCH_CHECK(end != env && *end == '\0' && s >= 16 && s <= (1 << 20),
              "MOTOREC_CUDA_SEGMENT must be an integer in [16, 1048576], got '", env, "'");
  return static_cast<int64_t>(s);
}

enum Mode : int {
  kSpmm = 0,  // out[r] = acc
  kMid = 1,   // next[r] = acc; sum[r] = (x0 ? x0[r] : sum[r]) + acc         (propagate, layer l < L)
  kLast = 2,  // out[r] = ((x0 ? x0[r] : sum[r]) + acc) * scale              (propagate, layer L)
};

template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <typename T, typename A, typename I>
struct Params {
  const int64_t* rowptr;
  const I* col;
  const A* val;
  const T* src;  // [C, D], this layer's input
  int64_t R, C, D, nnz;
  T* out;        // kSpmm / kLast output [R, D]
  T* next;       // kMid: this layer's product [R, D]
  A* sum;        // running layer sum [R, D] (aliases out when T == A)
  const T* x0;   // layer-0 term, added by the first layer (else nullptr)
  A scale;
  A* partial;    // [2 * num_segments, D] partial sums of heavy rows
  int64_t seg;   // segment length S: rows of more than S edges are heavy
  int G;         // lanes per row
};

template <typename T, typename A, int VEC>
__device__ __forceinline__ void load_acc(const T* p, A (&x)[VEC]) {
  const Vec<T, VEC> v = *reinterpret_cast<const Vec<T, VEC>*>(p);
#pragma unroll
  for (int k = 0; k < VEC; ++k) x[k] = static_cast<A>(v.v[k]);
}

template <typename T, typename A, int VEC>
__device__ __forceinline__ void store_vec(T* p, const A (&x)[VEC]) {
  Vec<T, VEC> v;
#pragma unroll
  for (int k = 0; k < VEC; ++k) v.v[k] = static_cast<T>(x[k]);
  *reinterpret_cast<Vec<T, VEC>*>(p) = v;
}

__device__ __forceinline__ unsigned group_mask(int G) {
  if (G == 32) return 0xffffffffu;
  const int first = (threadIdx.x & 31) / G * G;
  return ((1u << G) - 1u) << first;
}

// Adds sum_{e in [p, q)} val[e] * src[col[e], f .. f + VEC) to acc. Every lane of the group must call it
// with the same p, q (shuffles); lanes with f >= D only relay.
template <typename T, typename A, typename I, int VEC>
__device__ __forceinline__ void gather_edges(const Params<T, A, I>& P, int64_t p, int64_t q, int64_t f, int lane,
                                             unsigned mask, A (&acc)[VEC]) {
  const int G = P.G;
  const bool active = f < P.D;
  for (int64_t base = p; base < q; base += G) {
    const int64_t e = base + lane;
    I c = 0;
    A v = 0;
    if (e < q) {
      c = P.col[e];
      v = P.val[e];
      // An out-of-range column would read out of bounds. __trap() rather than CUDA_KERNEL_ASSERT: the
      // assert's __assert_fail call made ptxas spill registers in the hot loop.
      if (c < 0 || c >= P.C) __trap();
    }
    const int n = static_cast<int>(q - base < G ? q - base : G);
#pragma unroll 4
    for (int j = 0; j < n; ++j) {
      const I cj = __shfl_sync(mask, c, j, G);
      const A vj = __shfl_sync(mask, v, j, G);
      if (active) {
        A xv[VEC];
        load_acc<T, A, VEC>(P.src + static_cast<int64_t>(cj) * P.D + f, xv);
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc[k] += vj * xv[k];
      }
    }
  }
}

__device__ __forceinline__ int64_t row_of(const int64_t* rowptr, int64_t R, int64_t k) {
  // Largest r < R with rowptr[r] <= k (the row holding edge k; empty rows are skipped).
  int64_t lo = 0, hi = R - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (rowptr[mid] <= k) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// The part of row r inside edges [k0, k1) into dst[0, D), if r is heavy.
template <typename T, typename A, typename I, int VEC>
__device__ __forceinline__ void heavy_piece(const Params<T, A, I>& P, int64_t r, int64_t k0, int64_t k1, A* dst,
                                            int lane, unsigned mask) {
  const int64_t p = P.rowptr[r], q = P.rowptr[r + 1];
  if (q - p <= P.seg) return;
  const int64_t lo = max(p, k0), hi = min(q, k1);
  for (int64_t f = static_cast<int64_t>(lane) * VEC; f - lane * VEC < P.D; f += static_cast<int64_t>(P.G) * VEC) {
    A acc[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = 0;
    gather_edges<T, A, I, VEC>(P, lo, hi, f, lane, mask, acc);
    if (f < P.D) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) dst[f + k] = acc[k];
    }
  }
}

// One group per segment [s * S, (s + 1) * S) of the edge list: writes the part of a heavy row
// (more than S edges) that starts in or crosses this segment. Piece 0 is the row holding the
// segment's first edge, piece 1 the row holding its last edge when that row is another one.
template <typename T, typename A, typename I, int VEC>
__global__ void __launch_bounds__(kBlock) heavy_partial_kernel(const Params<T, A, I> P, int64_t num_segments) {
  const int G = P.G;
  const int64_t s = (static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x) / G;
  if (s >= num_segments) return;
  const int lane = threadIdx.x % G;
  const unsigned mask = group_mask(G);
  const int64_t k0 = s * P.seg;
  const int64_t k1 = min(k0 + P.seg, P.nnz);
  const int64_t r0 = row_of(P.rowptr, P.R, k0);
  const int64_t r1 = row_of(P.rowptr, P.R, k1 - 1);
  heavy_piece<T, A, I, VEC>(P, r0, k0, k1, P.partial + 2 * s * P.D, lane, mask);
  if (r1 != r0) heavy_piece<T, A, I, VEC>(P, r1, k0, k1, P.partial + (2 * s + 1) * P.D, lane, mask);
}

// Row r's features [f, f + VEC) of the product are acc: store them with the MODE epilogue.
template <typename T, typename A, typename I, int VEC, int MODE>
__device__ __forceinline__ void write_row(const Params<T, A, I>& P, int64_t r, int64_t f, const A (&acc)[VEC]) {
  const int64_t o = r * P.D + f;
  if (MODE == kSpmm) {
    store_vec<T, A, VEC>(P.out + o, acc);
  } else {
    A prev[VEC];
    if (P.x0 != nullptr) {
      load_acc<T, A, VEC>(P.x0 + o, prev);
    } else {
#pragma unroll
      for (int k = 0; k < VEC; ++k) prev[k] = P.sum[o + k];
    }
    if (MODE == kMid) {
      store_vec<T, A, VEC>(P.next + o, acc);
#pragma unroll
      for (int k = 0; k < VEC; ++k) P.sum[o + k] = prev[k] + acc[k];
    } else {
      A res[VEC];
#pragma unroll
      for (int k = 0; k < VEC; ++k) res[k] = (prev[k] + acc[k]) * P.scale;
      store_vec<T, A, VEC>(P.out + o, res);
    }
  }
}

template <typename T, typename A, typename I, int VEC, int MODE>
__global__ void __launch_bounds__(kBlock) row_kernel(const Params<T, A, I> P) {
  const int G = P.G;
  const int64_t r = (static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x) / G;
  if (r >= P.R) return;
  const int lane = threadIdx.x % G;
  const unsigned mask = group_mask(G);
  const int64_t p = P.rowptr[r], q = P.rowptr[r + 1];
  const bool heavy = q - p > P.seg;
  for (int64_t f = static_cast<int64_t>(lane) * VEC; f - lane * VEC < P.D; f += static_cast<int64_t>(G) * VEC) {
    A acc[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = 0;
    if (!heavy) {
      gather_edges<T, A, I, VEC>(P, p, q, f, lane, mask, acc);
    } else if (f < P.D) {
      // Unrolled so that several partial-sum loads are in flight (a heavy row has (q - p) / S of them).
#pragma unroll 8
      for (int64_t s = p / P.seg; s <= (q - 1) / P.seg; ++s) {
        const A* src = P.partial + (2 * s + (s * P.seg >= p ? 0 : 1)) * P.D + f;
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc[k] += src[k];
      }
    }
    if (f < P.D) write_row<T, A, I, VEC, MODE>(P, r, f, acc);
  }
}

inline int lanes_per_row(int64_t D, int vec) {
  const int64_t lanes = (D + vec - 1) / vec;
  int G = 1;
  while (G < 32 && G < lanes) G *= 2;
  return G;
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// ---------------------------------------------------------------------------------------------- merge path
// Equal-work kernels (Merrill & Garland's merge-based CSR SpMV, one G-lane group per part): the merge path of
// the R row ends and the nnz edges is cut into parts of equal length (motorec.graph.merge_path_partition,
// cached on the Graph); coords[0][p] rows are finished and coords[1][p] edges consumed before part p. A part
// writes every row that starts and ends inside it (with the MODE epilogue), and parks the pieces of rows cut
// by its boundaries in the workspace: slot 2p for its first row when that row started earlier, slot 2p + 1
// for its last row when that row goes on. merge_fixup_kernel then completes each cut row in the part where it
// ends, adding its pieces in a fixed order (deterministic, no atomics). tests/ops/test_merge_path.py emulates both.
template <typename J>
struct MergeCoords {
  const J* rows;   // [P + 1]
  const J* edges;  // [P + 1]
  int64_t parts;
};

template <typename T, typename A, typename I, typename J, int VEC, int MODE>
__global__ void __launch_bounds__(kBlock, 1) merge_path_kernel(const Params<T, A, I> P, const MergeCoords<J> M) {
  const int G = P.G;
  const int64_t p = (static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x) / G;
  if (p >= M.parts) return;
  const int lane = threadIdx.x % G;
  const unsigned mask = group_mask(G);
  const int64_t r0 = M.rows[p], e0 = M.edges[p], r1 = M.rows[p + 1], e1 = M.edges[p + 1];
  const int64_t r_last = r1 < P.R - 1 ? r1 : P.R - 1;
  for (int64_t f = static_cast<int64_t>(lane) * VEC; f - lane * VEC < P.D; f += static_cast<int64_t>(G) * VEC) {
    for (int64_t r = r0; r <= r_last; ++r) {
      const int64_t rs = P.rowptr[r], re = P.rowptr[r + 1];
      const int64_t lo = rs > e0 ? rs : e0;
      if (r == r1 && e1 <= lo) break;  // the part ends before this row's first edge
      const int64_t hi = re < e1 ? re : e1;
      A acc[VEC];
#pragma unroll
      for (int k = 0; k < VEC; ++k) acc[k] = 0;
      gather_edges<T, A, I, VEC>(P, lo, hi, f, lane, mask, acc);
      if (f >= P.D) continue;
      const bool starts_here = r > r0 || e0 == rs;
      if (starts_here && r < r1) {
        write_row<T, A, I, VEC, MODE>(P, r, f, acc);
      } else {
        A* dst = P.partial + (2 * p + (r == r0 && !starts_here ? 0 : 1)) * P.D + f;
#pragma unroll
        for (int k = 0; k < VEC; ++k) dst[k] = acc[k];
      }
    }
  }
}

// Completes the cut row that ends in part p (if any): its piece in p, the whole-part pieces of the parts
// inside it, and the piece of the part where it starts, summed in that order.
template <typename T, typename A, typename I, typename J, int VEC, int MODE>
__global__ void __launch_bounds__(kBlock) merge_fixup_kernel(const Params<T, A, I> P, const MergeCoords<J> M) {
  const int G = P.G;
  const int64_t p = (static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x) / G;
  if (p >= M.parts) return;
  const int64_t r0 = M.rows[p], e0 = M.edges[p];
  if (r0 >= P.R || r0 >= M.rows[p + 1]) return;
  const int64_t rs = P.rowptr[r0];
  if (e0 == rs) return;
  const int lane = threadIdx.x % G;
  for (int64_t f = static_cast<int64_t>(lane) * VEC; f < P.D; f += static_cast<int64_t>(G) * VEC) {
    A acc[VEC];
    const A* src = P.partial + 2 * p * P.D + f;
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = src[k];
    for (int64_t q = p - 1; q >= 0; --q) {
      const bool inside = M.rows[q] == r0 && M.edges[q] > rs;
      src = P.partial + (2 * q + (inside ? 0 : 1)) * P.D + f;
#pragma unroll
      for (int k = 0; k < VEC; ++k) acc[k] += src[k];
      if (!inside) break;
    }
    write_row<T, A, I, VEC, MODE>(P, r0, f, acc);
  }
}

// One product layer on the merge path: the main kernel, then the fix-up only if some row is cut.
template <typename T, typename A, typename I, typename J, int MODE>
void launch_merge_layer(Params<T, A, I> P, const MergeCoords<J>& M, bool split_rows, bool vectorized,
                        cudaStream_t stream) {
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  P.G = lanes_per_row(P.D, vectorized ? V : 1);
  if (M.parts == 0) return;
  const int64_t groups_per_block = kBlock / P.G;
  const int64_t blocks = (M.parts + groups_per_block - 1) / groups_per_block;
  if (vectorized) merge_path_kernel<T, A, I, J, V, MODE><<<blocks, kBlock, 0, stream>>>(P, M);
  else merge_path_kernel<T, A, I, J, 1, MODE><<<blocks, kBlock, 0, stream>>>(P, M);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!split_rows) return;
  if (vectorized) merge_fixup_kernel<T, A, I, J, V, MODE><<<blocks, kBlock, 0, stream>>>(P, M);
  else merge_fixup_kernel<T, A, I, J, 1, MODE><<<blocks, kBlock, 0, stream>>>(P, M);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// One product layer: the heavy-row partial sums, then the row kernel with the MODE epilogue.
template <typename T, typename A, typename I, int MODE>
void launch_layer(Params<T, A, I> P, bool vectorized, cudaStream_t stream) {
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  const int vec = vectorized ? V : 1;
  P.G = lanes_per_row(P.D, vec);
  const int64_t groups_per_block = kBlock / P.G;
  const int64_t num_segments = (P.nnz + P.seg - 1) / P.seg;
  if (num_segments > 0) {
    const int64_t blocks = (num_segments + groups_per_block - 1) / groups_per_block;
    if (vectorized) heavy_partial_kernel<T, A, I, V><<<blocks, kBlock, 0, stream>>>(P, num_segments);
    else heavy_partial_kernel<T, A, I, 1><<<blocks, kBlock, 0, stream>>>(P, num_segments);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const int64_t blocks = (P.R + groups_per_block - 1) / groups_per_block;
  if (vectorized) row_kernel<T, A, I, V, MODE><<<blocks, kBlock, 0, stream>>>(P);
  else row_kernel<T, A, I, 1, MODE><<<blocks, kBlock, 0, stream>>>(P);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The workspace of heavy-row partial sums for a graph of nnz edges, D features and segment length seg.
inline at::Tensor partial_workspace(int64_t nnz, int64_t D, int64_t seg, at::ScalarType acc,
                                    const at::Device& device) {
  const int64_t num_segments = (nnz + seg - 1) / seg;
  return at::empty({2 * num_segments, D}, at::TensorOptions().dtype(acc).device(device));
}

// The merge-path coordinates of a coords tensor [2, P + 1] (int32 or int64, contiguous, on x's device).
template <typename J>
MergeCoords<J> merge_coords(const at::Tensor& coords) {
  MergeCoords<J> M;
  M.parts = coords.size(1) - 1;
  M.rows = coords.data_ptr<J>();
  M.edges = M.rows + coords.size(1);
  return M;
}

inline void check_merge_coords(const char* op, const at::Tensor& coords, const at::Tensor& x) {
  TORCH_CHECK(coords.dim() == 2 && coords.size(0) == 2 && coords.size(1) >= 1, op,
              ": coords must be [2, P + 1] (Graph.merge_path().coords), got ", coords.sizes());
  TORCH_CHECK(coords.scalar_type() == at::kInt || coords.scalar_type() == at::kLong, op,
              ": coords must be int32 or int64, got ", coords.scalar_type());
  TORCH_CHECK(coords.device() == x.device(), op, ": coords is on ", coords.device(), " but x is on ", x.device());
  TORCH_CHECK(coords.is_contiguous(), op, ": coords must be contiguous");
}

// Calls fn(T{}, I{}) with T the storage type of x's dtype and I the index type of col.
template <typename Fn>
void dispatch_types(at::ScalarType xt, at::ScalarType it, Fn&& fn) {
  auto with_index = [&](auto t) {
    if (it == at::kInt) fn(t, int32_t{});
    else fn(t, int64_t{});
  };
  switch (xt) {
    case at::kFloat: with_index(float{}); break;
    case at::kDouble: with_index(double{}); break;
    case at::kHalf: with_index(c10::Half{}); break;
    case at::kBFloat16: with_index(c10::BFloat16{}); break;
    default: TORCH_CHECK(false, "unsupported dtype ", xt);
  }
}

}  // namespace cuda
}  // namespace motorec
