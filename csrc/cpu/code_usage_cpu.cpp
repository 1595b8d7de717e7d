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

#include "thread_blocks.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>


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

template <typename F>
void for_blocks(const Blocks& b, F fn) {
  for_thread_shares(b.threads, b.count, fn);
}

// [L, K] tensor of ||c_j||^2 / T (norms accumulated in double, rounded to T, then scaled in T).
template <typename T>
at::Tensor codeword_norms_over_t(const T* cb, int64_t L, int64_t K, int64_t D, double temperature,
                                 const at::TensorOptions& opts) {
  at::Tensor cn = at::empty({L, K}, opts);
  T* out = cn.data_ptr<T>();
  const T it = static_cast<T>(1.0 / temperature);
  for (int64_t j = 0; j < L * K; ++j) {
    double s = 0.0;
    for (int64_t t = 0; t < D; ++t) s += static_cast<double>(cb[j * D + t]) * cb[j * D + t];
    out[j] = it * static_cast<T>(s);
  }
  return cn;
}

// The tile work runs as whole-tile ATen ops (vectorized: ATen's CPU kernels use SIMD exp/sigmoid, where a
// scalar std::exp per entry was most of the op's time at small N), one exponential per entry.
//
// s_ij = (2 g_ij - cn_j) / T over an [rows, K] tile of dot products g, in place (cn_over_t: [K] = cn / T).
void tile_logits(at::Tensor& s, const at::Tensor& cn_over_t, double inv_t) {
  s.mul_(2.0 * inv_t).sub_(cn_over_t);
}

// Row and column sums of a tile in double, by hand: an ATen sum with dtype=double first converts the whole
// tile to double (a copy that was a third of the forward at N = 128, K = 256).
template <typename T>
void add_column_sums(const T* s, int64_t rows, int64_t K, double* col) {
  for (int64_t i = 0; i < rows; ++i) {
    const T* si = s + i * K;
#pragma omp simd
    for (int64_t j = 0; j < K; ++j) col[j] += static_cast<double>(si[j]);
  }
}

template <typename T>
double row_sum(const T* si, int64_t K) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < K; ++j) acc += static_cast<double>(si[j]);
  return acc;
}

// Softmax: the tile becomes q_ij = exp(s_ij - max_i) in place and the row statistic logsumexp_i goes to stat
// ([rows], double); the column sums of p_ij = q_ij / z_i are then one GEMV, q^T (1 / z), added into col ([K],
// double). Sigmoid: p_ij = sigmoid(s_ij - mean_i) in place, stat_i = mean_i, column sums added into col.
template <typename T>
void tile_probs(at::Tensor& s, bool softmax, double* col, double* stat) {
  const int64_t rows = s.size(0), K = s.size(1);
  T* sp = s.data_ptr<T>();  // s is a leading-rows view of a contiguous buffer: row stride K
  if (softmax) {
    const at::Tensor m = at::amax(s, {1}, /*keepdim=*/true);
    s.sub_(m).exp_();
    const T* mp = m.data_ptr<T>();
    at::Tensor inv_z = at::empty({rows}, s.options());
    T* iz = inv_z.data_ptr<T>();
    for (int64_t i = 0; i < rows; ++i) {
      const double z = row_sum(sp + i * K, K);
      iz[i] = static_cast<T>(1.0 / z);
      stat[i] = static_cast<double>(mp[i]) + std::log(z);
    }
    const at::Tensor cs = at::mv(s.t(), inv_z);
    const T* c = cs.data_ptr<T>();
    for (int64_t j = 0; j < K; ++j) col[j] += static_cast<double>(c[j]);
  } else {
    for (int64_t i = 0; i < rows; ++i) {
      const double a = row_sum(sp + i * K, K) / static_cast<double>(K);
      stat[i] = a;
      T* si = sp + i * K;
      const T at_ = static_cast<T>(a);
#pragma omp simd
      for (int64_t j = 0; j < K; ++j) si[j] = si[j] - at_;
    }
    s.sigmoid_();
    add_column_sums(sp, rows, K, col);
  }
}

