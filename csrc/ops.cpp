// Every schema of motorec's compiled ops, in one place (namespace motorec_C).
// Device files add implementations with TORCH_LIBRARY_IMPL(motorec_C, CPU|CUDA, m).
// The Python layer (motorec/ops/*.py) wraps these in torch.library custom ops "motorec::<op>" that carry
// autograd and fake kernels; these raw ops do no autograd of their own.
#ifndef MOTOREC_NO_PYTHON  // set by CMakeLists.txt: the libtorch build has no Python module
#include <Python.h>
#endif
#include <torch/library.h>

#ifndef MOTOREC_NO_PYTHON
extern "C" {
// Importing motorec._C from Python runs the static TORCH_LIBRARY initializers below; the module itself is
// empty. No pybind11, so the module needs nothing beyond libtorch.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
#endif

TORCH_LIBRARY(motorec_C, m) {
  // CSR sparse x dense: out[r] = sum_{e in rowptr[r]..rowptr[r+1]} val[e] * x[col[e]].
  // rowptr [R+1] int32|int64, col [nnz] int32|int64, val [nnz] float (same dtype as x, or float32 for
  // half/bf16 x), x [C, D] -> out [R, D] (dtype of x; accumulation in float32 or wider).
  m.def("spmm(Tensor rowptr, Tensor col, Tensor val, Tensor x) -> Tensor");
  // LightGCN readout: mean_{l=0..num_layers} A^l x for a square CSR A ([R == C]).
  m.def("propagate(Tensor rowptr, Tensor col, Tensor val, Tensor x, int num_layers) -> Tensor");
  // CUDA only: spmm / propagate on the merge path (equal work per thread group whatever the degrees).
  // coords [2, P + 1] int32|int64 and split_rows come from motorec.Graph.merge_path() (cached per graph).
  m.def("spmm_merge(Tensor rowptr, Tensor col, Tensor val, Tensor x, Tensor coords, bool split_rows) -> Tensor");
  m.def(
      "propagate_merge(Tensor rowptr, Tensor col, Tensor val, Tensor x, Tensor coords, bool split_rows, "
      "int num_layers) -> Tensor");
  // Residual quantization over L levels. x [N, D], codebooks [L, K, D] (same float dtype) ->
  // codes [N, L] int64, quantized [N, D], residual_sq [N, L] (||r^(k)||^2 after level k, in float32 or wider).
  m.def("residual_quantize_fwd(Tensor x, Tensor codebooks) -> (Tensor, Tensor, Tensor)");
  // Backward of residual_quantize_fwd (see motorec/ops/residual_quantize.py for the gradient's definition):
  // grad_quantized [N, D], grad_residual_sq [N, L] -> grad_x [N, D], grad_codebooks [L, K, D].
  m.def(
      "residual_quantize_bwd(Tensor grad_quantized, Tensor grad_residual_sq, Tensor x, Tensor codebooks, "
      "Tensor codes) -> (Tensor, Tensor)");
  // Per-level, per-codeword mean soft assignment of the residual inputs rebuilt from the tokens (definition in
  // motorec/reference/code_usage.py): z_e [N, D], codes [N, L] int64, codebooks [L, K, D] (dtype of z_e) ->
  // rho [L, K], aux [N, L] (row logsumexp (softmax) or mean (sigmoid) of the logits, for the backward).
  m.def("code_usage_fwd(Tensor z_e, Tensor codes, Tensor codebooks, float temperature, bool softmax) -> (Tensor, Tensor)");
  // Backward of code_usage_fwd: grad_rho [L, K] -> grad_z_e [N, D], grad_codebooks [L, K, D].
  m.def(
      "code_usage_bwd(Tensor grad_rho, Tensor z_e, Tensor codes, Tensor codebooks, Tensor aux, float temperature, "
      "bool softmax) -> (Tensor, Tensor)");
  // Attention over M sources (definition in motorec/reference/source_attention.py):
  // a_im = softmax_m(query . tanh(weight h_im + bias)), out_i = sum_m a_im h_im. hs M x [N, d] float32|float64,
  // weight [d, d], bias [d], query [d] (dtype of hs) -> out [N, d], attn [N, M].
  m.def("source_attention_fwd(Tensor[] hs, Tensor weight, Tensor bias, Tensor query) -> (Tensor, Tensor)");
  // Backward of source_attention_fwd: grad_out [N, d], grad_attn [N, M] or none, ..., attn (the forward's) ->
  // grad_hs [M, N, d] (one tensor; source m's gradient is its slice m), grad_weight [d, d], grad_bias [d],
  // grad_query [d].
  m.def(
      "source_attention_bwd(Tensor grad_out, Tensor? grad_attn, Tensor[] hs, Tensor weight, Tensor bias, "
      "Tensor query, Tensor attn) -> (Tensor, Tensor, Tensor, Tensor)");
  // Per user, the top k items of s_ui = (u . i) * item_scale_i + item_shift_i over all items, the warm items
  // (cold false) and the cold items, excluded items never listed, ties to the lower index (definition in
  // motorec/reference/rank_topk.py): users [B, d], items [I, d], item_scale / item_shift [I] or none,
  // exclude_rowptr [B+1] int64, exclude_col [nnz] int64, cold [I] bool -> hybrid, warm, cold [B, k] int64
  // (-1 past a row's eligible items), nan [B] bool (a non-excluded score was NaN; NaN is never ranked).
  m.def(
      "rank_topk(Tensor users, Tensor items, int k, Tensor? item_scale, Tensor? item_shift, Tensor exclude_rowptr, "
      "Tensor exclude_col, Tensor cold) -> (Tensor, Tensor, Tensor, Tensor)");
}
