// C++ tests of motorec_C::spmm and motorec_C::propagate through the dispatcher (CPU kernels; CUDA too when
// the build has it and a GPU is visible), run by ctest. Usage: test_graph_ops <spmm|propagate|errors|empty>.
//
// The oracle is a naive double-precision loop over the CSR, sharing no code with the kernels.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace {

int failures = 0;

#define EXPECT(cond, ...)                         \
  do {                                            \
    if (!(cond)) {                                \
      ++failures;                                 \
      std::printf("FAILED %s:%d: ", __FILE__, __LINE__); \
      std::printf(__VA_ARGS__);                   \
      std::printf("\n");                          \
    }                                             \
  } while (0)

using SpmmFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);
using PropFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t);

at::Tensor spmm(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val, const at::Tensor& x) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("motorec_C::spmm", "").typed<SpmmFn>();
  return op.call(rowptr, col, val, x);
}

at::Tensor propagate(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val, const at::Tensor& x,
                     int64_t layers) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("motorec_C::propagate", "").typed<PropFn>();
  return op.call(rowptr, col, val, x, layers);
}

struct Csr {
  at::Tensor rowptr, col, val;
  int64_t rows, cols;
};

// Random CSR with heavy-tailed row degrees, about a third of the rows empty, and one row of degree `heavy`.
Csr random_csr(int64_t rows, int64_t cols, int64_t heavy, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  at::Tensor u = at::rand({rows}, gen, at::kDouble);
  std::vector<int64_t> rp(rows + 1, 0);
  std::vector<int64_t> cl;
  for (int64_t r = 0; r < rows; ++r) {
    int64_t deg = std::min<int64_t>(cols, static_cast<int64_t>(std::pow(u[r].item<double>(), -1.3) - 1.0));
    if (r == rows / 2) deg = heavy;
    at::Tensor c = at::randint(cols, {deg}, gen, at::kLong);
    for (int64_t i = 0; i < deg; ++i) cl.push_back(c[i].item<int64_t>());
    rp[r + 1] = static_cast<int64_t>(cl.size());
  }
  Csr a;
  a.rowptr = at::tensor(rp, at::kLong);
  a.col = at::tensor(cl, at::kLong);
  a.val = at::rand({static_cast<int64_t>(cl.size())}, gen, at::kFloat) + 0.1;
  a.rows = rows;
  a.cols = cols;
  return a;
}

// out[r] = sum_e val[e] x[col[e]] in double.
at::Tensor naive_spmm(const Csr& a, const at::Tensor& x) {
  at::Tensor xd = x.to(at::kDouble).contiguous();
  const int64_t D = x.size(1);
  at::Tensor out = at::zeros({a.rows, D}, at::kDouble);
  auto rp = a.rowptr.accessor<int64_t, 1>();
  auto cl = a.col.accessor<int64_t, 1>();
  at::Tensor vd = a.val.to(at::kDouble);
  auto v = vd.accessor<double, 1>();
  auto xa = xd.accessor<double, 2>();
  auto o = out.accessor<double, 2>();
  for (int64_t r = 0; r < a.rows; ++r)
    for (int64_t e = rp[r]; e < rp[r + 1]; ++e)
      for (int64_t d = 0; d < D; ++d) o[r][d] += v[e] * xa[cl[e]][d];
  return out;
}

double rel_err(const at::Tensor& out, const at::Tensor& ref) {
  const double den = ref.norm().item<double>();
  const double num = (out.to(at::kDouble).cpu() - ref).norm().item<double>();
  return den > 0 ? num / den : num;
}

std::vector<at::Device> devices() {
  std::vector<at::Device> d{at::kCPU};
  if (at::hasCUDA() &&
      c10::Dispatcher::singleton().findSchemaOrThrow("motorec_C::spmm", "").hasKernelForDispatchKey(
          c10::DispatchKey::CUDA))
    d.emplace_back(at::kCUDA);
  return d;
}

void test_spmm() {
  const Csr a = random_csr(301, 2500, 2400, 1);
  for (at::Device dev : devices()) {
    for (auto dtype : {at::kFloat, at::kDouble}) {
      for (auto index : {at::kLong, at::kInt}) {
        for (int64_t D : {1, 7, 33, 64, 128}) {
          at::Tensor x = at::randn({a.cols, D}, at::TensorOptions().dtype(dtype));
          const at::Tensor ref = naive_spmm(a, x);
          const at::Tensor out = spmm(a.rowptr.to(dev), a.col.to(index).to(dev), a.val.to(dtype).to(dev), x.to(dev));
          const double tol = dtype == at::kFloat ? 2e-6 : 1e-13;
          const double err = rel_err(out, ref);
          EXPECT(out.sizes() == ref.sizes() && err <= tol, "spmm %s %s %s D=%ld: rel err %.3e > %.1e",
                 dev.str().c_str(), c10::toString(dtype), c10::toString(index), static_cast<long>(D), err, tol);
        }
      }
    }
  }
}