// e_ij = d loss / d s_ij (times 1/N) in place over a tile of logits, from the saved row statistic a ([rows, 1]
// in the working precision) and grad_rho's row G ([K]); adds sum_i e_ij into col (double, [K]). Softmax:
// e_ij = p_ij (G_j - beta_i) / N with beta_i = sum_j p_ij G_j (a GEMV); everything in the working precision, in
// as few passes over the tile as ATen allows (at small N this op is bound by those passes).
template <typename T>
void tile_grad(at::Tensor& s, const at::Tensor& a, const at::Tensor& G, double inv_n, bool softmax, double* col) {
  const int64_t rows = s.size(0), K = s.size(1);
  T* sp = s.data_ptr<T>();
  if (softmax) {
    const at::Tensor gs = G * inv_n;                                  // [K]
    s.sub_(a).exp_();                                                 // p_ij
    const at::Tensor beta = at::mv(s, gs);                            // [rows]
    const T* g = gs.data_ptr<T>();
    const T* bt = beta.data_ptr<T>();
    for (int64_t i = 0; i < rows; ++i) {
      T* si = sp + i * K;
      const T b = bt[i];
#pragma omp simd
      for (int64_t j = 0; j < K; ++j) si[j] = si[j] * (g[j] - b);
    }
  } else {
    const at::Tensor gd = G.to(at::kDouble);
    const at::Tensor p = s.sub_(a).sigmoid_().to(at::kDouble);
    at::Tensor h = gd * p * (1.0 - p);                                // G p (1 - p)
    s.copy_(h.sub_(h.mean({1}, /*keepdim=*/true)).mul_(inv_n));
  }
  add_column_sums(sp, rows, K, col);
}

template <typename T>
void cu_forward(const T* z, const int64_t* codes, const T* cb, int64_t N, int64_t D, int64_t K, int64_t L,
                double temperature, bool softmax, T* rho, T* aux) {
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  const at::Tensor cb_t = at::from_blob(const_cast<T*>(cb), {L, K, D}, opts);
  const at::Tensor cn_over_t = codeword_norms_over_t(cb, L, K, D, temperature, opts);  // [L, K]
  const Blocks b = plan(N, K);
  std::vector<double> acc(static_cast<size_t>(b.threads * L * K), 0.0);
  const double inv_t = 1.0 / temperature;
  for_blocks(b, [&](int64_t tid, int64_t b0, int64_t b1) {
    at::Tensor r_buf = at::empty({b.rows, D}, opts);
    at::Tensor s_buf = at::empty({b.rows, K}, opts);
    T* r = r_buf.data_ptr<T>();
    std::vector<double> stat(static_cast<size_t>(b.rows));
    double* st = stat.data();
    double* my = acc.data() + tid * L * K;
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t i0 = blk * b.rows, rows = std::min(b.rows, N - i0);
      std::copy(z + i0 * D, z + (i0 + rows) * D, r);
      at::Tensor r_view = r_buf.narrow(0, 0, rows), s_view = s_buf.narrow(0, 0, rows);
      for (int64_t l = 0; l < L; ++l) {
        at::mm_out(s_view, r_view, cb_t[l].t());
        tile_logits(s_view, cn_over_t[l], inv_t);
        tile_probs<T>(s_view, softmax, my + l * K, st);
        for (int64_t i = 0; i < rows; ++i) {
          aux[(i0 + i) * L + l] = static_cast<T>(st[i]);
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
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  const at::Tensor cb_t = at::from_blob(const_cast<T*>(cb), {L, K, D}, opts);
  const at::Tensor cn_over_t = codeword_norms_over_t(cb, L, K, D, temperature, opts);  // [L, K]
  const at::Tensor aux_t = at::from_blob(const_cast<T*>(aux), {N, L}, opts);
  const at::Tensor grad_rho_t = at::from_blob(const_cast<T*>(grad_rho), {L, K}, opts);
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
        tile_logits(s_view, cn_over_t[l], inv_t);
        const at::Tensor a = aux_t.narrow(0, i0, rows).select(1, l).unsqueeze(1);  // [rows, 1]
        tile_grad<T>(s_view, a, grad_rho_t[l], inv_n, softmax, mycol + l * K);
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
