// Launchers for rms_norm_fp8 and fused_add_rms_norm_fp8 (norm_fp8_kernels.cuh).
#include <algorithm>

#include "norm_fp8_kernels.cuh"
#include "ops.h"

namespace reward_engine::cuda {
namespace {

template <bool kFused>
void launch(uintptr_t out, uintptr_t x, uintptr_t residual, uintptr_t weight, int64_t rows,
            int64_t hidden, int64_t out_stride, int64_t x_stride, int64_t residual_stride,
            double eps, uintptr_t scale, int dtype, uintptr_t stream) {
  const char* op = kFused ? "fused_add_rms_norm" : "rms_norm";
  check_dtype(dtype, op);
  check(rows >= 0 && rows < (int64_t(1) << 31) && hidden > 0,
        std::string(op) + ": rows must be in [0, 2^31) and hidden > 0");
  if (rows == 0) return;
  check(out && x && weight && scale && (!kFused || residual), std::string(op) + ": null pointer");
  const int threads = int(std::min<int64_t>(1024, (hidden + 31) / 32 * 32));
  auto s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    rms_norm_fp8_kernel<T, kFused><<<unsigned(rows), threads, 0, s>>>(
        reinterpret_cast<uint8_t*>(out), reinterpret_cast<const T*>(x),
        reinterpret_cast<T*>(residual), reinterpret_cast<const T*>(weight), hidden, out_stride,
        x_stride, residual_stride, float(eps), reinterpret_cast<const float*>(scale));
  });
  check_launch(op);
}

}  // namespace

void rms_norm_fp8(uintptr_t out, uintptr_t x, uintptr_t weight, int64_t rows, int64_t hidden,
                  int64_t out_stride, int64_t x_stride, double eps, uintptr_t scale, int dtype,
                  uintptr_t stream) {
  launch<false>(out, x, 0, weight, rows, hidden, out_stride, x_stride, 0, eps, scale, dtype,
                stream);
}

void fused_add_rms_norm_fp8(uintptr_t out, uintptr_t x, uintptr_t residual, uintptr_t weight,
                            int64_t rows, int64_t hidden, int64_t out_stride, int64_t x_stride,
                            int64_t residual_stride, double eps, uintptr_t scale, int dtype,
                            uintptr_t stream) {
  launch<true>(out, x, residual, weight, rows, hidden, out_stride, x_stride, residual_stride, eps,
               scale, dtype, stream);
}

}  // namespace reward_engine::cuda
