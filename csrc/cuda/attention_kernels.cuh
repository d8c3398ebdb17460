// Paged prefill attention: a straightforward tiled online-softmax kernel.
//
// One thread block per (query tile of kTileQ new tokens, q head, sequence).
// The tile's queries (pre-multiplied by the softmax scale) stay in shared
// memory; key/value tiles of kTileK tokens are gathered through the block table
// into shared memory as fp32; scores, the running max / sum and the output
// accumulators are fp32 (accumulators in registers, kMaxOut per thread).
// Query row r sits at absolute position context_len - query_len + tile_start + r
// and sees keys 0 .. that position (causal over absolute positions, so cached
// prefixes and chunked prefill are the same case). GQA: q head h reads kv head
// h / (num_q_heads / num_kv_heads). An E4M3 cache (KV = uint8_t) is decoded
// exactly as its tiles are loaded; k_scale joins the query pre-scale and v_scale
// the output (both 1, so both products exact, for a cache in the input type).
#pragma once

#include "common.cuh"

namespace reward_engine::cuda {

constexpr int kTileQ = 16;
constexpr int kTileK = 32;
constexpr int kAttnThreads = 128;
constexpr int kMaxHeadDim = 256;
constexpr int kMaxOut = kTileQ * kMaxHeadDim / kAttnThreads;

struct AttentionParams {
  void* out;
  int64_t out_token_stride, out_head_stride;
  const void* q;
  int64_t q_token_stride, q_head_stride;
  const void* key_cache;
  const void* value_cache;
  int64_t block_size, num_q_heads, num_kv_heads, head_dim;
  const int32_t* block_tables;
  int64_t block_table_stride;
  const int64_t* query_start_loc;
  const int64_t* context_lens;
  float scale;
  bool kv_fp8;  // E4M3 caches: values are code * *k_scale and code * *v_scale
  const float* k_scale;
  const float* v_scale;
};

// The per-tensor scales of an E4M3 cache, 1 for a cache in the input type.
__device__ inline float kv_scale(const AttentionParams& p, const float* scale) {
  return p.kv_fp8 ? *scale : 1.0f;
}

// One cache element as fp32 (exact): KV is the input type T or uint8_t (E4M3 codes).
template <class T, class KV>
__device__ inline float load_kv(const void* cache, int64_t offset) {
  if constexpr (std::is_same_v<KV, uint8_t>) {
    return from_e4m3(static_cast<const uint8_t*>(cache)[offset]);
  } else {
    return Convert<T>::to_float(static_cast<const T*>(cache)[offset]);
  }
}

// Shared memory: q [kTileQ][D], k and v [kTileK][D], scores [kTileQ][kTileK],
// row max / sum / correction [kTileQ] each.
inline size_t attention_smem_bytes(int64_t head_dim) {
  return sizeof(float) * size_t((kTileQ + 2 * kTileK) * head_dim + kTileQ * kTileK + 3 * kTileQ);
}

template <class T, class KV>
__global__ void __launch_bounds__(kAttnThreads) paged_attention_kernel(AttentionParams p) {
  using C = Convert<T>;
  extern __shared__ float smem[];
  const int64_t D = p.head_dim;
  float* qs = smem;
  float* ks = qs + kTileQ * D;
  float* vs = ks + kTileK * D;
  float* sc = vs + kTileK * D;
  float* row_max = sc + kTileQ * kTileK;
  float* row_sum = row_max + kTileQ;
  float* row_corr = row_sum + kTileQ;

  const int64_t seq = blockIdx.z, head = blockIdx.y;
  const int64_t q_begin = p.query_start_loc[seq], q_len = p.query_start_loc[seq + 1] - q_begin;
  const int64_t tile0 = int64_t(blockIdx.x) * kTileQ;
  if (tile0 >= q_len) return;
  const int rows = int(q_len - tile0 < kTileQ ? q_len - tile0 : kTileQ);
  const int64_t ctx = p.context_lens[seq];
  const int64_t first_pos = ctx - q_len + tile0;  // absolute position of row 0
  const int64_t kv_end = first_pos + rows;        // keys [0, kv_end) can be visible
  const int64_t kv_head = head / (p.num_q_heads / p.num_kv_heads);
  const int32_t* table = p.block_tables + seq * p.block_table_stride;
  const int tid = threadIdx.x;
  const float q_scale = p.scale * kv_scale(p, p.k_scale);

  for (int64_t e = tid; e < kTileQ * D; e += kAttnThreads) {
    const int64_t r = e / D, d = e % D;
    float v = 0.0f;
    if (r < rows) {
      const T* qrow = static_cast<const T*>(p.q) + (q_begin + tile0 + r) * p.q_token_stride +
                      head * p.q_head_stride;
      v = C::to_float(qrow[d]) * q_scale;
    }
    qs[e] = v;
  }
  if (tid < kTileQ) {
    row_max[tid] = -INFINITY;
    row_sum[tid] = 0.0f;
  }
  float acc[kMaxOut];
#pragma unroll
  for (int i = 0; i < kMaxOut; ++i) acc[i] = 0.0f;
  // this thread owns output elements tid + i * kAttnThreads (row-major [kTileQ][D])
  const int outs = int((kTileQ * D + kAttnThreads - 1) / kAttnThreads);

  for (int64_t k0 = 0; k0 < kv_end; k0 += kTileK) {
    const int keys = int(kv_end - k0 < kTileK ? kv_end - k0 : kTileK);
    __syncthreads();  // previous tile fully consumed
    for (int64_t e = tid; e < kTileK * D; e += kAttnThreads) {
      const int64_t j = e / D, d = e % D;
      float kv = 0.0f, vv = 0.0f;
      if (j < keys) {
        const int64_t pos = k0 + j;
        const int64_t slot = int64_t(table[pos / p.block_size]) * p.block_size + pos % p.block_size;
        const int64_t off = (slot * p.num_kv_heads + kv_head) * D + d;
        kv = load_kv<T, KV>(p.key_cache, off);
        vv = load_kv<T, KV>(p.value_cache, off);
      }
      ks[e] = kv;
      vs[e] = vv;
    }
    __syncthreads();
    for (int e = tid; e < kTileQ * kTileK; e += kAttnThreads) {
      const int r = e / kTileK, j = e % kTileK;
      float s = -INFINITY;
      if (r < rows && j < keys && k0 + j <= first_pos + r) {
        s = 0.0f;
        for (int64_t d = 0; d < D; ++d) s += qs[r * D + d] * ks[j * D + d];
      }
      sc[e] = s;
    }
    __syncthreads();
    if (tid < kTileQ) {
      const int r = tid;
      float m = row_max[r];
      for (int j = 0; j < kTileK; ++j) m = fmaxf(m, sc[r * kTileK + j]);
      // m stays -inf only for padding rows (every real row sees key 0 first)
      const float corr = m == -INFINITY ? 1.0f : expf(row_max[r] - m);
      float sum = row_sum[r] * corr;
      for (int j = 0; j < kTileK; ++j) {
        const float pj = m == -INFINITY ? 0.0f : expf(sc[r * kTileK + j] - m);
        sc[r * kTileK + j] = pj;
        sum += pj;
      }
      row_max[r] = m;
      row_sum[r] = sum;
      row_corr[r] = corr;
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kMaxOut; ++i) {
      const int64_t e = tid + int64_t(i) * kAttnThreads;
      if (i < outs && e < kTileQ * D) {
        const int64_t r = e / D, d = e % D;
        float a = acc[i] * row_corr[r];
        for (int j = 0; j < keys; ++j) a += sc[r * kTileK + j] * vs[j * D + d];
        acc[i] = a;
      }
    }
  }
  __syncthreads();
  const float v_scale = kv_scale(p, p.v_scale);
#pragma unroll
  for (int i = 0; i < kMaxOut; ++i) {
    const int64_t e = tid + int64_t(i) * kAttnThreads;
    if (i < outs && e < kTileQ * D) {
      const int64_t r = e / D, d = e % D;
      if (r < rows) {
        T* orow = static_cast<T*>(p.out) + (q_begin + tile0 + r) * p.out_token_stride +
                  head * p.out_head_stride;
        orow[d] = C::from_float((acc[i] / row_sum[r]) * v_scale);
      }
    }
  }
}

}  // namespace reward_engine::cuda
