// Device helpers shared by the CUDA kernels: E4M3 conversions, launch checks.
// (Convert<T> and Pack<T> live in norm_kernels.cuh, which every kernel header includes.)
#pragma once

#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "norm_kernels.cuh"

namespace reward_engine::cuda {

constexpr float kFp8Max = 448.0f;

// E4M3 with saturation to +-448 (inf included), NaN kept, round to nearest even:
// the same encoding as the CPU kernels (csrc/cpu/fp8.h).
__device__ inline uint8_t to_e4m3(float v) {
  return uint8_t(__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3));
}

__device__ inline float from_e4m3(uint8_t v) {
  return __half2float(__half(__nv_cvt_fp8_to_halfraw(__nv_fp8_storage_t(v), __NV_E4M3)));
}

// Largest finite |v| (0 for NaN and inf).
__device__ inline float finite_abs(float v) {
  const float a = fabsf(v);
  return a <= 3.4028234663852886e38f ? a : 0.0f;
}

__device__ inline float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  return v;
}

// Dynamic FP8 scale from an amax (same rule as csrc/cpu/fp8.cpp scale_from_amax).
__device__ inline float fp8_scale_from_amax(float amax) {
  const float s = amax > 0.0f ? __fdiv_rn(amax, kFp8Max) : 1.0f;
  return fmaxf(s, 1.17549435e-38f);
}

inline void check(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

inline void check_launch(const char* op) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(op) + " launch: " + cudaGetErrorString(err));
  }
}

inline void check_dtype(int dtype, const char* op) {
  check(dtype >= 0 && dtype <= 2, std::string(op) + ": dtype code " + std::to_string(dtype) +
                                      " is not float32 (0), bfloat16 (1) or float16 (2)");
}

// Calls f(T{}) with T the element type of a dtype code.
template <class F>
void dispatch_dtype(int dtype, F&& f) {
  switch (dtype) {
    case 0:
      return f(float{});
    case 1:
      return f(__nv_bfloat16{});
    default:
      return f(__half{});
  }
}

}  // namespace reward_engine::cuda
