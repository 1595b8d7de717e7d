// motorec_C::code_usage_fwd / code_usage_bwd on CPU: per-level, per-codeword mean soft assignment of the
// residual inputs (definition and gradients in motorec/reference/code_usage.py).
//
// Forward: OpenMP over blocks of rows. Per block and level, one BLAS product (at::mm_out) of the residual block
// with the level's codebook^T gives an [rows, K] tile of dot products (in L2, never [N, K]); per row it becomes
// s_ij = (2 r.c_j - ||c_j||^2) / T (||r||^2 cancels in both modes), then p_ij (softmax over the row, or
// sigmoid of s_ij - mean_j s_ij), summed into a per-thread [L, K] double accumulator. The residual for the next
// level is r - c[code], rebuilt from the tokens in the block while it is in cache.
//
// Backward: the same tiles are recomputed; with the saved row statistic (aux: logsumexp or mean of s) one pass
// per tile gives e_ij = d loss / d s_ij, then grad_r = e C (mm) and the codebook term e^T R (addmm into a
// per-thread [L, K, D] buffer), and the residual chain (d C_{k'}[code] -= sum_{k > k'} d r_k) per row into the
// same buffer. Buffers are reduced in double at the end; no atomics, deterministic for a thread count.
//
// Shapes: z_e [N, D] float32|float64, codes [N, L] int64 in [0, K), codebooks [L, K, D] dtype of z_e ->
//   rho [L, K], aux [N, L] (dtype of z_e). Backward: grad_rho [L, K], ..., aux -> grad_z_e [N, D],
//   grad_codebooks [L, K, D].
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace motorec {
namespace cpu {
namespace {

constexpr int64_t kMinBlockRows = 32;
constexpr int64_t kMaxBlockRows = 512;
constexpr int64_t kTileElems = 32768;  // [rows, K] tile of about 128 KiB in float32

void check_inputs(const char* op, const at::Tensor& z, const at::Tensor& codes, const at::Tensor& cb,
                  double temperature) {
  TORCH_CHECK(z.device().is_cpu() && codes.device().is_cpu() && cb.device().is_cpu(), op,
              ": z_e, codes and codebooks must be CPU tensors");
  TORCH_CHECK(z.dim() == 2, op, ": z_e must be 2-D [N, D], got shape ", z.sizes());
  TORCH_CHECK(cb.dim() == 3, op, ": codebooks must be 3-D [L, K, D], got shape ", cb.sizes());
  TORCH_CHECK(z.scalar_type() == at::kFloat || z.scalar_type() == at::kDouble, op,
              ": z_e must be float32 or float64 (the C++ CPU kernel), got ", z.scalar_type());
  TORCH_CHECK(cb.scalar_type() == z.scalar_type(), op, ": codebooks (", cb.scalar_type(),
              ") must have the dtype of z_e (", z.scalar_type(), ")");
  TORCH_CHECK(cb.size(0) >= 1 && cb.size(1) >= 1, op, ": codebooks must have L >= 1 and K >= 1, got shape ",
              cb.sizes());
  TORCH_CHECK(cb.size(2) == z.size(1), op, ": z_e has D=", z.size(1), " but codebooks have D=", cb.size(2));
  TORCH_CHECK(codes.scalar_type() == at::kLong, op, ": codes must be int64, got ", codes.scalar_type());
  TORCH_CHECK(codes.dim() == 2 && codes.size(0) == z.size(0) && codes.size(1) == cb.size(0), op,
              ": codes must be [N, L] = [", z.size(0), ", ", cb.size(0), "], got ", codes.sizes());
  TORCH_CHECK(temperature > 0 && std::isfinite(temperature), op, ": temperature must be finite and > 0, got ",
              temperature);
}

// Checked serially before any parallel region (an exception must not leave an OpenMP region).
void check_code_range(const char* op, const int64_t* codes, int64_t n, int64_t K) {
  int64_t lo = 0, hi = 0;
  for (int64_t e = 0; e < n; ++e) {
    lo = std::min(lo, codes[e]);
    hi = std::max(hi, codes[e]);
  }
  TORCH_CHECK(lo >= 0 && hi < K, op, ": codes must lie in [0, K=", K, "), got values in [", lo, ", ", hi, "]");
}

struct Blocks {
  int64_t rows, count;
  int threads;
};

Blocks plan(int64_t N, int64_t K) {
  const int64_t nt = std::max(1, at::get_num_threads());
  const int64_t tile_rows = std::min<int64_t>(kMaxBlockRows, std::max<int64_t>(kMinBlockRows, kTileElems / K));
  const int64_t rows = std::min<int64_t>(tile_rows, std::max<int64_t>(kMinBlockRows, (N + nt - 1) / nt));
  const int64_t count = (N + rows - 1) / rows;
  return {rows, count, static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nt, count)))};
}

