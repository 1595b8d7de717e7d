// motorec_C::rank_topk on CPU: per user, the top k items of s_ui = (u . i) * scale_i + shift_i three times over
// (all items, warm items, cold items), the user's excluded items never listed (definition and tie rule in
// motorec/reference/rank_topk.py). Never forms the [B, I] score matrix.
//
// OpenMP over blocks of users. Per block, item tiles go through one BLAS product each (at::mm_out of the user
// block with the item tile^T: an [rows, cols] tile in L2), then one scan per row of the tile keeps three small
// sorted top-k buffers. Items are scanned in ascending index order, so a score equal to a buffer's k-th never
// enters it and an equal score inserts after the equal ones already there: ties go to the lower index exactly.
// One gate per row, min of the warm and cold k-th scores once both buffers are full (the hybrid k-th is at least
// the larger of the two), rejects most items with one comparison. The row's sorted exclude list is walked lazily
// (only for items that pass the gate). NaN scores of non-excluded items are never ranked and set nan[row].
// Deterministic: each row's result depends on its own scan only.
//
// Shapes: users [B, d], items [I, d] float32|float64, item_scale / item_shift [I] (dtype of users) or none,
//   exclude_rowptr [B+1] int64, exclude_col [nnz] int64 in [0, I), cold [I] bool ->
//   hybrid, warm, cold [B, k] int64 (-1 where a row has fewer than k eligible items), nan [B] bool.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "thread_blocks.h"

#include <algorithm>
#include <limits>
#include <vector>


namespace motorec {
namespace cpu {
namespace {

constexpr int64_t kMaxBlockRows = 256;
constexpr int64_t kMinBlockRows = 16;
constexpr int64_t kTileElems = 65536;  // [rows, cols] score tile of 256 KiB in float32

// k best (score, index) pairs so far, sorted by descending score, equal scores by ascending index (the scan
// feeds ascending indices, so "insert after the equal ones" keeps that order).
template <typename T>
struct TopK {
  T* s;
  int64_t* idx;
  int64_t n;
  int64_t k;
  inline bool full() const { return n == k; }
  inline T kth() const { return s[k - 1]; }
  inline void push(T v, int64_t j) {
    if (n == k) {
      if (!(v > s[k - 1])) return;
      --n;
    }
    int64_t p = n;
    while (p > 0 && s[p - 1] < v) {
      s[p] = s[p - 1];
      idx[p] = idx[p - 1];
      --p;
    }
    s[p] = v;
    idx[p] = j;
    ++n;
  }
};

void check_inputs(const at::Tensor& users, const at::Tensor& items, int64_t k, const c10::optional<at::Tensor>& scale,
                  const c10::optional<at::Tensor>& shift, const at::Tensor& rowptr, const at::Tensor& col,
                  const at::Tensor& cold) {
  const char* op = "rank_topk";
  TORCH_CHECK(users.device().is_cpu() && items.device().is_cpu() && rowptr.device().is_cpu() &&
                  col.device().is_cpu() && cold.device().is_cpu(),
              op, ": users, items, exclude_rowptr, exclude_col and cold must be CPU tensors");
  TORCH_CHECK(users.dim() == 2, op, ": users must be 2-D [B, d], got shape ", users.sizes());
  TORCH_CHECK(items.dim() == 2, op, ": items must be 2-D [I, d], got shape ", items.sizes());
  TORCH_CHECK(users.scalar_type() == at::kFloat || users.scalar_type() == at::kDouble, op,
              ": users must be float32 or float64 (the C++ CPU kernel), got ", users.scalar_type());
  TORCH_CHECK(items.scalar_type() == users.scalar_type(), op, ": items (", items.scalar_type(),
              ") must have the dtype of users (", users.scalar_type(), ")");
  TORCH_CHECK(items.size(1) == users.size(1), op, ": users have d=", users.size(1), " but items have d=",
              items.size(1));
  TORCH_CHECK(k >= 1, op, ": k must be >= 1, got ", k);
  const int64_t I = items.size(0), B = users.size(0);
  for (const auto* t : {&scale, &shift}) {
    if (!t->has_value()) continue;
    const char* name = t == &scale ? "item_scale" : "item_shift";
    TORCH_CHECK((*t)->device().is_cpu() && (*t)->dim() == 1 && (*t)->size(0) == I, op, ": ", name,
                " must be a CPU [I] = [", I, "] tensor, got shape ", (*t)->sizes());
    TORCH_CHECK((*t)->scalar_type() == users.scalar_type(), op, ": ", name, " (", (*t)->scalar_type(),
                ") must have the dtype of users (", users.scalar_type(), ")");
  }
  TORCH_CHECK(cold.scalar_type() == at::kBool && cold.dim() == 1 && cold.size(0) == I, op,
              ": cold must be a bool [I] = [", I, "] tensor, got ", cold.scalar_type(), " ", cold.sizes());
  TORCH_CHECK(rowptr.scalar_type() == at::kLong && rowptr.dim() == 1 && rowptr.size(0) == B + 1, op,
              ": exclude_rowptr must be an int64 [B+1] = [", B + 1, "] tensor, got ", rowptr.scalar_type(), " ",
              rowptr.sizes());
  TORCH_CHECK(col.scalar_type() == at::kLong && col.dim() == 1, op, ": exclude_col must be a 1-D int64 tensor, got ",
              col.scalar_type(), " ", col.sizes());
}

// Serially, before any parallel region: rowptr starts at 0, never decreases and ends at nnz; columns lie in
// [0, I). Returns whether every row's columns are sorted (ascending; duplicates allowed).
bool check_exclusions(const int64_t* rp, const int64_t* col, int64_t B, int64_t nnz, int64_t I) {
  const char* op = "rank_topk";
  TORCH_CHECK(rp[0] == 0 && rp[B] == nnz, op, ": exclude_rowptr must start at 0 and end at len(exclude_col)=", nnz,
              ", got ", rp[0], " and ", rp[B]);
  for (int64_t r = 0; r < B; ++r) {  // first, so that every row's range lies in [0, nnz) below
    TORCH_CHECK(rp[r + 1] >= rp[r], op, ": exclude_rowptr must be non-decreasing, but entry ", r + 1, " (",
                rp[r + 1], ") < entry ", r, " (", rp[r], ")");
  }
  bool sorted = true;
  for (int64_t r = 0; r < B; ++r) {
    for (int64_t e = rp[r]; e < rp[r + 1]; ++e) {
      TORCH_CHECK(col[e] >= 0 && col[e] < I, op, ": exclude_col must lie in [0, I=", I, "), got ", col[e],
                  " at position ", e);
      if (e > rp[r] && col[e] < col[e - 1]) sorted = false;
    }
  }
  return sorted;
}

struct Blocks {
  int64_t rows, cols, count;
  int threads;
};

Blocks plan(int64_t B, int64_t I) {
  const int64_t nt = std::max(1, at::get_num_threads());
  const int64_t rows = std::min<int64_t>(kMaxBlockRows, std::max<int64_t>(kMinBlockRows, (B + nt - 1) / nt));
  const int64_t cols = std::max<int64_t>(64, std::min<int64_t>(I, kTileElems / rows));
  const int64_t count = (B + rows - 1) / rows;
  return {rows, cols, count, static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nt, count)))};
}

