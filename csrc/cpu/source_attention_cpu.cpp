// motorec_C::source_attention_fwd / source_attention_bwd on CPU: attention over M sources (definition and
// gradients in motorec/reference/source_attention.py):
//
//   a_im = softmax_m(q . tanh(W h_im + b)),   out_i = sum_m a_im h_im.
//
// Computed in the sigmoid form q . tanh(y) = 2 q . sigmoid(2 y) - sum(q) (the constant is the same for every
// source and drops out of the softmax): ATen's vectorized sigmoid is about 4x cheaper than its tanh here.
//
// Forward: OpenMP over blocks of rows. Per block and source, one BLAS product of the [rows, d] block with
// (2 W)^T plus 2 b into a per-thread [rows, d] buffer, sigmoid in place, one GEMV with 2 q for the logits; then
// per row the softmax over the M sources and the weighted sum. Nothing of size [M, N, d] is ever allocated:
// at catalog scale each such buffer is a fresh mmap the OS faults in (zero-filled) on every step, which cost
// as much as the arithmetic in the torch path (docs/MODEL.md, "Glue at catalog scale").
//
// Backward: the same tiles are recomputed (M per-thread [rows, d] buffers); with the saved weights a one pass
// per row gives the logits' gradient, then per source the GEMV for q, the elementwise factor s (1 - s) 2q
// g_logit in place, the GEMM for W into a per-thread [d, d] buffer and the GEMM for the source's input
// gradient straight into its output rows. Per-thread sums of W, b and q are reduced at the end in a fixed
// order: no atomics, deterministic for a thread count.
//
// Shapes: hs M x [N, d] float32|float64 (one dtype), weight [d, d], bias [d], query [d] (dtype of hs) ->
//   out [N, d], attn [N, M]. Backward: grad_out [N, d], grad_attn [N, M] or none, hs, weight, bias, query,
//   attn -> grad_hs [M, N, d] (one tensor), grad_weight [d, d], grad_bias [d], grad_query [d].
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "thread_blocks.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

namespace motorec {
namespace cpu {
namespace {

constexpr int64_t kMinBlockRows = 16;
// A [rows, d] block of 256 KiB in float32 (1,024 rows at d = 64): the backward keeps M of them in L2. Smaller
// blocks were slower: each block costs a few dozen ATen calls and views (~3 us each).
constexpr int64_t kTileElems = 65536;

void check_inputs(const char* op, at::TensorList hs, const at::Tensor& w, const at::Tensor& b,
                  const at::Tensor& q) {
  TORCH_CHECK(!hs.empty(), op, ": hs must hold at least one source tensor");
  const at::Tensor& h0 = hs[0];
  TORCH_CHECK(h0.dim() == 2, op, ": hs[0] must be 2-D [N, d], got shape ", h0.sizes());
  TORCH_CHECK(h0.scalar_type() == at::kFloat || h0.scalar_type() == at::kDouble, op,
              ": hs must be float32 or float64 (the C++ CPU kernel), got ", h0.scalar_type());
  const int64_t n = h0.size(0), d = h0.size(1);
  for (size_t m = 0; m < hs.size(); ++m) {
    TORCH_CHECK(hs[m].device().is_cpu(), op, ": hs[", m, "] must be a CPU tensor");
    TORCH_CHECK(hs[m].dim() == 2 && hs[m].size(0) == n && hs[m].size(1) == d, op, ": hs[", m,
                "] must be [N, d] = [", n, ", ", d, "] like hs[0], got ", hs[m].sizes());
    TORCH_CHECK(hs[m].scalar_type() == h0.scalar_type(), op, ": hs[", m, "] (", hs[m].scalar_type(),
                ") must have the dtype of hs[0] (", h0.scalar_type(), ")");
    TORCH_CHECK(hs[m].is_contiguous(), op, ": hs[", m, "] must be contiguous");
  }
  TORCH_CHECK(w.device().is_cpu() && b.device().is_cpu() && q.device().is_cpu(), op,
              ": weight, bias and query must be CPU tensors");
  TORCH_CHECK(w.dim() == 2 && w.size(0) == d && w.size(1) == d, op, ": weight must be [d, d] = [", d, ", ", d,
              "], got ", w.sizes());
  TORCH_CHECK(b.dim() == 1 && b.size(0) == d, op, ": bias must be [d] = [", d, "], got ", b.sizes());
  TORCH_CHECK(q.dim() == 1 && q.size(0) == d, op, ": query must be [d] = [", d, "], got ", q.sizes());
  TORCH_CHECK(w.scalar_type() == h0.scalar_type() && b.scalar_type() == h0.scalar_type() &&
                  q.scalar_type() == h0.scalar_type(),
              op, ": weight, bias and query must have the dtype of hs (", h0.scalar_type(), ")");
}

struct Blocks {
  int64_t rows, count;
  int threads;
};

Blocks plan(int64_t N, int64_t d) {
  const int64_t nt = std::max(1, at::get_num_threads());
  const int64_t tile_rows = std::max<int64_t>(kMinBlockRows, kTileElems / std::max<int64_t>(d, 1));
  const int64_t rows = std::min<int64_t>(tile_rows, std::max<int64_t>(kMinBlockRows, (N + nt - 1) / nt));
  const int64_t count = std::max<int64_t>(1, (N + rows - 1) / rows);
  return {rows, count, static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nt, count)))};
}

