// Launchers for the CUDA RMSNorm kernels (norm_kernels.cuh): check the
// arguments, choose the vectorized or scalar variant, dispatch on dtype.
#include <cuda_runtime.h>

#include <algorithm>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "norm_kernels.cuh"
#include "ops.h"

namespace reward_engine::cuda {
namespace {

void check(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

template <class T>
bool can_vectorize(int64_t hidden, std::initializer_list<uintptr_t> pointers,
                   std::initializer_list<int64_t> strides) {
  constexpr int64_t n = Pack<T>::kSize;
  if (hidden % n != 0) return false;
  for (uintptr_t p : pointers) {
    if (p % 16 != 0) return false;
  }
  for (int64_t s : strides) {
    if (s % n != 0) return false;
  }
  return true;
}

template <class T, bool kFused>
void launch(uintptr_t out, uintptr_t x, uintptr_t residual, uintptr_t weight, int64_t rows,
            int64_t hidden, int64_t out_stride, int64_t x_stride, int64_t residual_stride,
            float eps, cudaStream_t stream) {
  const bool vectorized = kFused ? can_vectorize<T>(hidden, {out, x, residual, weight},
                                                    {out_stride, x_stride, residual_stride})
                                 : can_vectorize<T>(hidden, {out, x, weight},
                                                    {out_stride, x_stride});
  const int64_t items = vectorized ? hidden / Pack<T>::kSize : hidden;
  const int threads = int(std::min<int64_t>(1024, (items + 31) / 32 * 32));
  auto* o = reinterpret_cast<T*>(out);
  auto* xi = reinterpret_cast<const T*>(x);
  auto* r = reinterpret_cast<T*>(residual);
  auto* w = reinterpret_cast<const T*>(weight);
  if (vectorized) {
    rms_norm_kernel<T, kFused, true><<<unsigned(rows), threads, 0, stream>>>(
        o, xi, r, w, hidden, out_stride, x_stride, residual_stride, eps);
  } else {
    rms_norm_kernel<T, kFused, false><<<unsigned(rows), threads, 0, stream>>>(
        o, xi, r, w, hidden, out_stride, x_stride, residual_stride, eps);
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("rms_norm launch: ") + cudaGetErrorString(err));
}

template <bool kFused>
void dispatch(uintptr_t out, uintptr_t x, uintptr_t residual, uintptr_t weight, int64_t rows,
              int64_t hidden, int64_t out_stride, int64_t x_stride, int64_t residual_stride,
              double eps, int dtype, uintptr_t stream) {
  check(rows >= 0 && rows < (int64_t(1) << 31), "rms_norm: rows must be in [0, 2^31)");
  check(hidden > 0, "rms_norm: hidden size must be > 0");
  if (rows == 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  switch (dtype) {
    case 0:
      return launch<float, kFused>(out, x, residual, weight, rows, hidden, out_stride, x_stride,
                                   residual_stride, float(eps), s);
    case 1:
      return launch<__nv_bfloat16, kFused>(out, x, residual, weight, rows, hidden, out_stride,
                                           x_stride, residual_stride, float(eps), s);
    case 2:
      return launch<__half, kFused>(out, x, residual, weight, rows, hidden, out_stride, x_stride,
                                    residual_stride, float(eps), s);
    default:
      check(false, "rms_norm: dtype code " + std::to_string(dtype) +
                       " is not float32 (0), bfloat16 (1) or float16 (2)");
  }
}

}  // namespace

void rms_norm(uintptr_t out, uintptr_t x, uintptr_t weight, int64_t rows, int64_t hidden,
              int64_t out_stride, int64_t x_stride, double eps, int dtype, uintptr_t stream) {
  dispatch<false>(out, x, 0, weight, rows, hidden, out_stride, x_stride, 0, eps, dtype, stream);
}

void fused_add_rms_norm(uintptr_t out, uintptr_t x, uintptr_t residual, uintptr_t weight,
                        int64_t rows, int64_t hidden, int64_t out_stride, int64_t x_stride,
                        int64_t residual_stride, double eps, int dtype, uintptr_t stream) {
  dispatch<true>(out, x, residual, weight, rows, hidden, out_stride, x_stride, residual_stride,
                 eps, dtype, stream);
}

}  // namespace reward_engine::cuda
