// motorec_C::residual_quantize_fwd / residual_quantize_bwd on CPU.
//
// Forward: OpenMP over blocks of kBlockRows rows. Per block and level, one BLAS product (at::mm_out) of the
// residual block with the level's codebook^T gives an [rows, K] tile of dot products that stays in L2; a fused
// scan turns it into a_j = ||c_j||^2 - 2 r.c_j and its minimum, then re-checks every codeword whose a_j lies
// within the GEMM's rounding bound of that minimum with the exact distance ||r - c_j||^2 (difference of
// vectors, accumulated in double). The codes are therefore the argmin of the exact distance to the working-
// precision residual (ties: lowest index), not of the cancellation-prone expanded form. The residual is
// updated in place and the next level runs on the same block while it is still in cache. No [N, K] tensor.
// The bound assumes a float32/float64 GEMM (torch's default; not a reduced-precision fp32 matmul mode).
//
// Backward (definition in motorec/reference/residual_quantize.py): residuals are recomputed from x and the
// codes with the same operations as the forward (bit-identical), grad_x is written per row, and the codebook
// gradient is accumulated per row chunk into private buffers (no races, deterministic for a thread count),
// then reduced.
//
// Shapes: x [N, D] float32|float64, codebooks [L, K, D] same dtype ->
//   codes [N, L] int64, quantized [N, D] dtype of x, residual_sq [N, L] dtype of x (float32 or float64).
// Backward: grad_quantized [N, D], grad_residual_sq [N, L], x, codebooks, codes [N, L] int64 ->
//   grad_x [N, D], grad_codebooks [L, K, D].
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "thread_blocks.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace motorec {
namespace cpu {
namespace {

// Rows per block: at least kBlockRows, and about kTileElems distances, so that the [rows, K] tile (256 KiB in
// float32) and the residual block stay in L2.
constexpr int64_t kBlockRows = 256;
constexpr int64_t kMaxBlockRows = 4096;
constexpr int64_t kTileElems = 65536;
// Largest backward accumulation buffer (doubles) kept per thread between calls: 4 MiB.
constexpr size_t kReuseDoubles = size_t(1) << 19;

int threads_for(int64_t work_items) {
  const int t = std::max(1, at::get_num_threads());
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(t, work_items)));
}

void check_inputs(const char* op, const at::Tensor& x, const at::Tensor& codebooks) {
  TORCH_CHECK(x.device().is_cpu(), op, ": x must be a CPU tensor, got ", x.device());
  TORCH_CHECK(codebooks.device().is_cpu(), op, ": codebooks must be a CPU tensor, got ", codebooks.device());
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D [N, D], got shape ", x.sizes());
  TORCH_CHECK(codebooks.dim() == 3, op, ": codebooks must be 3-D [L, K, D], got shape ", codebooks.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": x must be float32 or float64 (the C++ CPU kernel), got ", x.scalar_type());
  TORCH_CHECK(codebooks.scalar_type() == x.scalar_type(), op, ": codebooks (", codebooks.scalar_type(),
              ") must have the dtype of x (", x.scalar_type(), ")");
  TORCH_CHECK(codebooks.size(0) >= 1, op, ": codebooks must have at least one level, got shape ", codebooks.sizes());
  TORCH_CHECK(codebooks.size(1) >= 1, op, ": codebooks must have at least one codeword, got shape ",
              codebooks.sizes());
  TORCH_CHECK(codebooks.size(2) == x.size(1), op, ": x has D=", x.size(1), " but codebooks have D=",
              codebooks.size(2));
}

template <typename T>
double sq_norm(const T* v, int64_t d) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t t = 0; t < d; ++t) s += static_cast<double>(v[t]) * static_cast<double>(v[t]);
  return s;
}

// ||r - c||^2 with the differences and the sum in double: exact for float32 operands up to the final sum.
template <typename T>
double exact_sq_dist(const T* r, const T* c, int64_t d) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t t = 0; t < d; ++t) {
    const double diff = static_cast<double>(r[t]) - static_cast<double>(c[t]);
    s += diff * diff;
  }
  return s;
}

