// Launcher for fp8_quantize (fp8_kernels.cuh).
#include <algorithm>

#include "fp8_kernels.cuh"
#include "ops.h"

namespace reward_engine::cuda {

void fp8_quantize(uintptr_t out, uintptr_t x, int64_t rows, int64_t cols, int64_t out_stride,
                  int64_t x_stride, uintptr_t scale, int granularity, bool dynamic, int dtype,
                  uintptr_t stream) {
  const char* op = "fp8_quantize";
  check_dtype(dtype, op);
  check(rows >= 0 && rows < (int64_t(1) << 31) && cols >= 0,
        "fp8_quantize: rows must be in [0, 2^31) and cols >= 0");
  check(granularity >= 0 && granularity <= 2,
        "fp8_quantize: granularity must be 0 (tensor), 1 (token) or 2 (channel)");
  check(scale != 0, "fp8_quantize: null scale pointer");
  auto s = reinterpret_cast<cudaStream_t>(stream);
  auto* sc = reinterpret_cast<float*>(scale);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* xp = reinterpret_cast<const T*>(x);
    if (dynamic && granularity == 0) {
      // amax over nothing is 0 -> scale 1, so the empty case needs no branch
      cudaMemsetAsync(sc, 0, sizeof(float), s);
      if (rows > 0 && cols > 0) {
        row_amax_kernel<T, false><<<unsigned(rows), kQuantThreads, 0, s>>>(
            xp, cols, x_stride, nullptr, reinterpret_cast<unsigned*>(sc));
      }
      amax_to_scale_kernel<<<1, 1, 0, s>>>(sc);
    } else if (dynamic && granularity == 1 && rows > 0) {
      row_amax_kernel<T, true><<<unsigned(rows), kQuantThreads, 0, s>>>(xp, cols, x_stride, sc,
                                                                        nullptr);
    } else if (dynamic && granularity == 2 && cols > 0) {
      col_amax_kernel<T><<<unsigned((cols + kQuantThreads - 1) / kQuantThreads), kQuantThreads,
                           0, s>>>(xp, rows, cols, x_stride, sc);
    }
    if (rows > 0 && cols > 0) {
      const int threads = int(std::min<int64_t>(1024, (cols + 31) / 32 * 32));
      quantize_kernel<T><<<unsigned(rows), threads, 0, s>>>(
          reinterpret_cast<uint8_t*>(out), xp, cols, out_stride, x_stride, sc, granularity);
    }
  });
  check_launch(op);
}

}  // namespace reward_engine::cuda
