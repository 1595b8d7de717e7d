// motorec_C::spmm on CUDA: row-group CSR x dense with 16-byte vector loads and nnz-balanced heavy rows
// (see csr_cuda.cuh). Shapes: rowptr [R + 1] int64|int32, col [nnz] int64|int32, val [nnz] (dtype of x, or
// float32 for half/bf16 x), x [C, D] float32|float64|float16|bfloat16 -> out [R, D] (dtype of x).
#include <torch/library.h>

#include "csr_cuda.cuh"

namespace motorec {
namespace cuda {
namespace {

at::Tensor spmm_cuda(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val, const at::Tensor& x) {
  check_csr_args("spmm", rowptr, col, val, x, c10::DeviceType::CUDA, /*half_ok=*/true);
  const c10::cuda::CUDAGuard guard(x.device());
  const CsrInputs in = contiguous_inputs(rowptr, col, val, x);
  const at::Tensor &rp = in.rowptr, &c = in.col, &v = in.val, &xc = in.x;
  const int64_t R = rp.numel() - 1, D = x.size(1), nnz = c.numel();
  at::Tensor out = at::empty({R, D}, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (R == 0 || D == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t seg = segment_length();
  dispatch_types(x.scalar_type(), c.scalar_type(), [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    using A = typename AccOf<T>::type;
    at::Tensor ws = partial_workspace(nnz, D, seg, v.scalar_type(), x.device());
    Params<T, A, I> P{};
    P.rowptr = rp.data_ptr<int64_t>();
    P.col = c.data_ptr<I>();
    P.val = v.data_ptr<A>();
    P.src = reinterpret_cast<const T*>(xc.data_ptr());
    P.R = R;
    P.C = x.size(0);
    P.D = D;
    P.nnz = nnz;
    P.out = reinterpret_cast<T*>(out.data_ptr());
    P.partial = ws.data_ptr<A>();
    P.seg = seg;
    P.scale = A(1);
    const bool vec = D % (16 / static_cast<int64_t>(sizeof(T))) == 0 && aligned16(P.src);
    launch_layer<T, A, I, kSpmm>(P, vec, stream);
  });
  return out;
}

// The same product on the merge path (csr_cuda.cuh): coords [2, P + 1] from Graph.merge_path(), split_rows
// its flag (the fix-up launch is skipped when no row is cut). Workspace: 2 P rows of D accumulators.
at::Tensor spmm_merge_cuda(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val,
                           const at::Tensor& x, const at::Tensor& coords, bool split_rows) {
  check_csr_args("spmm_merge", rowptr, col, val, x, c10::DeviceType::CUDA, /*half_ok=*/true);
  check_merge_coords("spmm_merge", coords, x);
  const c10::cuda::CUDAGuard guard(x.device());
  const CsrInputs in = contiguous_inputs(rowptr, col, val, x);
  const at::Tensor &rp = in.rowptr, &c = in.col, &v = in.val, &xc = in.x;
  const int64_t R = rp.numel() - 1, D = x.size(1), nnz = c.numel();
  at::Tensor out = at::empty({R, D}, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (R == 0 || D == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t parts = coords.size(1) - 1;
  dispatch_types(x.scalar_type(), c.scalar_type(), [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    using A = typename AccOf<T>::type;
    at::Tensor ws = at::empty({2 * parts, D}, v.options());
    Params<T, A, I> P{};
    P.rowptr = rp.data_ptr<int64_t>();
    P.col = c.data_ptr<I>();
    P.val = v.data_ptr<A>();
    P.src = reinterpret_cast<const T*>(xc.data_ptr());
    P.R = R;
    P.C = x.size(0);
    P.D = D;
    P.nnz = nnz;
    P.out = reinterpret_cast<T*>(out.data_ptr());
    P.partial = ws.data_ptr<A>();
    P.scale = A(1);
    const bool vec = D % (16 / static_cast<int64_t>(sizeof(T))) == 0 && aligned16(P.src);
    if (coords.scalar_type() == at::kInt) {
      launch_merge_layer<T, A, I, int32_t, kSpmm>(P, merge_coords<int32_t>(coords), split_rows, vec, stream);
    } else {
      launch_merge_layer<T, A, I, int64_t, kSpmm>(P, merge_coords<int64_t>(coords), split_rows, vec, stream);
    }
  });
  return out;
}

}  // namespace
}  // namespace cuda
}  // namespace motorec

TORCH_LIBRARY_IMPL(motorec_C, CUDA, m) {
  m.impl("spmm", &motorec::cuda::spmm_cuda);
  m.impl("spmm_merge", &motorec::cuda::spmm_merge_cuda);
}
