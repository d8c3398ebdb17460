// FP8 E4M3 quantization on the GPU, same numerics as csrc/cpu/fp8_kernels.h:
// q = e4m3(float(x) / scale) with saturation, dynamic scale = largest finite
// |x| / 448 (1 when there is none). Per-tensor dynamic scales take two passes:
// an amax reduction (atomicMax on the float's bits: non-negative floats order
// like their integer bits) and the quantize pass.
#pragma once

#include "common.cuh"

namespace reward_engine::cuda {

constexpr int kQuantThreads = 256;

// Block-wide max of v; every thread gets it.
__device__ inline float block_max(float v) {
  __shared__ float warp_vals[32];
  v = warp_max(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_vals[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) >> 5;
  v = threadIdx.x < warps ? warp_vals[threadIdx.x] : 0.0f;
  if (warp == 0) v = warp_max(v);
  if (threadIdx.x == 0) warp_vals[0] = v;
  __syncthreads();
  return warp_vals[0];
}

// kPerToken: scale[row] = scale_from_amax(row amax); else atomicMax into *amax_bits.
template <class T, bool kPerToken>
__global__ void row_amax_kernel(const T* __restrict__ x, int64_t cols, int64_t x_stride,
                                float* __restrict__ scale, unsigned* __restrict__ amax_bits) {
  using C = Convert<T>;
  const T* row = x + int64_t(blockIdx.x) * x_stride;
  float m = 0.0f;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) m = fmaxf(m, finite_abs(C::to_float(row[j])));
  m = block_max(m);
  if (threadIdx.x != 0) return;
  if constexpr (kPerToken) {
    scale[blockIdx.x] = fp8_scale_from_amax(m);
  } else {
    atomicMax(amax_bits, __float_as_uint(m));
  }
}

static __global__ void amax_to_scale_kernel(float* scale) {
  scale[0] = fp8_scale_from_amax(scale[0]);  // holds the amax until now
}

// One thread per column, looping over rows (coalesced across the warp).
template <class T>
__global__ void col_amax_kernel(const T* __restrict__ x, int64_t rows, int64_t cols,
                                int64_t x_stride, float* __restrict__ scale) {
  using C = Convert<T>;
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float m = 0.0f;
  for (int64_t r = 0; r < rows; ++r) m = fmaxf(m, finite_abs(C::to_float(x[r * x_stride + c])));
  scale[c] = fp8_scale_from_amax(m);
}

// granularity 0: scale[0]; 1: scale[row]; 2: scale[col].
template <class T>
__global__ void quantize_kernel(uint8_t* __restrict__ out, const T* __restrict__ x, int64_t cols,
                                int64_t out_stride, int64_t x_stride,
                                const float* __restrict__ scale, int granularity) {
  using C = Convert<T>;
  const int64_t row = blockIdx.x;
  const float row_scale = scale[granularity == 1 ? row : 0];
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    const float s = granularity == 2 ? scale[j] : row_scale;
    out[row * out_stride + j] = to_e4m3(__fdiv_rn(C::to_float(x[row * x_stride + j]), s));
  }
}

// out[m, n] = acc[m, n] * (a_scale[m or 0] * b_scale[n or 0]) + bias[n], rounded to T:
// the epilogue of fp8_gemm after an unscaled fp32 cuBLASLt GEMM.
template <class T>
__global__ void fp8_gemm_epilogue_kernel(T* __restrict__ out, int64_t out_stride,
                                         const float* __restrict__ acc, int64_t rows, int64_t n,
                                         const float* __restrict__ a_scale, bool per_token,
                                         const float* __restrict__ b_scale, bool per_channel,
                                         const T* __restrict__ bias) {
  using C = Convert<T>;
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= n) return;
  const float sb = b_scale[per_channel ? j : 0];
  const float bj = bias != nullptr ? C::to_float(bias[j]) : 0.0f;
  for (int64_t m = blockIdx.y; m < rows; m += gridDim.y) {
    float v = __fmul_rn(acc[m * n + j], __fmul_rn(a_scale[per_token ? m : 0], sb));
    if (bias != nullptr) v = __fadd_rn(v, bj);
    out[m * out_stride + j] = C::from_float(v);
  }
}

}  // namespace reward_engine::cuda