void test_propagate() {
  const Csr a = random_csr(2500, 2500, 2300, 2);
  for (at::Device dev : devices()) {
    for (auto dtype : {at::kFloat, at::kDouble}) {
      for (int64_t L : {0, 1, 2, 3, 4}) {
        for (int64_t D : {1, 33, 64}) {
          at::Tensor x = at::randn({a.rows, D}, at::TensorOptions().dtype(dtype));
          // Reference: the mean of x, Ax, ..., A^L x with repeated naive products in double.
          at::Tensor h = x.to(at::kDouble), acc = h.clone();
          for (int64_t l = 0; l < L; ++l) {
            h = naive_spmm(a, h);
            acc += h;
          }
          acc /= static_cast<double>(L + 1);
          const at::Tensor out = propagate(a.rowptr.to(dev), a.col.to(dev), a.val.to(dtype).to(dev), x.to(dev), L);
          const double tol = dtype == at::kFloat ? 2e-6 : 1e-13;
          const double err = rel_err(out, acc);
          EXPECT(err <= tol, "propagate %s %s L=%ld D=%ld: rel err %.3e > %.1e", dev.str().c_str(),
                 c10::toString(dtype), static_cast<long>(L), static_cast<long>(D), err, tol);
          // And against the kernel's own spmm, layer by layer.
          at::Tensor hk = x.to(dev), acck = hk.to(at::kDouble);
          for (int64_t l = 0; l < L; ++l) {
            hk = spmm(a.rowptr.to(dev), a.col.to(dev), a.val.to(dtype).to(dev), hk);
            acck += hk.to(at::kDouble);
          }
          const double err2 = rel_err(out, (acck / static_cast<double>(L + 1)).cpu());
          EXPECT(err2 <= tol, "propagate vs repeated spmm %s L=%ld D=%ld: rel err %.3e", dev.str().c_str(),
                 static_cast<long>(L), static_cast<long>(D), err2);
        }
      }
    }
  }
}

void expect_error(const std::string& what, const std::string& needle, const std::function<void()>& fn) {
  try {
    fn();
    EXPECT(false, "%s: no error raised", what.c_str());
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    EXPECT(msg.find(needle) != std::string::npos, "%s: error '%s' does not mention '%s'", what.c_str(), msg.c_str(),
           needle.c_str());
  }
}

void test_errors() {
  const at::Tensor rowptr = at::tensor(std::vector<int64_t>{0, 2, 2, 5}, at::kLong);
  const at::Tensor col = at::tensor(std::vector<int64_t>{0, 3, 1, 7, 11}, at::kLong);
  const at::Tensor val = at::rand({5});
  const at::Tensor x = at::randn({12, 4});
  expect_error("2-D rowptr", "rowptr must be 1-D", [&] { spmm(rowptr.unsqueeze(0), col, val, x); });
  expect_error("float col", "col must be int64 or int32", [&] { spmm(rowptr, col.to(at::kFloat), val, x); });
  expect_error("short val", "val and col must have the same length", [&] { spmm(rowptr, col, val.slice(0, 0, 4), x); });
  expect_error("val dtype", "val must have the dtype of x", [&] { spmm(rowptr, col, val.to(at::kDouble), x); });
  expect_error("1-D x", "x must be 2-D", [&] { spmm(rowptr, col, val, x.select(1, 0)); });
  expect_error("col range", "col contains index 11, out of range for x with 11 rows", [&] { spmm(rowptr, col, val, x.slice(0, 0, 11).contiguous()); });
  expect_error("rowptr end", "rowptr[-1] must equal nnz", [&] { spmm(rowptr, col.slice(0, 0, 4), val.slice(0, 0, 4), x); });
  expect_error("negative layers", "num_layers must be >= 0", [&] { propagate(rowptr, col, val, x.slice(0, 0, 3), -1); });
  expect_error("non-square", "the graph must be square", [&] { propagate(rowptr, col, val, x, 2); });
}

void test_empty() {
  for (at::Device dev : devices()) {
    const auto L = at::TensorOptions().dtype(at::kLong).device(dev);
    const auto F = at::TensorOptions().dtype(at::kFloat).device(dev);
    at::Tensor out = spmm(at::zeros({1}, L), at::zeros({0}, L), at::zeros({0}, F), at::randn({0, 5}, F));
    EXPECT(out.size(0) == 0 && out.size(1) == 5, "empty spmm shape");
    at::Tensor x = at::randn({4, 3}, F);
    out = spmm(at::zeros({5}, L), at::zeros({0}, L), at::zeros({0}, F), x);
    EXPECT(out.cpu().abs().max().item<float>() == 0.f, "spmm with 0 nnz must be 0");
    out = propagate(at::zeros({5}, L), at::zeros({0}, L), at::zeros({0}, F), x, 3);
    EXPECT(rel_err(out, (x.to(at::kDouble) / 4).cpu()) < 1e-7, "propagate with 0 nnz must be x / (L + 1)");
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string which = argc > 1 ? argv[1] : "all";
  at::manual_seed(0);
  bool ran = false;
  if (which == "spmm" || which == "all") test_spmm(), ran = true;
  if (which == "propagate" || which == "all") test_propagate(), ran = true;
  if (which == "errors" || which == "all") test_errors(), ran = true;
  if (which == "empty" || which == "all") test_empty(), ran = true;
  if (!ran) {
    std::printf("unknown test '%s' (spmm | propagate | errors | empty | all)\n", which.c_str());
    return 2;
  }
  std::printf("%s: %s (%d failures)\n", which.c_str(), failures ? "FAILED" : "ok", failures);
  return failures ? 1 : 0;
}