// Runs fn(tid, b0, b1) on every thread's share of the blocks; a one-thread run opens no parallel region (a
// one-thread team would make BLAS open a nested one). Inside the region BLAS runs single-threaded.
template <typename F>
void for_blocks(const Blocks& b, F fn) {
  if (b.threads == 1) {
    fn(0, 0, b.count);
    return;
  }
#pragma omp parallel num_threads(b.threads)
  {
#ifdef _OPENMP
    const int64_t tid = omp_get_thread_num(), nt = omp_get_num_threads();
#else
    const int64_t tid = 0, nt = 1;
#endif
    fn(tid, b.count * tid / nt, b.count * (tid + 1) / nt);
  }
}

template <typename T>
std::vector<T> codeword_norms(const T* cb, int64_t LK, int64_t D) {
  std::vector<T> cn(LK);
  for (int64_t j = 0; j < LK; ++j) {
    double s = 0.0;
    for (int64_t t = 0; t < D; ++t) s += static_cast<double>(cb[j * D + t]) * cb[j * D + t];
    cn[j] = static_cast<T>(s);
  }
  return cn;
}

// s_ij = (2 g_ij - cn_j) / T in place over one row; returns (max_j s_ij, sum_j s_ij).
template <typename T>
std::pair<T, double> row_logits(T* g, const T* cn, int64_t K, double inv_t) {
  const T two_inv_t = static_cast<T>(2.0 * inv_t), it = static_cast<T>(inv_t);
  T m = -std::numeric_limits<T>::infinity();
  double sum = 0.0;
  for (int64_t j = 0; j < K; ++j) {
    g[j] = two_inv_t * g[j] - it * cn[j];
    m = std::max(m, g[j]);
    sum += g[j];
  }
  return {m, sum};
}

// One exponential per entry (in the working precision T): the row's p_ij overwrite its logits in the tile, and
// the row statistic (logsumexp or mean of the logits) is returned.
template <typename T>
double row_probs(T* g, const T* cn, int64_t K, double inv_t, bool softmax) {
  const auto ms = row_logits(g, cn, K, inv_t);
  if (softmax) {
    const T m = ms.first;
    double z = 0.0;
    for (int64_t j = 0; j < K; ++j) {
      g[j] = std::exp(g[j] - m);
      z += g[j];
    }
    const T inv_z = static_cast<T>(1.0 / z);
    for (int64_t j = 0; j < K; ++j) g[j] *= inv_z;
    return static_cast<double>(m) + std::log(z);
  }
  const double a = ms.second / static_cast<double>(K);
  const T ta = static_cast<T>(a);
  for (int64_t j = 0; j < K; ++j) g[j] = T(1) / (T(1) + std::exp(ta - g[j]));
  return a;
}

