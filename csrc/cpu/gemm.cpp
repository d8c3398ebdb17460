// Launcher for batch_invariant_linear (kernels in gemm_kernels.h, gemm_bf16_kernels.h,
// gemm_amx_kernels.h): checks the arguments, packs B panel by panel, then hands
// (row block x panel group) work items to the threads.
//
// Nothing here changes a result: the split into chunks, items and threads decides
// only who computes an output element and when, never the order of its sum (see
// the kernel headers), so any thread count and any M give the same bits per row.
#include <algorithm>
#include <cstdlib>
#include <string>

#include "check.h"
#include "gemm_kernels.h"
#include "isa.h"
#include "ops.h"
#include "thread_pool.h"

namespace reward_engine::cpu {
namespace {

// Columns of B packed at a time: bounds the packing buffer (k = 8192 in fp32: 64 MiB).
constexpr int64_t kChunkCols = 2048;

// The calling thread's packing buffer, kept between calls: a fresh allocation of
// this size costs page faults comparable to a small GEMM.
struct PackBuffer {
  void* data = nullptr;
  size_t bytes = 0;
  ~PackBuffer() { std::free(data); }
  void* get(size_t want) {
    if (bytes < want) {
      std::free(data);
      data = std::aligned_alloc(64, (want + 63) / 64 * 64);
      check(data != nullptr, "batch_invariant_linear: out of memory for the packed weight");
      bytes = want;
    }
    return data;
  }
};
thread_local PackBuffer t_pack;

int64_t panel_bytes(int layout, int64_t k) {
  return layout == kGemmPackedPairs ? (k + 31) / 32 * 16 * kGemmPanelCols * 4
                                    : k * kGemmPanelCols * 4;
}

}  // namespace

void batch_invariant_linear(uintptr_t out, int64_t out_stride, uintptr_t a, int64_t a_stride,
                            uintptr_t b, int64_t b_stride, uintptr_t bias, int64_t m, int64_t n,
                            int64_t k, int dtype, int num_threads) {
  check_dtype(dtype, "batch_invariant_linear");
  check(m >= 0 && n >= 0 && k > 0, "batch_invariant_linear: need m, n >= 0 and k > 0");
  if (m == 0 || n == 0) return;
  check(out != 0 && a != 0 && b != 0, "batch_invariant_linear: null pointer");
  check(a_stride >= k && b_stride >= k && out_stride >= n,
        "batch_invariant_linear: a row stride is shorter than its row");
  const GemmKernel& kernel = active_kernels().gemm[dtype];
  const GemmArgs args{reinterpret_cast<const void*>(a), a_stride,
                      reinterpret_cast<const void*>(b), b_stride,
                      reinterpret_cast<const void*>(bias), reinterpret_cast<void*>(out),
                      out_stride, m, n, k};
  const int64_t per_panel = panel_bytes(kernel.layout, k);
  // A thread pays off from roughly a millisecond of arithmetic, or from 128 KiB of
  // memory traffic (packing B, and reading it back, dominate when m is small).
  const double flops = 2.0 * double(m) * double(n) * double(k);
  const int64_t b_bytes = n * k * element_size(dtype);
  const int by_flops = int(std::max(1.0, std::min<double>(num_threads, flops / 2e7)));
  const int threads = std::max(by_flops, threads_for(2 * b_bytes, n, num_threads));
  const int64_t row_blocks = (m + kLinearItemRows - 1) / kLinearItemRows;

  for (int64_t n0 = 0; n0 < n; n0 += kChunkCols) {
    const int64_t cols = std::min(kChunkCols, n - n0);
    const int64_t panels = (cols + kGemmPanelCols - 1) / kGemmPanelCols;
    void* packed = t_pack.get(size_t(panels * per_panel));
    parallel_for(panels, std::min<int>(threads, int(panels)), [&](int64_t p0, int64_t p1) {
      kernel.pack(args, n0, p0, p1, packed);
    });
    // Up to kLinearItemPanels panels per item reuse each block of A (and its padded
    // copy); fewer when the items would otherwise be too few to keep every thread busy.
    const int64_t want_groups = (4 * threads + row_blocks - 1) / row_blocks;
    const int64_t group = std::clamp<int64_t>((panels + want_groups - 1) / want_groups, 1,
                                              kLinearItemPanels);
    const int64_t groups = (panels + group - 1) / group, items = row_blocks * groups;
    parallel_for(
        items, std::min<int64_t>(threads, items),
        [&](int64_t i0, int64_t i1) {
          for (int64_t item = i0; item < i1; ++item) {
            const int64_t rb = item / groups, pg = item % groups;
            const int64_t m0 = rb * kLinearItemRows, m1 = std::min(m, m0 + kLinearItemRows);
            const int64_t p0 = pg * group, p1 = std::min(panels, p0 + group);
            kernel.compute(args, packed, n0, m0, m1, p0, p1);
          }
        },
        items);
  }
}

}  // namespace reward_engine::cpu
