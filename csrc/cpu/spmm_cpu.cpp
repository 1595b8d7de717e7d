// motorec_C::spmm on CPU: OpenMP CSR x dense, rows balanced by nnz, vectorized over the feature dimension.
//
// Shapes: rowptr [R + 1] int64|int32, col [nnz] int64|int32, val [nnz] (dtype of x), x [C, D] float32|float64
// -> out [R, D]. Accumulates in the dtype of x (float32 like MKL's CSR product, or float64).
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "csr_cpu.h"

namespace motorec {
namespace cpu {
namespace {

template <typename T, typename I>
void spmm_kernel(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val, const at::Tensor& x,
                 at::Tensor& out) {
  const int64_t R = rowptr.numel() - 1;
  const int64_t D = x.size(1);
  const int64_t nnz = col.numel();
  const int threads = num_threads_for((nnz + R) * std::max<int64_t>(D, 1));
  const int64_t* rp = rowptr.data_ptr<int64_t>();
  check_rowptr("spmm", rp, R, nnz, threads);
  if (R == 0 || D == 0) return;
  RowArgs<T, I> a{rp, col.data_ptr<I>(), val.data_ptr<T>(), x.data_ptr<T>(), out.data_ptr<T>(), nullptr, nullptr,
                  T(1), D, x.size(0)};
  const RowsFn<T, I> fn = rows_fn<kSpmm, T, I>();
  const int64_t chunks = threads == 1 ? 1 : std::min<int64_t>(R, 4 * threads);
  const std::vector<int64_t> b = partition_rows(rp, R, chunks);
  std::vector<char> bad(chunks, 0);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int64_t k = 0; k < chunks; ++k) fn(a, b[k], b[k + 1], &bad[k]);
  if (std::any_of(bad.begin(), bad.end(), [](char f) { return f != 0; }))
    report_bad_col("spmm", col.data_ptr<I>(), nnz, x.size(0));
}

at::Tensor spmm_cpu(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val, const at::Tensor& x) {
  check_csr_args("spmm", rowptr, col, val, x, c10::DeviceType::CPU, /*half_ok=*/false);
  const CsrInputs in = contiguous_inputs(rowptr, col, val, x);
  at::Tensor out = at::empty({in.rowptr.numel() - 1, x.size(1)}, in.x.options());
  dispatch_types(x.scalar_type(), col.scalar_type(), [&](auto t, auto i) {
    spmm_kernel<decltype(t), decltype(i)>(in.rowptr, in.col, in.val, in.x, out);
  });
  return out;
}

}  // namespace
}  // namespace cpu
}  // namespace motorec

TORCH_LIBRARY_IMPL(motorec_C, CPU, m) {
  m.impl("spmm", &motorec::cpu::spmm_cpu);
}