// p_ij of one row of logits, from the saved row statistic a (the backward's recomputation).
template <typename T>
void probs_from_stat(T* g, const T* cn, int64_t K, double inv_t, double a, bool softmax) {
  row_logits(g, cn, K, inv_t);
  const T ta = static_cast<T>(a);
  if (softmax) {
    for (int64_t j = 0; j < K; ++j) g[j] = std::exp(g[j] - ta);
  } else {
    for (int64_t j = 0; j < K; ++j) g[j] = T(1) / (T(1) + std::exp(ta - g[j]));
  }
}

template <typename T>
void cu_forward(const T* z, const int64_t* codes, const T* cb, int64_t N, int64_t D, int64_t K, int64_t L,
                double temperature, bool softmax, T* rho, T* aux) {
  const std::vector<T> cn = codeword_norms(cb, L * K, D);
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  const at::Tensor cb_t = at::from_blob(const_cast<T*>(cb), {L, K, D}, opts);
  const Blocks b = plan(N, K);
  std::vector<double> acc(static_cast<size_t>(b.threads * L * K), 0.0);
  const double inv_t = 1.0 / temperature;
  for_blocks(b, [&](int64_t tid, int64_t b0, int64_t b1) {
    at::Tensor r_buf = at::empty({b.rows, D}, opts);
    at::Tensor s_buf = at::empty({b.rows, K}, opts);
    T* r = r_buf.data_ptr<T>();
    T* s = s_buf.data_ptr<T>();
    double* my = acc.data() + tid * L * K;
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t i0 = blk * b.rows, rows = std::min(b.rows, N - i0);
      std::copy(z + i0 * D, z + (i0 + rows) * D, r);
      at::Tensor r_view = r_buf.narrow(0, 0, rows), s_view = s_buf.narrow(0, 0, rows);
      for (int64_t l = 0; l < L; ++l) {
        at::mm_out(s_view, r_view, cb_t[l].t());
        double* accl = my + l * K;
        for (int64_t i = 0; i < rows; ++i) {
          T* g = s + i * K;
          aux[(i0 + i) * L + l] = static_cast<T>(row_probs(g, cn.data() + l * K, K, inv_t, softmax));
          for (int64_t j = 0; j < K; ++j) accl[j] += g[j];
          const T* c = cb + (l * K + codes[(i0 + i) * L + l]) * D;
          T* ri = r + i * D;
          for (int64_t t = 0; t < D; ++t) ri[t] = ri[t] - c[t];
        }
      }
    }
  });
  const double inv_n = 1.0 / static_cast<double>(std::max<int64_t>(N, 1));
  for (int64_t e = 0; e < L * K; ++e) {
    double s = 0.0;
    for (int p = 0; p < b.threads; ++p) s += acc[p * L * K + e];
    rho[e] = static_cast<T>(s * inv_n);
  }
}

