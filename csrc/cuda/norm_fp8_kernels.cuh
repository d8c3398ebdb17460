// RMSNorm / fused-add RMSNorm with E4M3 output: the same steps as
// rms_norm_kernel (norm_kernels.cuh), then y (rounded to T) is quantized with a
// static per-tensor scale: exactly fp8_quantize of the activation-dtype result.
// One block per row, element-wise loads (correctness first).
#pragma once

#include "common.cuh"

namespace reward_engine::cuda {

template <class T, bool kFused>
__global__ void rms_norm_fp8_kernel(uint8_t* __restrict__ out, const T* __restrict__ x,
                                    T* __restrict__ residual, const T* __restrict__ weight,
                                    int64_t hidden, int64_t out_stride, int64_t x_stride,
                                    int64_t residual_stride, float eps,
                                    const float* __restrict__ scale) {
  using C = Convert<T>;
  const int64_t row = blockIdx.x;
  const T* xr = x + row * x_stride;
  T* rr = kFused ? residual + row * residual_stride : nullptr;
  float acc = 0.0f;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    float f = C::to_float(xr[i]);
    if constexpr (kFused) {
      const T s = C::from_float(f + C::to_float(rr[i]));
      rr[i] = s;
      f = C::to_float(s);
    }
    acc += f * f;
  }
  const float inv_rms = 1.0f / sqrtf(block_sum(acc) / float(hidden) + eps);
  const float s = *scale;
  const T* src = kFused ? rr : xr;  // each thread re-reads what it wrote
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    const T normed = C::from_float(C::to_float(src[i]) * inv_rms);
    const T y = C::from_float(C::to_float(normed) * C::to_float(weight[i]));
    out[row * out_stride + i] = to_e4m3(__fdiv_rn(C::to_float(y), s));
  }
}

}  // namespace reward_engine::cuda