template <typename F>
void for_blocks(const Blocks& b, F fn) {
  for_thread_shares(b.threads, b.count, fn);
}

template <typename T>
void rank_kernel(const at::Tensor& users, const at::Tensor& items, int64_t k, const T* scale, const T* shift,
                 const int64_t* rp, const int64_t* ex, const bool* cold, int64_t* out_h, int64_t* out_w,
                 int64_t* out_c, bool* nan_out) {
  const int64_t B = users.size(0), I = items.size(0);
  int64_t num_cold = 0;
  for (int64_t j = 0; j < I; ++j) num_cold += cold[j] ? 1 : 0;
  constexpr T kInf = std::numeric_limits<T>::infinity();
  // A group with no item at all never fills and never receives: it must not hold the gate open.
  const T empty_warm = num_cold == I ? kInf : -kInf, empty_cold = num_cold == 0 ? kInf : -kInf;
  const Blocks b = plan(B, I);
  for_blocks(b, [&](int64_t /*tid*/, int64_t b0, int64_t b1) {
    at::Tensor tile_buf = at::empty({b.rows * b.cols}, users.options());
    T* tile = tile_buf.data_ptr<T>();
    std::vector<T> bs(static_cast<size_t>(3 * b.rows * k));
    std::vector<int64_t> bi(static_cast<size_t>(3 * b.rows * k));
    std::vector<TopK<T>> tk(static_cast<size_t>(3 * b.rows));
    std::vector<int64_t> ptr(static_cast<size_t>(b.rows));
    std::vector<T> gate(static_cast<size_t>(b.rows));
    std::vector<char> saw_nan(static_cast<size_t>(b.rows));
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t i0 = blk * b.rows, rows = std::min(b.rows, B - i0);
      for (int64_t r = 0; r < rows; ++r) {
        for (int g = 0; g < 3; ++g) {
          const size_t q = static_cast<size_t>(3 * r + g);
          tk[q] = TopK<T>{bs.data() + q * k, bi.data() + q * k, 0, k};
        }
        ptr[r] = rp[i0 + r];
        gate[r] = -kInf;
        saw_nan[r] = 0;
      }
      const at::Tensor u_blk = users.narrow(0, i0, rows);
      for (int64_t c0 = 0; c0 < I; c0 += b.cols) {
        const int64_t cols = std::min(b.cols, I - c0);
        at::Tensor t = at::from_blob(tile, {rows, cols}, users.options());
        at::mm_out(t, u_blk, items.narrow(0, c0, cols).t());
        if (scale != nullptr) t.mul_(at::from_blob(const_cast<T*>(scale + c0), {cols}, users.options()));
        if (shift != nullptr) t.add_(at::from_blob(const_cast<T*>(shift + c0), {cols}, users.options()));
        for (int64_t r = 0; r < rows; ++r) {
          const T* srow = tile + r * cols;
          TopK<T>& h = tk[3 * r];
          TopK<T>& w = tk[3 * r + 1];
          TopK<T>& c = tk[3 * r + 2];
          T g = gate[r];
          int64_t p = ptr[r];
          const int64_t pend = rp[i0 + r + 1];
          for (int64_t j = 0; j < cols; ++j) {
            const T v = srow[j];
            if (v < g) continue;  // below both groups' k-th (NaN falls through)
            const int64_t item = c0 + j;
            while (p < pend && ex[p] < item) ++p;
            if (p < pend && ex[p] == item) continue;
            if (v != v) {
              saw_nan[r] = 1;
              continue;
            }
            h.push(v, item);
            if (cold[item]) {
              c.push(v, item);
            } else {
              w.push(v, item);
            }
            const T gw = w.full() ? w.kth() : empty_warm, gc = c.full() ? c.kth() : empty_cold;
            g = std::min(gw, gc);
          }
          gate[r] = g;
          ptr[r] = p;
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        int64_t* outs[3] = {out_h, out_w, out_c};
        for (int g = 0; g < 3; ++g) {
          const TopK<T>& q = tk[3 * r + g];
          int64_t* o = outs[g] + (i0 + r) * k;
          std::copy(q.idx, q.idx + q.n, o);
        }
        nan_out[i0 + r] = saw_nan[r] != 0;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rank_topk_cpu(
    const at::Tensor& users, const at::Tensor& items, int64_t k, const c10::optional<at::Tensor>& item_scale,
    const c10::optional<at::Tensor>& item_shift, const at::Tensor& exclude_rowptr, const at::Tensor& exclude_col,
    const at::Tensor& cold) {
  check_inputs(users, items, k, item_scale, item_shift, exclude_rowptr, exclude_col, cold);
  const at::Tensor uc = users.contiguous(), ic = items.contiguous(), rpc = exclude_rowptr.contiguous();
  const at::Tensor cc = cold.contiguous();
  at::Tensor colc = exclude_col.contiguous();
  const int64_t B = uc.size(0), I = ic.size(0), nnz = colc.numel();
  const int64_t* rp = rpc.data_ptr<int64_t>();
  if (!check_exclusions(rp, colc.data_ptr<int64_t>(), B, nnz, I)) {
    colc = colc.clone();
    int64_t* c = colc.data_ptr<int64_t>();
    for (int64_t r = 0; r < B; ++r) std::sort(c + rp[r], c + rp[r + 1]);
  }
  auto idx_opts = uc.options().dtype(at::kLong);
  at::Tensor h = at::full({B, k}, -1, idx_opts), w = at::full({B, k}, -1, idx_opts), c = at::full({B, k}, -1, idx_opts);
  at::Tensor nan = at::zeros({B}, uc.options().dtype(at::kBool));
  if (B == 0 || I == 0) return {h, w, c, nan};
  at::Tensor sc = item_scale.has_value() ? item_scale->contiguous() : at::Tensor();
  at::Tensor sh = item_shift.has_value() ? item_shift->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(uc.scalar_type(), "rank_topk", [&] {
    rank_kernel<scalar_t>(uc, ic, k, sc.defined() ? sc.data_ptr<scalar_t>() : nullptr,
                          sh.defined() ? sh.data_ptr<scalar_t>() : nullptr, rp, colc.data_ptr<int64_t>(),
                          cc.data_ptr<bool>(), h.data_ptr<int64_t>(), w.data_ptr<int64_t>(), c.data_ptr<int64_t>(),
                          nan.data_ptr<bool>());
  });
  return {h, w, c, nan};
}

}  // namespace
}  // namespace cpu
}  // namespace motorec

TORCH_LIBRARY_IMPL(motorec_C, CPU, m) { m.impl("rank_topk", &motorec::cpu::rank_topk_cpu); }