// The doubled parameters of the sigmoid form: (2 W)^T [d, d] contiguous, 2 b, 2 q.
struct Doubled {
  at::Tensor wt2, b2, q2;
};

Doubled doubled(const at::Tensor& w, const at::Tensor& b, const at::Tensor& q) {
  return {w.t().mul(2.0).contiguous(), b.mul(2.0).contiguous(), q.mul(2.0).contiguous()};
}

// s = sigmoid(h_blk (2W)^T + 2b) into buf ([rows, d] view), in place.
void sigmoid_tile(at::Tensor& buf, const at::Tensor& h_blk, const Doubled& p) {
  at::addmm_out(buf, p.b2, h_blk, p.wt2);
  buf.sigmoid_();
}

template <typename T>
std::tuple<at::Tensor, at::Tensor> fwd_impl(at::TensorList hs, const at::Tensor& w, const at::Tensor& b,
                                            const at::Tensor& q) {
  const int64_t M = static_cast<int64_t>(hs.size()), N = hs[0].size(0), d = hs[0].size(1);
  const auto opts = hs[0].options();
  at::Tensor out = at::empty({N, d}, opts);
  at::Tensor attn = at::empty({N, M}, opts);
  if (N == 0) return {out, attn};
  const Doubled p = doubled(w, b, q);
  const Blocks bl = plan(N, d);
  std::vector<const T*> hp(M);
  for (int64_t m = 0; m < M; ++m) hp[m] = hs[m].data_ptr<T>();
  T* op = out.data_ptr<T>();
  T* ap = attn.data_ptr<T>();
  for_thread_shares(bl.threads, bl.count, [&](int64_t, int64_t b0, int64_t b1) {
    // Grad mode is per thread: OpenMP workers would record (and refuse) out= ops on inputs that require grad.
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor buf = at::empty({bl.rows, d}, opts);
    at::Tensor lg = at::empty({M, bl.rows}, opts);
    T* lp = lg.data_ptr<T>();
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t r0 = blk * bl.rows, rows = std::min(bl.rows, N - r0);
      at::Tensor s = buf.narrow(0, 0, rows);
      for (int64_t m = 0; m < M; ++m) {
        sigmoid_tile(s, hs[m].narrow(0, r0, rows), p);
        at::Tensor lm = lg.select(0, m).narrow(0, 0, rows);
        at::mv_out(lm, s, p.q2);
      }
      for (int64_t i = 0; i < rows; ++i) {
        T mx = lp[i];
        for (int64_t m = 1; m < M; ++m) mx = std::max(mx, lp[m * bl.rows + i]);
        T z = 0;
        T* ai = ap + (r0 + i) * M;
        for (int64_t m = 0; m < M; ++m) {
          ai[m] = std::exp(lp[m * bl.rows + i] - mx);
          z += ai[m];
        }
        const T iz = T(1) / z;
        for (int64_t m = 0; m < M; ++m) ai[m] *= iz;
        T* oi = op + (r0 + i) * d;
        const T* h0 = hp[0] + (r0 + i) * d;
        const T a0 = ai[0];
#pragma omp simd
        for (int64_t t = 0; t < d; ++t) oi[t] = a0 * h0[t];
        for (int64_t m = 1; m < M; ++m) {
          const T* hm = hp[m] + (r0 + i) * d;
          const T am = ai[m];
#pragma omp simd
          for (int64_t t = 0; t < d; ++t) oi[t] += am * hm[t];
        }
      }
    }
  });
  return {out, attn};
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bwd_impl(
    const at::Tensor& g_out, const std::optional<at::Tensor>& g_attn, at::TensorList hs, const at::Tensor& w,
    const at::Tensor& b, const at::Tensor& q, const at::Tensor& attn) {
  const int64_t M = static_cast<int64_t>(hs.size()), N = hs[0].size(0), d = hs[0].size(1);
  const auto opts = hs[0].options();
  at::Tensor g_all = at::empty({M, N, d}, opts);  // one buffer; the caller hands out its [N, d] slices
  if (N == 0) return {g_all, at::zeros_like(w), at::zeros_like(b), at::zeros_like(q)};
  const Doubled p = doubled(w, b, q);
  const at::Tensor w2 = p.wt2.t().contiguous();  // 2 W: d loss / d h = g_y (2 W)
  const Blocks bl = plan(N, d);
  // per-thread sums: d/d(2W)^T [d, d], d/d(2b) [d], d/d(2q) [d]
  at::Tensor acc_wt = at::zeros({bl.threads, d, d}, opts);
  at::Tensor acc_b = at::zeros({bl.threads, d}, opts);
  at::Tensor acc_q = at::zeros({bl.threads, d}, opts);
  std::vector<const T*> hp(M);
  std::vector<T*> gp(M);
  for (int64_t m = 0; m < M; ++m) {
    hp[m] = hs[m].data_ptr<T>();
    gp[m] = g_all.data_ptr<T>() + m * N * d;
  }
  const T* go = g_out.data_ptr<T>();
  const T* ga = g_attn.has_value() && g_attn->defined() ? g_attn->data_ptr<T>() : nullptr;
  const T* ap = attn.data_ptr<T>();
  const T* q2p = p.q2.data_ptr<T>();
  for_thread_shares(bl.threads, bl.count, [&](int64_t tid, int64_t b0, int64_t b1) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor s_all = at::empty({M, bl.rows, d}, opts);
    at::Tensor gl = at::empty({M, bl.rows}, opts);  // d loss / d logit, per source and row
    at::Tensor my_wt = acc_wt.select(0, tid), my_b = acc_b.select(0, tid), my_q = acc_q.select(0, tid);
    T* glp = gl.data_ptr<T>();
    T* mbp = my_b.data_ptr<T>();
    std::vector<T> gw(M);
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t r0 = blk * bl.rows, rows = std::min(bl.rows, N - r0);
      for (int64_t m = 0; m < M; ++m) {
        at::Tensor s = s_all.select(0, m).narrow(0, 0, rows);
        sigmoid_tile(s, hs[m].narrow(0, r0, rows), p);
      }
      // the softmax's backward per row: g_logit_m = a_m (gw_m - sum_k a_k gw_k), gw_m = h_m . g_out + g_attn_m
      for (int64_t i = 0; i < rows; ++i) {
        const T* gi = go + (r0 + i) * d;
        const T* ai = ap + (r0 + i) * M;
        T dot = 0;
        for (int64_t m = 0; m < M; ++m) {
          const T* hm = hp[m] + (r0 + i) * d;
          T acc = 0;
#pragma omp simd reduction(+ : acc)
          for (int64_t t = 0; t < d; ++t) acc += hm[t] * gi[t];
          gw[m] = acc + (ga ? ga[(r0 + i) * M + m] : T(0));
          dot += ai[m] * gw[m];
        }
        for (int64_t m = 0; m < M; ++m) glp[m * bl.rows + i] = ai[m] * (gw[m] - dot);
      }
      for (int64_t m = 0; m < M; ++m) {
        at::Tensor s = s_all.select(0, m).narrow(0, 0, rows);
        at::Tensor g_lm = gl.select(0, m).narrow(0, 0, rows);
        my_q.addmv_(s.t(), g_lm);  // d/d(2q) += s^T g_logit
        // s becomes g_y = g_logit 2q s (1 - s) in place
        T* sp = s.data_ptr<T>();
        const T* gm = glp + m * bl.rows;
        for (int64_t i = 0; i < rows; ++i) {
          T* si = sp + i * d;
          const T gi = gm[i];
#pragma omp simd
          for (int64_t t = 0; t < d; ++t) {
            const T v = si[t];
            si[t] = gi * q2p[t] * v * (T(1) - v);
            mbp[t] += si[t];
          }
        }
        const at::Tensor h_blk = hs[m].narrow(0, r0, rows);
        my_wt.addmm_(h_blk.t(), s);  // d/d(2W)^T += h^T g_y
        at::Tensor g_blk = g_all.select(0, m).narrow(0, r0, rows);
        at::mm_out(g_blk, s, w2);
        // + a_m g_out (the weighted sum's own gradient)
        T* gb = gp[m] + r0 * d;
        for (int64_t i = 0; i < rows; ++i) {
          const T am = ap[(r0 + i) * M + m];
          const T* gi = go + (r0 + i) * d;
          T* gbi = gb + i * d;
#pragma omp simd
          for (int64_t t = 0; t < d; ++t) gbi[t] += am * gi[t];
        }
      }
    }
  });
  // the doubled parameters' gradients, summed over threads in a fixed order, times 2 for W, b, q themselves
  at::Tensor g_w = acc_wt.sum(0).t().mul(2.0).contiguous();
  at::Tensor g_b = acc_b.sum(0).mul(2.0);
  at::Tensor g_q = acc_q.sum(0).mul(2.0);
  return {g_all, g_w, g_b, g_q};
}