template <typename T>
void rq_forward(const T* x, const T* cb, int64_t N, int64_t D, int64_t K, int64_t L, int64_t* codes, T* quant,
                T* res_sq) {
  // Per level: codeword norms (rounded to T, as they enter a_j) and the bounds used by the re-check.
  std::vector<T> cn(L * K);
  std::vector<double> cmax(L), cnmax(L);
  for (int64_t l = 0; l < L; ++l) {
    double mx = 0.0;
    for (int64_t j = 0; j < K; ++j) {
      const double n2 = sq_norm(cb + (l * K + j) * D, D);
      cn[l * K + j] = static_cast<T>(n2);
      mx = std::max(mx, n2);
    }
    cnmax[l] = mx;
    cmax[l] = std::sqrt(mx);
  }
  // |computed a_j - exact a_j| <= gamma_D ||r|| ||c_j|| * 2 (any GEMM summation order) plus the roundings of
  // ||c_j||^2 and of the subtraction; kBound doubles that for safety. A candidate is any j whose computed a_j
  // is within twice the bound of the computed minimum: the exact argmin is always among them.
  const double u = std::is_same<T, float>::value ? std::ldexp(1.0, -24) : std::ldexp(1.0, -53);
  const double kBound = 2.0 * (2.0 * static_cast<double>(D) + 8.0) * u;

  const at::Tensor cb_t = at::from_blob(const_cast<T*>(cb), {L, K, D}, at::TensorOptions().dtype(
                                                                           c10::CppTypeToScalarType<T>::value));
  std::vector<at::Tensor> cb_transposed;  // [D, K] views: BLAS reads the transpose in place
  for (int64_t l = 0; l < L; ++l) cb_transposed.push_back(cb_t[l].t());
  // About kTileElems distances per block (fewer BLAS calls when K is small), and smaller blocks when N is
  // small so that every thread gets one.
  const int64_t nt = std::max(1, at::get_num_threads());
  const int64_t tile_rows = std::min<int64_t>(kMaxBlockRows, std::max<int64_t>(kBlockRows, kTileElems / K));
  const int64_t block_rows = std::min<int64_t>(tile_rows, std::max<int64_t>(32, (N + nt - 1) / nt));
  const int64_t nblocks = (N + block_rows - 1) / block_rows;
  const int threads = threads_for(nblocks);
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);

  // One thread's pass over blocks [b0, b1), with its own buffers (at::empty is thread-safe).
  auto run_blocks = [&](int64_t b0, int64_t b1) {
    at::Tensor r_buf = at::empty({block_rows, D}, opts);
    at::Tensor dist_buf = at::empty({block_rows, K}, opts);
    std::vector<double> rn2(block_rows);
    T* r = r_buf.data_ptr<T>();
    T* dist = dist_buf.data_ptr<T>();
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t i0 = blk * block_rows;
      const int64_t rows = std::min(block_rows, N - i0);
      std::copy(x + i0 * D, x + (i0 + rows) * D, r);
      for (int64_t i = 0; i < rows; ++i) rn2[i] = sq_norm(r + i * D, D);
      at::Tensor r_view = r_buf.narrow(0, 0, rows);
      at::Tensor dist_view = dist_buf.narrow(0, 0, rows);
      for (int64_t l = 0; l < L; ++l) {
        const T* cbl = cb + l * K * D;
        const T* cnl = cn.data() + l * K;
        at::mm_out(dist_view, r_view, cb_transposed[l]);
        for (int64_t i = 0; i < rows; ++i) {
          T* g = dist + i * K;
          T* ri = r + i * D;
          T m = std::numeric_limits<T>::infinity();
#pragma omp simd reduction(min : m)
          for (int64_t j = 0; j < K; ++j) {
            const T a = cnl[j] - T(2) * g[j];
            g[j] = a;
            m = std::min(m, a);
          }
          const double bound = kBound * (std::sqrt(rn2[i]) * cmax[l] + cnmax[l] + std::abs(static_cast<double>(m)));
          const T thr = static_cast<T>(static_cast<double>(m) + 2.0 * bound);
          // Candidates: usually only the minimum itself, which then needs no re-check.
          int64_t first = -1, count = 0;
          for (int64_t j = 0; j < K; ++j) {
            if (g[j] <= thr) {
              if (count++ == 0) first = j;
            }
          }
          int64_t best = first < 0 ? 0 : first;  // first < 0 only for NaN inputs
          if (count > 1) {
            double best_e = std::numeric_limits<double>::infinity();
            for (int64_t j = first; j < K; ++j) {
              if (g[j] <= thr) {
                const double e = exact_sq_dist(ri, cbl + j * D, D);
                if (e < best_e) {  // ascending j: ties keep the lowest index
                  best_e = e;
                  best = j;
                }
              }
            }
          }
          codes[(i0 + i) * L + l] = best;
          const T* c = cbl + best * D;
          double s2 = 0.0;
#pragma omp simd reduction(+ : s2)
          for (int64_t t = 0; t < D; ++t) {
            ri[t] = ri[t] - c[t];
            s2 += static_cast<double>(ri[t]) * static_cast<double>(ri[t]);
          }
          rn2[i] = s2;
          res_sq[(i0 + i) * L + l] = static_cast<T>(rn2[i]);
        }
      }
      for (int64_t i = 0; i < rows; ++i) {
        const T* xi = x + (i0 + i) * D;
        const T* ri = r + i * D;
        T* qi = quant + (i0 + i) * D;
#pragma omp simd
        for (int64_t t = 0; t < D; ++t) qi[t] = xi[t] - ri[t];
      }
    }
  };
  for_thread_shares(threads, nblocks, [&](int64_t /*tid*/, int64_t b0, int64_t b1) { run_blocks(b0, b1); });
}