template <typename T>
void cu_backward(const T* grad_rho, const T* z, const int64_t* codes, const T* cb, const T* aux, int64_t N,
                 int64_t D, int64_t K, int64_t L, double temperature, bool softmax, T* gz, T* gcb) {
  const std::vector<T> cn = codeword_norms(cb, L * K, D);
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  const at::Tensor cb_t = at::from_blob(const_cast<T*>(cb), {L, K, D}, opts);
  const Blocks b = plan(N, K);
  const int64_t LKD = L * K * D;
  // Per thread: sum_i e_ij r_i and the residual chain ([L, K, D]), and sum_i e_ij ([L, K], double).
  at::Tensor gacc = at::zeros({b.threads, L, K, D}, opts);
  std::vector<double> colsum(static_cast<size_t>(b.threads * L * K), 0.0);
  const double inv_t = 1.0 / temperature, inv_n = 1.0 / static_cast<double>(std::max<int64_t>(N, 1));
  for_blocks(b, [&](int64_t tid, int64_t b0, int64_t b1) {
    at::Tensor r_buf = at::empty({L, b.rows, D}, opts);   // residual input of each level
    at::Tensor gr_buf = at::empty({L, b.rows, D}, opts);  // e C per level (d r_k up to the factor 2/T)
    at::Tensor s_buf = at::empty({b.rows, K}, opts);
    at::Tensor my_g = gacc[tid];
    T* r = r_buf.data_ptr<T>();
    T* grr = gr_buf.data_ptr<T>();
    T* s = s_buf.data_ptr<T>();
    T* myg = my_g.data_ptr<T>();
    double* mycol = colsum.data() + tid * L * K;
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t i0 = blk * b.rows, rows = std::min(b.rows, N - i0);
      std::copy(z + i0 * D, z + (i0 + rows) * D, r);
      at::Tensor s_view = s_buf.narrow(0, 0, rows);
      for (int64_t l = 0; l < L; ++l) {
        T* rl = r + l * b.rows * D;
        if (l > 0) {
          const T* rp = r + (l - 1) * b.rows * D;
          for (int64_t i = 0; i < rows; ++i) {
            const T* c = cb + ((l - 1) * K + codes[(i0 + i) * L + l - 1]) * D;
            for (int64_t t = 0; t < D; ++t) rl[i * D + t] = rp[i * D + t] - c[t];
          }
        }
        at::Tensor r_view = r_buf[l].narrow(0, 0, rows);
        at::mm_out(s_view, r_view, cb_t[l].t());
        const T* G = grad_rho + l * K;
        double* coll = mycol + l * K;
        for (int64_t i = 0; i < rows; ++i) {
          T* g = s + i * K;
          probs_from_stat(g, cn.data() + l * K, K, inv_t, static_cast<double>(aux[(i0 + i) * L + l]), softmax);
          if (softmax) {
            double beta = 0.0;  // sum_j p_ij G_j
            for (int64_t j = 0; j < K; ++j) beta += static_cast<double>(g[j]) * G[j];
            for (int64_t j = 0; j < K; ++j) {
              const double e = static_cast<double>(g[j]) * (G[j] - beta) * inv_n;
              g[j] = static_cast<T>(e);
              coll[j] += e;
            }
          } else {
            double beta = 0.0;  // mean_j h_ij, h = G p (1 - p)
            for (int64_t j = 0; j < K; ++j) {
              const double p = g[j];
              g[j] = static_cast<T>(G[j] * p * (1.0 - p));
              beta += g[j];
            }
            beta /= static_cast<double>(K);
            for (int64_t j = 0; j < K; ++j) {
              const double e = (static_cast<double>(g[j]) - beta) * inv_n;
              g[j] = static_cast<T>(e);
              coll[j] += e;
            }
          }
        }
        at::Tensor gr_view = gr_buf[l].narrow(0, 0, rows);
        at::mm_out(gr_view, s_view, cb_t[l]);
        my_g[l].addmm_(s_view.t(), r_view);
      }
      for (int64_t i = 0; i < rows; ++i) {
        T* out = gz + (i0 + i) * D;
        std::fill(out, out + D, T(0));
        for (int64_t l = L - 1; l >= 0; --l) {
          const T* gl = grr + (l * b.rows + i) * D;
          for (int64_t t = 0; t < D; ++t) out[t] += gl[t];
          if (l > 0) {
            T* dst = myg + ((l - 1) * K + codes[(i0 + i) * L + l - 1]) * D;
            for (int64_t t = 0; t < D; ++t) dst[t] -= out[t];
          }
        }
      }
    }
  });
  const double scale = 2.0 * inv_t;
  for (int64_t i = 0; i < N * D; ++i) gz[i] = static_cast<T>(scale * gz[i]);
  const T* ga = gacc.data_ptr<T>();
  for (int64_t e = 0; e < LKD; ++e) {
    const int64_t lk = e / D;
    double s = 0.0, col = 0.0;
    for (int p = 0; p < b.threads; ++p) {
      s += ga[p * LKD + e];
      col += colsum[p * L * K + lk];
    }
    gcb[e] = static_cast<T>(scale * (s - col * static_cast<double>(cb[e])));
  }
}