std::vector<at::Tensor> contiguous_all(at::TensorList hs) {
  std::vector<at::Tensor> out;
  out.reserve(hs.size());
  for (const auto& h : hs) out.push_back(h.contiguous());
  return out;
}

std::tuple<at::Tensor, at::Tensor> source_attention_fwd_cpu(at::TensorList hs_in, const at::Tensor& weight,
                                                            const at::Tensor& bias, const at::Tensor& query) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // a kernel: no autograd inside
  const std::vector<at::Tensor> hs = contiguous_all(hs_in);
  check_inputs("source_attention_fwd", hs, weight, bias, query);
  const at::Tensor w = weight.contiguous(), b = bias.contiguous(), q = query.contiguous();
  if (hs[0].scalar_type() == at::kDouble) return fwd_impl<double>(hs, w, b, q);
  return fwd_impl<float>(hs, w, b, q);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> source_attention_bwd_cpu(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_attn, at::TensorList hs_in,
    const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& query, const at::Tensor& attn) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // a kernel: no autograd inside
  const char* op = "source_attention_bwd";
  const std::vector<at::Tensor> hs = contiguous_all(hs_in);
  check_inputs(op, hs, weight, bias, query);
  const int64_t M = static_cast<int64_t>(hs.size()), N = hs[0].size(0), d = hs[0].size(1);
  const auto dt = hs[0].scalar_type();
  TORCH_CHECK(grad_out.device().is_cpu() && grad_out.scalar_type() == dt && grad_out.dim() == 2 &&
                  grad_out.size(0) == N && grad_out.size(1) == d,
              op, ": grad_out must be a CPU [N, d] = [", N, ", ", d, "] tensor of dtype ", dt, ", got ",
              grad_out.sizes(), " ", grad_out.scalar_type());
  TORCH_CHECK(attn.device().is_cpu() && attn.scalar_type() == dt && attn.dim() == 2 && attn.size(0) == N &&
                  attn.size(1) == M,
              op, ": attn must be a CPU [N, M] = [", N, ", ", M, "] tensor of dtype ", dt, ", got ", attn.sizes());
  std::optional<at::Tensor> ga;
  if (grad_attn.has_value() && grad_attn->defined()) {
    TORCH_CHECK(grad_attn->device().is_cpu() && grad_attn->scalar_type() == dt && grad_attn->dim() == 2 &&
                    grad_attn->size(0) == N && grad_attn->size(1) == M,
                op, ": grad_attn must be a CPU [N, M] = [", N, ", ", M, "] tensor of dtype ", dt, ", got ",
                grad_attn->sizes());
    ga = grad_attn->contiguous();
  }
  const at::Tensor go = grad_out.contiguous(), a = attn.contiguous();
  const at::Tensor w = weight.contiguous(), b = bias.contiguous(), q = query.contiguous();
  if (dt == at::kDouble) return bwd_impl<double>(go, ga, hs, w, b, q, a);
  return bwd_impl<float>(go, ga, hs, w, b, q, a);
}

}  // namespace

TORCH_LIBRARY_IMPL(motorec_C, CPU, m) {
  m.impl("source_attention_fwd", &source_attention_fwd_cpu);
  m.impl("source_attention_bwd", &source_attention_bwd_cpu);
}

}  // namespace cpu
}  // namespace motorec