template <typename T>
void rq_backward(const T* gq, const T* gr, const T* x, const T* cb, const int64_t* codes, int64_t N, int64_t D,
                 int64_t K, int64_t L, T* gx, T* gcb) {
  const int64_t lkd = L * K * D;
  // Row chunks, each with a private codebook-gradient buffer in double; capped so the buffers stay small.
  const int64_t chunk_rows = 1024;
  const int64_t max_buffers = std::max<int64_t>(1, (int64_t(1) << 25) / std::max<int64_t>(lkd, 1));
  const int64_t nchunks = std::max<int64_t>(
      1, std::min<int64_t>({(N + chunk_rows - 1) / chunk_rows, static_cast<int64_t>(at::get_num_threads()),
                            max_buffers}));
  // The buffers are reused across calls on this thread while small (a fresh zeroed allocation of a few hundred KiB
  // is page-faulted in on every call, which cost more than the whole backward at N = 128).
  thread_local std::vector<double> cached;
  std::vector<double> fresh;
  const size_t need = static_cast<size_t>(nchunks * lkd);
  std::vector<double>& acc = need <= kReuseDoubles ? cached : fresh;
  acc.assign(need, 0.0);
  const int threads = threads_for(nchunks);

#pragma omp parallel for num_threads(threads) schedule(static, 1)
  for (int64_t p = 0; p < nchunks; ++p) {
    const int64_t lo = N * p / nchunks, hi = N * (p + 1) / nchunks;
    double* buf = acc.data() + p * lkd;
    std::vector<T> r(D);
    std::vector<T> t2(D);
    for (int64_t i = lo; i < hi; ++i) {
      const T* xi = x + i * D;
      const T* gqi = gq + i * D;
      T* gxi = gx + i * D;
      std::copy(xi, xi + D, r.begin());
      std::fill(gxi, gxi + D, T(0));
      for (int64_t l = 0; l < L; ++l) {
        const int64_t code = codes[i * L + l];
        const T* c = cb + (l * K + code) * D;
        const T s = T(2) * gr[i * L + l];
        double* dst = buf + (l * K + code) * D;
        T* rp = r.data();
#pragma omp simd
        for (int64_t t = 0; t < D; ++t) {
          rp[t] = rp[t] - c[t];
          const T tt = s * rp[t];
          gxi[t] += tt;
          dst[t] += static_cast<double>(gqi[t] - tt);
        }
      }
    }
  }
  const int rthreads = threads_for(lkd / 4096 + 1);
#pragma omp parallel for num_threads(rthreads) schedule(static)
  for (int64_t e = 0; e < lkd; ++e) {
    double s = 0.0;
    for (int64_t p = 0; p < nchunks; ++p) s += acc[p * lkd + e];
    gcb[e] = static_cast<T>(s);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> residual_quantize_fwd_cpu(const at::Tensor& x,
                                                                         const at::Tensor& codebooks) {
  check_inputs("residual_quantize_fwd", x, codebooks);
  const at::Tensor xc = x.contiguous();
  const at::Tensor cbc = codebooks.contiguous();
  const int64_t N = xc.size(0), D = xc.size(1), L = cbc.size(0), K = cbc.size(1);
  at::Tensor codes = at::empty({N, L}, xc.options().dtype(at::kLong));
  at::Tensor quant = at::empty({N, D}, xc.options());
  at::Tensor res_sq = at::empty({N, L}, xc.options());
  if (N == 0) return {codes, quant, res_sq};
  if (D == 0) {  // every codeword is at distance 0: the lowest index wins
    codes.zero_();
    res_sq.zero_();
    return {codes, quant, res_sq};
  }
  if (xc.scalar_type() == at::kFloat) {
    rq_forward<float>(xc.data_ptr<float>(), cbc.data_ptr<float>(), N, D, K, L, codes.data_ptr<int64_t>(),
                      quant.data_ptr<float>(), res_sq.data_ptr<float>());
  } else {
    rq_forward<double>(xc.data_ptr<double>(), cbc.data_ptr<double>(), N, D, K, L, codes.data_ptr<int64_t>(),
                       quant.data_ptr<double>(), res_sq.data_ptr<double>());
  }
  return {codes, quant, res_sq};
}

std::tuple<at::Tensor, at::Tensor> residual_quantize_bwd_cpu(const at::Tensor& grad_quantized,
                                                             const at::Tensor& grad_residual_sq, const at::Tensor& x,
                                                             const at::Tensor& codebooks, const at::Tensor& codes) {
  const char* op = "residual_quantize_bwd";
  check_inputs(op, x, codebooks);
  const int64_t N = x.size(0), D = x.size(1), L = codebooks.size(0), K = codebooks.size(1);
  TORCH_CHECK(grad_quantized.device().is_cpu() && grad_residual_sq.device().is_cpu() && codes.device().is_cpu(), op,
              ": grad_quantized, grad_residual_sq and codes must be CPU tensors");
  TORCH_CHECK(grad_quantized.dim() == 2 && grad_quantized.size(0) == N && grad_quantized.size(1) == D, op,
              ": grad_quantized must have the shape of x [", N, ", ", D, "], got ", grad_quantized.sizes());
  TORCH_CHECK(grad_quantized.is_floating_point(), op, ": grad_quantized must be floating point, got ",
              grad_quantized.scalar_type());
  TORCH_CHECK(grad_residual_sq.dim() == 2 && grad_residual_sq.size(0) == N && grad_residual_sq.size(1) == L, op,
              ": grad_residual_sq must be [N, L] = [", N, ", ", L, "], got ", grad_residual_sq.sizes());
  TORCH_CHECK(grad_residual_sq.is_floating_point(), op, ": grad_residual_sq must be floating point, got ",
              grad_residual_sq.scalar_type());
  TORCH_CHECK(codes.dim() == 2 && codes.size(0) == N && codes.size(1) == L, op, ": codes must be [N, L] = [", N,
              ", ", L, "], got ", codes.sizes());
  TORCH_CHECK(codes.scalar_type() == at::kLong, op, ": codes must be int64, got ", codes.scalar_type());
  const at::Tensor cc = codes.contiguous();
  if (N > 0) {  // one scalar pass (two ATen reductions cost more than the backward itself at small N)
    const int64_t* cp = cc.data_ptr<int64_t>();
    int64_t lo = cp[0], hi = cp[0];
    for (int64_t e = 1; e < N * L; ++e) {
      lo = std::min(lo, cp[e]);
      hi = std::max(hi, cp[e]);
    }
    TORCH_CHECK(lo >= 0 && hi < K, op, ": codes must lie in [0, K=", K, "), got values in [", lo, ", ", hi, "]");
  }
  const at::Tensor xc = x.contiguous();
  const at::Tensor cbc = codebooks.contiguous();
  const at::Tensor gq = grad_quantized.to(xc.scalar_type()).contiguous();
  const at::Tensor gr = grad_residual_sq.to(xc.scalar_type()).contiguous();
  at::Tensor gx = at::empty({N, D}, xc.options());
  at::Tensor gcb = at::empty({L, K, D}, xc.options());
  if (N == 0 || D == 0) {
    gx.zero_();
    gcb.zero_();
    return {gx, gcb};
  }
  if (xc.scalar_type() == at::kFloat) {
    rq_backward<float>(gq.data_ptr<float>(), gr.data_ptr<float>(), xc.data_ptr<float>(), cbc.data_ptr<float>(),
                       cc.data_ptr<int64_t>(), N, D, K, L, gx.data_ptr<float>(), gcb.data_ptr<float>());
  } else {
    rq_backward<double>(gq.data_ptr<double>(), gr.data_ptr<double>(), xc.data_ptr<double>(), cbc.data_ptr<double>(),
                        cc.data_ptr<int64_t>(), N, D, K, L, gx.data_ptr<double>(), gcb.data_ptr<double>());
  }
  return {gx, gcb};
}

}  // namespace
}  // namespace cpu
}  // namespace motorec

TORCH_LIBRARY_IMPL(motorec_C, CPU, m) {
  m.impl("residual_quantize_fwd", &motorec::cpu::residual_quantize_fwd_cpu);
  m.impl("residual_quantize_bwd", &motorec::cpu::residual_quantize_bwd_cpu);
}
