// RMSNorm and fused-add RMSNorm CUDA kernels: one thread block per row,
// 16-byte vector loads when the row allows them, warp-shuffle reduction.
// Same numerics as the CPU kernels and the reference (kernels/norm.py):
//   1. (fused) s = round_T(x + residual); residual <- s
//   2. var = mean(float(s)^2) in fp32
//   3. n = round_T(float(s) / sqrt(var + eps))
//   4. y = round_T(n * float(weight))
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace reward_engine::cuda {

template <class T>
struct Convert;
template <>
struct Convert<float> {
  __device__ static float to_float(float v) { return v; }
  __device__ static float from_float(float v) { return v; }
};
template <>
struct Convert<__nv_bfloat16> {
  __device__ static float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
};
template <>
struct Convert<__half> {
  __device__ static float to_float(__half v) { return __half2float(v); }
  __device__ static __half from_float(float v) { return __float2half_rn(v); }
};

// 16 bytes of T: one 128-bit load or store.
template <class T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

// Sum of v over the block; every thread gets the result. Call once per kernel
// (the shared scratch is not reset).
__device__ inline float block_sum(float v) {
  __shared__ float warp_sums[32];
  __shared__ float total;
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int num_warps = (blockDim.x + 31) >> 5;
    v = lane < num_warps ? warp_sums[lane] : 0.0f;
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == 0) total = v;
  }
  __syncthreads();
  return total;
}

// kFused: residual <- x + residual, then normalize the residual.
// kVectorized: hidden and all row starts are multiples of Pack<T>::kSize and
// 16-byte aligned (checked by the launcher).
template <class T, bool kFused, bool kVectorized>
__global__ void rms_norm_kernel(T* __restrict__ out, const T* __restrict__ x,
                                T* __restrict__ residual, const T* __restrict__ weight,
                                int64_t hidden, int64_t out_stride, int64_t x_stride,
                                int64_t residual_stride, float eps) {
  using C = Convert<T>;
  constexpr int kStep = kVectorized ? Pack<T>::kSize : 1;
  using Item = typename std::conditional<kVectorized, Pack<T>, T>::type;
  const int64_t row = blockIdx.x;
  const Item* xr = reinterpret_cast<const Item*>(x + row * x_stride);
  Item* rr = kFused ? reinterpret_cast<Item*>(residual + row * residual_stride) : nullptr;
  Item* yr = reinterpret_cast<Item*>(out + row * out_stride);
  const Item* wr = reinterpret_cast<const Item*>(weight);
  const int64_t items = hidden / kStep;

  float acc = 0.0f;
  for (int64_t i = threadIdx.x; i < items; i += blockDim.x) {
    Item xv = xr[i];
    const T* xs = reinterpret_cast<const T*>(&xv);
    if constexpr (kFused) {
      Item rv = rr[i];
      T* rs = reinterpret_cast<T*>(&rv);
#pragma unroll
      for (int j = 0; j < kStep; ++j) {
        rs[j] = C::from_float(C::to_float(xs[j]) + C::to_float(rs[j]));
        const float f = C::to_float(rs[j]);
        acc += f * f;
      }
      rr[i] = rv;
    } else {
#pragma unroll
      for (int j = 0; j < kStep; ++j) {
        const float f = C::to_float(xs[j]);
        acc += f * f;
      }
    }
  }
  const float inv_rms = 1.0f / sqrtf(block_sum(acc) / float(hidden) + eps);

  // Each thread re-reads the elements it wrote in the first pass, so the
  // fused path needs no barrier between the passes.
  const Item* src = kFused ? rr : xr;
  for (int64_t i = threadIdx.x; i < items; i += blockDim.x) {
    Item sv = src[i], wv = wr[i], yv;
    const T* ss = reinterpret_cast<const T*>(&sv);
    const T* ws = reinterpret_cast<const T*>(&wv);
    T* ys = reinterpret_cast<T*>(&yv);
#pragma unroll
    for (int j = 0; j < kStep; ++j) {
      const T normed = C::from_float(C::to_float(ss[j]) * inv_rms);
      ys[j] = C::from_float(C::to_float(normed) * C::to_float(ws[j]));
    }
    yr[i] = yv;
  }
}

}  // namespace reward_engine::cuda