std::tuple<at::Tensor, at::Tensor> code_usage_fwd_cpu(const at::Tensor& z_e, const at::Tensor& codes,
                                                      const at::Tensor& codebooks, double temperature,
                                                      bool softmax) {
  const char* op = "code_usage_fwd";
  check_inputs(op, z_e, codes, codebooks, temperature);
  const at::Tensor zc = z_e.contiguous(), cc = codes.contiguous(), cbc = codebooks.contiguous();
  const int64_t N = zc.size(0), D = zc.size(1), L = cbc.size(0), K = cbc.size(1);
  check_code_range(op, cc.data_ptr<int64_t>(), N * L, K);
  at::Tensor rho = at::zeros({L, K}, zc.options());
  at::Tensor aux = at::empty({N, L}, zc.options());
  if (N == 0) return {rho, aux};
  AT_DISPATCH_FLOATING_TYPES(zc.scalar_type(), "code_usage_fwd", [&] {
    cu_forward<scalar_t>(zc.data_ptr<scalar_t>(), cc.data_ptr<int64_t>(), cbc.data_ptr<scalar_t>(), N, D, K, L,
                         temperature, softmax, rho.data_ptr<scalar_t>(), aux.data_ptr<scalar_t>());
  });
  return {rho, aux};
}

std::tuple<at::Tensor, at::Tensor> code_usage_bwd_cpu(const at::Tensor& grad_rho, const at::Tensor& z_e,
                                                      const at::Tensor& codes, const at::Tensor& codebooks,
                                                      const at::Tensor& aux, double temperature, bool softmax) {
  const char* op = "code_usage_bwd";
  check_inputs(op, z_e, codes, codebooks, temperature);
  const int64_t N = z_e.size(0), D = z_e.size(1), L = codebooks.size(0), K = codebooks.size(1);
  TORCH_CHECK(grad_rho.device().is_cpu() && aux.device().is_cpu(), op, ": grad_rho and aux must be CPU tensors");
  TORCH_CHECK(grad_rho.is_floating_point() && grad_rho.dim() == 2 && grad_rho.size(0) == L && grad_rho.size(1) == K,
              op, ": grad_rho must be a float [L, K] = [", L, ", ", K, "] tensor, got ", grad_rho.sizes());
  TORCH_CHECK(aux.is_floating_point() && aux.dim() == 2 && aux.size(0) == N && aux.size(1) == L, op,
              ": aux must be a float [N, L] = [", N, ", ", L, "] tensor, got ", aux.sizes());
  const at::Tensor zc = z_e.contiguous(), cc = codes.contiguous(), cbc = codebooks.contiguous();
  check_code_range(op, cc.data_ptr<int64_t>(), N * L, K);
  const at::Tensor gr = grad_rho.to(zc.scalar_type()).contiguous();
  const at::Tensor ac = aux.to(zc.scalar_type()).contiguous();
  at::Tensor gz = at::zeros({N, D}, zc.options());
  at::Tensor gcb = at::zeros({L, K, D}, zc.options());
  if (N == 0 || D == 0) return {gz, gcb};
  AT_DISPATCH_FLOATING_TYPES(zc.scalar_type(), "code_usage_bwd", [&] {
    cu_backward<scalar_t>(gr.data_ptr<scalar_t>(), zc.data_ptr<scalar_t>(), cc.data_ptr<int64_t>(),
                          cbc.data_ptr<scalar_t>(), ac.data_ptr<scalar_t>(), N, D, K, L, temperature, softmax,
                          gz.data_ptr<scalar_t>(), gcb.data_ptr<scalar_t>());
  });
  return {gz, gcb};
}

}  // namespace
}  // namespace cpu
}  // namespace motorec

TORCH_LIBRARY_IMPL(motorec_C, CPU, m) {
  m.impl("code_usage_fwd", &motorec::cpu::code_usage_fwd_cpu);
  m.impl("code_usage_bwd", &motorec::cpu::code_usage_bwd_cpu);
}
