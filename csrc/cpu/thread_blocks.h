// Shared by the blocked OpenMP CPU kernels (code_usage_cpu.cpp, rank_topk_cpu.cpp): split `count` blocks of
// work into one contiguous share per thread.
#pragma once

#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace motorec {
namespace cpu {

// Runs fn(tid, b0, b1) on each of `threads` threads' share [b0, b1) of blocks [0, count). A one-thread run opens
// no parallel region: a one-thread team would make BLAS open a nested one. Inside the region BLAS and ATen run
// single-threaded, so the parallelism is over blocks. fn must not throw (an exception cannot leave an OpenMP
// region): check inputs before calling.
template <typename F>
void for_thread_shares(int threads, int64_t count, F fn) {
  if (threads <= 1) {
    fn(int64_t(0), int64_t(0), count);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
#ifdef _OPENMP
    const int64_t tid = omp_get_thread_num(), nt = omp_get_num_threads();
#else
    const int64_t tid = 0, nt = 1;
#endif
    fn(tid, count * tid / nt, count * (tid + 1) / nt);
  }
}

}  // namespace cpu
}  // namespace motorec
