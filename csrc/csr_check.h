// Argument validation shared by the CPU and CUDA implementations of motorec_C::spmm / propagate.
// Checks run once, at the op boundary, and name the offending argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace motorec {

// Checks shapes, dtypes and devices of a CSR product `A @ x` (rowptr [R+1], col [nnz], val [nnz], x [C, D]).
// `half_ok`: whether float16/bfloat16 x is accepted (then val must be float32).
inline void check_csr_args(const char* op, const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val,
                           const at::Tensor& x, c10::DeviceType device_type, bool half_ok) {
  TORCH_CHECK(rowptr.dim() == 1, op, ": rowptr must be 1-D [num_rows + 1], got shape ", rowptr.sizes());
  TORCH_CHECK(rowptr.numel() >= 1, op, ": rowptr must have num_rows + 1 >= 1 entries, got 0");
  TORCH_CHECK(rowptr.scalar_type() == at::kLong || rowptr.scalar_type() == at::kInt, op,
              ": rowptr must be int64 or int32, got ", rowptr.scalar_type());
  TORCH_CHECK(col.dim() == 1, op, ": col must be 1-D [nnz], got shape ", col.sizes());
  TORCH_CHECK(col.scalar_type() == at::kLong || col.scalar_type() == at::kInt, op,
              ": col must be int64 or int32, got ", col.scalar_type());
  TORCH_CHECK(val.dim() == 1, op, ": val must be 1-D [nnz], got shape ", val.sizes());
  TORCH_CHECK(val.numel() == col.numel(), op, ": val and col must have the same length (nnz), got ", val.numel(),
              " and ", col.numel());
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D [num_cols, D], got shape ", x.sizes());
  const auto xt = x.scalar_type();
  const bool is_half = xt == at::kHalf || xt == at::kBFloat16;
  TORCH_CHECK(xt == at::kFloat || xt == at::kDouble || (half_ok && is_half), op, ": x must be ",
              half_ok ? "float32, float64, float16 or bfloat16" : "float32 or float64", " on this device, got ", xt);
  if (is_half) {
    TORCH_CHECK(val.scalar_type() == at::kFloat, op, ": val must be float32 when x is ", xt, ", got ",
                val.scalar_type());
  } else {
    TORCH_CHECK(val.scalar_type() == xt, op, ": val must have the dtype of x (", xt, "), got ", val.scalar_type());
  }
  const at::Tensor* ts[] = {&rowptr, &col, &val, &x};
  const char* names[] = {"rowptr", "col", "val", "x"};
  for (int i = 0; i < 4; ++i) {
    TORCH_CHECK(ts[i]->device().type() == device_type, op, ": ", names[i], " must be on ", device_type, ", got ",
                ts[i]->device());
    TORCH_CHECK(ts[i]->layout() == at::kStrided, op, ": ", names[i], " must be a dense (strided) tensor");
    TORCH_CHECK(ts[i]->device() == x.device(), op, ": ", names[i], " is on ", ts[i]->device(), " but x is on ",
                x.device());
  }
}

// The inputs as the kernels read them: rowptr as int64, every tensor contiguous.
struct CsrInputs {
  at::Tensor rowptr, col, val, x;
};

inline CsrInputs contiguous_inputs(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val,
                                   const at::Tensor& x) {
  return {rowptr.to(at::kLong).contiguous(), col.contiguous(), val.contiguous(), x.contiguous()};
}

inline void check_propagate_args(const at::Tensor& rowptr, const at::Tensor& x, int64_t num_layers) {
  TORCH_CHECK(num_layers >= 0, "propagate: num_layers must be >= 0, got ", num_layers);
  TORCH_CHECK(rowptr.numel() - 1 == x.size(0), "propagate: the graph must be square with one row per node: rowptr has ",
              rowptr.numel() - 1, " rows but x has ", x.size(0));
}

}  // namespace motorec
