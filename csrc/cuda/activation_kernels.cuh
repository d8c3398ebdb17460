// SwiGLU: y = silu(gate) * up with x = [gate | up] per row, computed in fp32 and
// rounded once to T, like the CPU kernel (csrc/cpu/activation_kernels.h).
// kFp8: y is then rounded to T and quantized to E4M3 with a per-tensor scale
// (exactly fp8_quantize of the T result).
#pragma once

#include "common.cuh"

namespace reward_engine::cuda {

template <class T, bool kFp8>
__global__ void silu_mul_kernel(void* __restrict__ out, const T* __restrict__ x, int64_t inter,
                                int64_t out_stride, int64_t x_stride,
                                const float* __restrict__ scale) {
  using C = Convert<T>;
  const int64_t row = blockIdx.x;
  const T* gate = x + row * x_stride;
  const T* up = gate + inter;
  for (int64_t i = threadIdx.x; i < inter; i += blockDim.x) {
    const float g = C::to_float(gate[i]);
    // IEEE division and no contraction: the same roundings as the CPU kernel
    const float y = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), C::to_float(up[i]));
    if constexpr (kFp8) {
      const float rounded = C::to_float(C::from_float(y));
      static_cast<uint8_t*>(out)[row * out_stride + i] = to_e4m3(__fdiv_rn(rounded, *scale));
    } else {
      static_cast<T*>(out)[row * out_stride + i] = C::from_float(y);
    }
  }
}

}  // namespace reward_engine::cuda
