// motorec_C::propagate on CPU: the LightGCN readout mean_{l=0..L} A^l x in one OpenMP region.
//
// Layer l computes h_l = A h_{l-1} row by row and, in the same tile walk, adds it to the running sum held in
// `out` (layer 1 adds x itself, layer L scales by 1 / (L + 1)): no pass over the features besides the L
// products. h_l ping-pongs between two buffers, and the last layer writes no h at all.
//
// Shapes: rowptr [n + 1] int64|int32, col [nnz] int64|int32, val [nnz] (dtype of x), x [n, D] float32|float64,
// num_layers L >= 0 -> out [n, D].
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "csr_cpu.h"

namespace motorec {
namespace cpu {
namespace {

template <typename T, typename I>
void propagate_kernel(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val, const at::Tensor& x,
                      int64_t L, at::Tensor& out) {
  const int64_t R = rowptr.numel() - 1;
  const int64_t D = x.size(1);
  const int64_t nnz = col.numel();
  const int threads = num_threads_for((nnz + R) * std::max<int64_t>(D, 1) * std::max<int64_t>(L, 1));
  const int64_t* rp = rowptr.data_ptr<int64_t>();
  check_rowptr("propagate", rp, R, nnz, threads);
  if (R == 0 || D == 0) return;
  if (L == 0) {
    out.copy_(x);
    return;
  }
  // h_l for l < L; h_1 lives in buf[0], h_2 in buf[1], h_3 in buf[0], ...
  at::Tensor buf[2];
  T* h[2] = {nullptr, nullptr};
  for (int i = 0; i < 2 && i < L - 1; ++i) {
    buf[i] = at::empty_like(out);
    h[i] = buf[i].data_ptr<T>();
  }
  const int64_t chunks = threads == 1 ? 1 : std::min<int64_t>(R, 4 * threads);
  const std::vector<int64_t> b = partition_rows(rp, R, chunks);
  std::vector<char> bad(chunks, 0);
  const RowsFn<T, I> mid = rows_fn<kMid, T, I>();
  const RowsFn<T, I> last = rows_fn<kLast, T, I>();
  const I* c = col.data_ptr<I>();
  const T* v = val.data_ptr<T>();
  const T* x0 = x.data_ptr<T>();
  T* o = out.data_ptr<T>();
  const T scale = T(1) / static_cast<T>(L + 1);
#pragma omp parallel num_threads(threads)
  for (int64_t l = 1; l <= L; ++l) {
    const RowArgs<T, I> a{rp, c, v, l == 1 ? x0 : h[(l - 2) % 2], o, l < L ? h[(l - 1) % 2] : nullptr,
                          l == 1 ? x0 : nullptr, scale, D, R};
    const RowsFn<T, I> fn = l < L ? mid : last;
    // The implicit barrier at the end of the loop orders the layers.
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < chunks; ++k) fn(a, b[k], b[k + 1], &bad[k]);
  }
  if (std::any_of(bad.begin(), bad.end(), [](char f) { return f != 0; }))
    report_bad_col("propagate", c, nnz, R);
}

at::Tensor propagate_cpu(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val, const at::Tensor& x,
                         int64_t num_layers) {
  check_csr_args("propagate", rowptr, col, val, x, c10::DeviceType::CPU, /*half_ok=*/false);
  check_propagate_args(rowptr, x, num_layers);
  const CsrInputs in = contiguous_inputs(rowptr, col, val, x);
  at::Tensor out = at::empty(x.sizes(), in.x.options());
  dispatch_types(x.scalar_type(), col.scalar_type(), [&](auto t, auto i) {
    propagate_kernel<decltype(t), decltype(i)>(in.rowptr, in.col, in.val, in.x, num_layers, out);
  });
  return out;
}

}  // namespace
}  // namespace cpu
}  // namespace motorec

TORCH_LIBRARY_IMPL(motorec_C, CPU, m) {
  m.impl("propagate", &motorec::cpu::propagate_cpu);
}
