// Launchers for silu_mul and silu_mul_fp8 (activation_kernels.cuh).
#include <algorithm>

#include "activation_kernels.cuh"
#include "ops.h"

namespace reward_engine::cuda {
namespace {

template <bool kFp8>
void launch(uintptr_t out, uintptr_t x, int64_t rows, int64_t inter, int64_t out_stride,
            int64_t x_stride, uintptr_t scale, int dtype, uintptr_t stream) {
  check_dtype(dtype, "silu_mul");
  check(rows >= 0 && rows < (int64_t(1) << 31) && inter > 0,
        "silu_mul: rows must be in [0, 2^31) and the output width > 0");
  if (rows == 0) return;
  check(out != 0 && x != 0 && (!kFp8 || scale != 0), "silu_mul: null pointer");
  const int threads = int(std::min<int64_t>(1024, (inter + 31) / 32 * 32));
  auto s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    silu_mul_kernel<T, kFp8><<<unsigned(rows), threads, 0, s>>>(
        reinterpret_cast<void*>(out), reinterpret_cast<const T*>(x), inter, out_stride,
        x_stride, reinterpret_cast<const float*>(scale));
  });
  check_launch("silu_mul");
}

}  // namespace

void silu_mul(uintptr_t out, uintptr_t x, int64_t rows, int64_t inter, int64_t out_stride,
              int64_t x_stride, int dtype, uintptr_t stream) {
  launch<false>(out, x, rows, inter, out_stride, x_stride, 0, dtype, stream);
}

void silu_mul_fp8(uintptr_t out, uintptr_t x, int64_t rows, int64_t inter, int64_t out_stride,
                  int64_t x_stride, uintptr_t scale, int dtype, uintptr_t stream) {
  launch<true>(out, x, rows, inter, out_stride, x_stride, scale, dtype, stream);
}

}  // namespace reward_engine::cuda
