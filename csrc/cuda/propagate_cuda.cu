// motorec_C::propagate on CUDA: L fused layers of the row-group CSR product (see csr_cuda.cuh). Each
// layer's row kernel adds its product to the running layer sum in its epilogue (layer 1 adds x, layer L
// scales by 1 / (L + 1) and writes the output), so no pass over the features is spent on the mean. Half and
// bf16 features are stored in their own dtype between layers; the running sum is float32.
//
// Shapes: rowptr [n + 1] int64|int32, col [nnz] int64|int32, val [nnz] (dtype of x, or float32 for half/bf16),
// x [n, D] float32|float64|float16|bfloat16, num_layers L >= 0 -> out [n, D] (dtype of x).
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "csr_cuda.cuh"

namespace motorec {
namespace cuda {
namespace {

at::Tensor propagate_cuda(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val, const at::Tensor& x,
                          int64_t num_layers) {
  check_csr_args("propagate", rowptr, col, val, x, c10::DeviceType::CUDA, /*half_ok=*/true);
  check_propagate_args(rowptr, x, num_layers);
  const c10::cuda::CUDAGuard guard(x.device());
  const CsrInputs in = contiguous_inputs(rowptr, col, val, x);
  const at::Tensor &rp = in.rowptr, &c = in.col, &v = in.val, &xc = in.x;
  const int64_t R = rp.numel() - 1, D = x.size(1), nnz = c.numel(), L = num_layers;
  at::Tensor out = at::empty({R, D}, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (R == 0 || D == 0) return out;
  if (L == 0) {
    out.copy_(xc);
    return out;
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t seg = segment_length();
  dispatch_types(x.scalar_type(), c.scalar_type(), [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    using A = typename AccOf<T>::type;
    at::Tensor ws = partial_workspace(nnz, D, seg, v.scalar_type(), x.device());
    at::Tensor sum = std::is_same<T, A>::value ? out : at::empty({R, D}, v.options());
    at::Tensor h[2];
    for (int k = 0; k < 2 && k < L - 1; ++k) h[k] = at::empty_like(out);
    const T* x0 = reinterpret_cast<const T*>(xc.data_ptr());
    const bool vec = D % (16 / static_cast<int64_t>(sizeof(T))) == 0 && aligned16(x0);
    for (int64_t l = 1; l <= L; ++l) {
      Params<T, A, I> P{};
      P.rowptr = rp.data_ptr<int64_t>();
      P.col = c.data_ptr<I>();
      P.val = v.data_ptr<A>();
      P.src = l == 1 ? x0 : reinterpret_cast<const T*>(h[(l - 2) % 2].data_ptr());
      P.R = R;
      P.C = R;
      P.D = D;
      P.nnz = nnz;
      P.out = reinterpret_cast<T*>(out.data_ptr());
      P.next = l < L ? reinterpret_cast<T*>(h[(l - 1) % 2].data_ptr()) : nullptr;
      P.sum = reinterpret_cast<A*>(sum.data_ptr());
      P.x0 = l == 1 ? x0 : nullptr;
      P.scale = A(1) / static_cast<A>(L + 1);
      P.partial = ws.data_ptr<A>();
      P.seg = seg;
      if (l < L) launch_layer<T, A, I, kMid>(P, vec, stream);
      else launch_layer<T, A, I, kLast>(P, vec, stream);
    }
  });
  return out;
}

// The same readout on the merge path (csr_cuda.cuh): coords [2, P + 1] and split_rows from
// Graph.merge_path(); one partition serves every layer (the graph does not change between layers).
at::Tensor propagate_merge_cuda(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val,
                                const at::Tensor& x, const at::Tensor& coords, bool split_rows, int64_t num_layers) {
  check_csr_args("propagate_merge", rowptr, col, val, x, c10::DeviceType::CUDA, /*half_ok=*/true);
  check_propagate_args(rowptr, x, num_layers);
  check_merge_coords("propagate_merge", coords, x);
  const c10::cuda::CUDAGuard guard(x.device());
  const CsrInputs in = contiguous_inputs(rowptr, col, val, x);
  const at::Tensor &rp = in.rowptr, &c = in.col, &v = in.val, &xc = in.x;
  const int64_t R = rp.numel() - 1, D = x.size(1), nnz = c.numel(), L = num_layers;
  at::Tensor out = at::empty({R, D}, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (R == 0 || D == 0) return out;
  if (L == 0) {
    out.copy_(xc);
    return out;
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t parts = coords.size(1) - 1;
  dispatch_types(x.scalar_type(), c.scalar_type(), [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    using A = typename AccOf<T>::type;
    at::Tensor ws = at::empty({2 * parts, D}, v.options());
    at::Tensor sum = std::is_same<T, A>::value ? out : at::empty({R, D}, v.options());
    at::Tensor h[2];
    for (int k = 0; k < 2 && k < L - 1; ++k) h[k] = at::empty_like(out);
    const T* x0 = reinterpret_cast<const T*>(xc.data_ptr());
    const bool vec = D % (16 / static_cast<int64_t>(sizeof(T))) == 0 && aligned16(x0);
    for (int64_t l = 1; l <= L; ++l) {
      Params<T, A, I> P{};
      P.rowptr = rp.data_ptr<int64_t>();
      P.col = c.data_ptr<I>();
      P.val = v.data_ptr<A>();
      P.src = l == 1 ? x0 : reinterpret_cast<const T*>(h[(l - 2) % 2].data_ptr());
      P.R = R;
      P.C = R;
      P.D = D;
      P.nnz = nnz;
      P.out = reinterpret_cast<T*>(out.data_ptr());
      P.next = l < L ? reinterpret_cast<T*>(h[(l - 1) % 2].data_ptr()) : nullptr;
      P.sum = reinterpret_cast<A*>(sum.data_ptr());
      P.x0 = l == 1 ? x0 : nullptr;
      P.scale = A(1) / static_cast<A>(L + 1);
      P.partial = ws.data_ptr<A>();
      auto layer = [&](auto j) {
        using J = decltype(j);
        const MergeCoords<J> M = merge_coords<J>(coords);
        if (l < L) launch_merge_layer<T, A, I, J, kMid>(P, M, split_rows, vec, stream);
        else launch_merge_layer<T, A, I, J, kLast>(P, M, split_rows, vec, stream);
      };
      if (coords.scalar_type() == at::kInt) layer(int32_t{});
      else layer(int64_t{});
    }
  });
  return out;
}

}  // namespace
}  // namespace cuda
}  // namespace motorec

TORCH_LIBRARY_IMPL(motorec_C, CUDA, m) {
  m.impl("propagate", &motorec::cuda::propagate_cuda);
  m.impl("propagate_merge", &motorec::cuda::propagate_merge_cuda);
}
