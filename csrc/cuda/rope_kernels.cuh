// Rotary embedding (HF rotate-half) on q and k in place, optionally followed by
// the paged KV-cache write of the rotated k and of v. One thread block per
// token; threads walk (head, i < head_dim / 2) pairs. Same numerics as the CPU
// kernel (csrc/cpu/rope_kernels.h): x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin
// in fp32 without fused multiply-adds, rounded once. An E4M3 cache (kv_fp8) gets
// e4m3(x / scale) of the rounded k and of v: an IEEE division (__fdiv_rn) and the
// saturating conversion of fp8_quantize (csrc/cuda/fp8_kernels.cuh), so its bytes
// equal the CPU kernel's and the reference's.
#pragma once

#include "common.cuh"

namespace reward_engine::cuda {

struct RopeParams {
  void* q;
  int64_t q_token_stride, q_head_stride, num_q_heads;
  void* k;
  int64_t k_token_stride, k_head_stride, num_kv_heads;
  const void* v;  // rope_and_cache only
  int64_t v_token_stride, v_head_stride;
  const void* positions;
  bool positions_int64;
  const float* cos_sin_cache;
  int64_t head_dim;
  void* key_cache;  // null: rope only
  void* value_cache;
  const void* slot_mapping;
  bool slots_int64;
  bool kv_fp8;  // caches hold E4M3 codes of k / *k_scale and v / *v_scale
  const float* k_scale;
  const float* v_scale;
};

__device__ inline int64_t load_index(const void* p, bool is_int64, int64_t i) {
  return is_int64 ? static_cast<const int64_t*>(p)[i] : int64_t(static_cast<const int32_t*>(p)[i]);
}

template <class T>
__global__ void rope_kernel(RopeParams p) {
  using C = Convert<T>;
  const int64_t t = blockIdx.x;
  const int64_t half = p.head_dim / 2;
  const float* cos = p.cos_sin_cache + load_index(p.positions, p.positions_int64, t) * p.head_dim;
  const float* sin = cos + half;
  const int64_t heads = p.num_q_heads + p.num_kv_heads;
  for (int64_t e = threadIdx.x; e < heads * half; e += blockDim.x) {
    const int64_t h = e / half, i = e % half;
    T* x = h < p.num_q_heads
               ? static_cast<T*>(p.q) + t * p.q_token_stride + h * p.q_head_stride
               : static_cast<T*>(p.k) + t * p.k_token_stride +
                     (h - p.num_q_heads) * p.k_head_stride;
    const float x1 = C::to_float(x[i]), x2 = C::to_float(x[i + half]);
    const float c = cos[i], s = sin[i];
    x[i] = C::from_float(__fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s)));
    x[i + half] = C::from_float(__fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s)));
  }
  if (p.key_cache == nullptr) return;
  const int64_t slot = load_index(p.slot_mapping, p.slots_int64, t);
  if (slot < 0) return;
  __syncthreads();  // the rotated k of this token is complete
  const int64_t width = p.num_kv_heads * p.head_dim;
  const T* k = static_cast<const T*>(p.k) + t * p.k_token_stride;
  const T* v = static_cast<const T*>(p.v) + t * p.v_token_stride;
  if (p.kv_fp8) {
    uint8_t* kc = static_cast<uint8_t*>(p.key_cache) + slot * width;
    uint8_t* vc = static_cast<uint8_t*>(p.value_cache) + slot * width;
    const float ks = *p.k_scale, vs = *p.v_scale;
    for (int64_t e = threadIdx.x; e < width; e += blockDim.x) {
      const int64_t h = e / p.head_dim, d = e % p.head_dim;
      kc[e] = to_e4m3(__fdiv_rn(C::to_float(k[h * p.k_head_stride + d]), ks));
      vc[e] = to_e4m3(__fdiv_rn(C::to_float(v[h * p.v_head_stride + d]), vs));
    }
    return;
  }
  T* kc = static_cast<T*>(p.key_cache) + slot * width;
  T* vc = static_cast<T*>(p.value_cache) + slot * width;
  for (int64_t e = threadIdx.x; e < width; e += blockDim.x) {
    const int64_t h = e / p.head_dim, d = e % p.head_dim;
    kc[e] = k[h * p.k_head_stride + d];
    vc[e] = v[h * p.v_head_stride + d];
  }
}

}  // namespace reward_engine::cuda
