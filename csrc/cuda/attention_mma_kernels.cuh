// Paged prefill attention on tensor cores (mma.sync m16n8k16, sm_80+), for
// bf16/fp16 and head_dim 64 or 128: the FlashAttention-2 scheme.
//
// One thread block of 4 warps per (64 new tokens, q head, sequence); warp w owns
// query rows 16w .. 16w+15. The Q tile is staged in shared memory once and kept
// in registers as mma A fragments. For each tile of 64 keys (up to the block's
// last query position), K and V rows are gathered through the block table into
// shared memory (16-byte loads); then each warp
// 1. computes S = Q K^T (16 x 64, fp32 accumulators) with mma.sync;
// 2. scales S by scale * log2(e) and masks keys after each row's absolute
//    position (context_len - query_len + row) with a large finite negative;
// 3. updates the online softmax in base 2: row max across the 4 lanes that share
//    a row (shuffles), alpha = exp2(m_old - m_new), P = exp2(S - m_new); the row
//    sums stay per thread and are reduced once at the end;
// 4. rescales O by alpha and adds P V, P rounded to the input type, reusing S's
//    accumulator registers directly as the A fragments (the m16n8k16 C layout of
//    two adjacent 8-key tiles is the A layout of one 16-key step).
// O = acc / sum, rounded once.
//
// E4M3 caches (kFp8): the tiles are loaded 8 codes (8 bytes) at a time and
// converted to T on the way into shared memory (cvt.rn.f16x2.e4m3x2 on sm_89+,
// its software form on sm_80; then fp16 -> bf16 for bf16). Every E4M3 value is
// exact in fp16 and in bf16, so the products are those of the decoded cache;
// k_scale joins the softmax scale and v_scale the output.
//
// Fragment layouts (PTX ISA, mma.m16n8k16, g = lane / 4, t = lane % 4):
//   A (16 x 16, row-major): reg0 = (row g, cols 2t, 2t+1), reg1 = (row g+8, same),
//                           reg2 = (row g, cols 2t+8, 2t+9), reg3 = (row g+8, same);
//   B (16 x 8, k x n):      reg0 = (k 2t, 2t+1; n g), reg1 = (k 2t+8, 2t+9; n g);
//   C (16 x 8, fp32):       c0, c1 = (row g, cols 2t, 2t+1), c2, c3 = (row g+8, same).
// The lower 16 bits of a register hold the lower-indexed element.
//
// Shared-memory rows are padded by 8 elements (16 bytes), so the 32-bit
// fragment loads of a warp (8 rows x 4 words) fall in 32 different banks.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "attention_kernels.cuh"

namespace reward_engine::cuda::mma_attention {

constexpr int kRows = 64;  // new tokens per block, 16 per warp
constexpr int kKeys = 64;  // keys per tile
constexpr int kThreads = 128;
constexpr int kPad = 8;
constexpr float kMasked = -1.0e30f;
constexpr float kLog2e = 1.4426950408889634f;

inline size_t smem_bytes(int64_t head_dim) {
  return sizeof(uint16_t) * size_t(kRows + 2 * kKeys) * size_t(head_dim + kPad);
}

__device__ inline uint32_t load32(const uint16_t* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

// Two 16-bit values of one column (rows r and r + 1) as one B-fragment register.
__device__ inline uint32_t column_pair(const uint16_t* lo, const uint16_t* hi) {
  return uint32_t(*lo) | (uint32_t(*hi) << 16);
}

template <class T>
__device__ inline uint32_t pack(float lo, float hi);

template <>
__device__ inline uint32_t pack<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

template <>
__device__ inline uint32_t pack<__half>(float lo, float hi) {
  const __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// c += a @ b for one m16n8k16 tile, fp32 accumulation; AB is the PTX type of a and b.
#define REWARD_ENGINE_MMA_16816(AB, c, a, b0, b1)                                           \
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." AB "." AB                           \
               ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"                \
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                             \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1))

template <class T>
__device__ inline void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    REWARD_ENGINE_MMA_16816("bf16", c, a, b0, b1);
  } else {
    static_assert(std::is_same_v<T, __half>, "mma: bf16 or fp16 operands");
    REWARD_ENGINE_MMA_16816("f16", c, a, b0, b1);
  }
}

#undef REWARD_ENGINE_MMA_16816

// Whether the tensor-core kernel takes this call: bf16/fp16, head_dim 64 or
// 128, and 16-byte aligned rows of q and of the caches (8-byte rows of E4M3
// codes follow), 4-byte aligned output pairs. Everything else runs
// paged_attention_kernel.
inline bool supports(const AttentionParams& p, int dtype) {
  const auto aligned = [](const void* ptr, uintptr_t bytes) {
    return reinterpret_cast<uintptr_t>(ptr) % bytes == 0;
  };
  return (dtype == 1 || dtype == 2) && (p.head_dim == 64 || p.head_dim == 128) &&
         p.q_token_stride % 8 == 0 && p.q_head_stride % 8 == 0 && aligned(p.q, 16) &&
         aligned(p.key_cache, 16) && aligned(p.value_cache, 16) &&
         p.out_token_stride % 2 == 0 && p.out_head_stride % 2 == 0 && aligned(p.out, 4);
}

// 8 E4M3 codes -> 8 values of T (bf16 or fp16), exactly, as one 16-byte vector.
template <class T>
__device__ inline uint4 e4m3x8_to(uint2 codes) {
  const uint32_t words[2] = {codes.x, codes.y};
  uint32_t out[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const auto pair = __nv_fp8x2_storage_t((words[i / 2] >> (16 * (i % 2))) & 0xffffu);
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(pair, __NV_E4M3);
    if constexpr (std::is_same_v<T, __half>) {
      out[i] = uint32_t(h.x) | (uint32_t(h.y) << 16);
    } else {
      const __nv_bfloat162 b = __float22bfloat162_rn(__half22float2(__half2(h)));
      out[i] = *reinterpret_cast<const uint32_t*>(&b);
    }
  }
  return make_uint4(out[0], out[1], out[2], out[3]);
}

// kFp8: the caches hold E4M3 codes (AttentionParams::kv_fp8), else T.
template <class T, int D, bool kFp8>
__global__ void __launch_bounds__(kThreads) paged_attention_mma_kernel(AttentionParams p) {
  static_assert(D % 16 == 0, "head_dim must be a multiple of 16");
  constexpr int S = D + kPad;      // shared-memory row stride, elements
  constexpr int kChunks = D / 8;   // 16-byte chunks per row
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint16_t* qs = reinterpret_cast<uint16_t*>(smem_raw);  // [kRows][S]
  uint16_t* ks = qs + kRows * S;                         // [kKeys][S]
  uint16_t* vs = ks + kKeys * S;                         // [kKeys][S]

  const int64_t seq = blockIdx.z, head = blockIdx.y;
  const int64_t q_begin = p.query_start_loc[seq];
  const int64_t q_len = p.query_start_loc[seq + 1] - q_begin;
  const int64_t tile0 = int64_t(blockIdx.x) * kRows;
  if (tile0 >= q_len) return;
  const int rows = int(q_len - tile0 < kRows ? q_len - tile0 : kRows);
  const int64_t first_pos = p.context_lens[seq] - q_len + tile0;  // absolute position of row 0
  const int64_t kv_end = first_pos + rows;                       // keys [0, kv_end) can be seen
  const int64_t kv_head = head / (p.num_q_heads / p.num_kv_heads);
  const int32_t* table = p.block_tables + seq * p.block_table_stride;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;

  const auto* q = static_cast<const uint16_t*>(p.q);
  for (int c = tid; c < kRows * kChunks; c += kThreads) {
    const int r = c / kChunks, col = (c % kChunks) * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < rows) {
      v = *reinterpret_cast<const uint4*>(q + (q_begin + tile0 + r) * p.q_token_stride +
                                          head * p.q_head_stride + col);
    }
    *reinterpret_cast<uint4*>(qs + r * S + col) = v;
  }
  __syncthreads();
  uint32_t qa[D / 16][4];
  const uint16_t* qw = qs + warp * 16 * S;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    qa[kk][0] = load32(qw + g * S + kk * 16 + 2 * t);
    qa[kk][1] = load32(qw + (g + 8) * S + kk * 16 + 2 * t);
    qa[kk][2] = load32(qw + g * S + kk * 16 + 8 + 2 * t);
    qa[kk][3] = load32(qw + (g + 8) * S + kk * 16 + 8 + 2 * t);
  }

  float o[D / 8][4];
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
  float m[2] = {kMasked, kMasked};  // running max of rows g and g + 8, log2 units
  float l[2] = {0.0f, 0.0f};        // this thread's share of their sums
  const float scale_log2 = p.scale * kv_scale(p, p.k_scale) * kLog2e;
  const int64_t pos_g = first_pos + warp * 16 + g;  // absolute position of row g
  const auto* kc = static_cast<const uint16_t*>(p.key_cache);
  const auto* vc = static_cast<const uint16_t*>(p.value_cache);
  const auto* kc8 = static_cast<const uint8_t*>(p.key_cache);
  const auto* vc8 = static_cast<const uint8_t*>(p.value_cache);

  for (int64_t k0 = 0; k0 < kv_end; k0 += kKeys) {
    __syncthreads();  // every warp is done with the previous tile
    for (int c = tid; c < kKeys * kChunks; c += kThreads) {
      const int j = c / kChunks, col = (c % kChunks) * 8;
      const int64_t pos = k0 + j;
      uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
      if (pos < kv_end) {
        const int64_t slot =
            int64_t(table[pos / p.block_size]) * p.block_size + pos % p.block_size;
        const int64_t off = (slot * p.num_kv_heads + kv_head) * D + col;
        if constexpr (kFp8) {
          kv = e4m3x8_to<T>(*reinterpret_cast<const uint2*>(kc8 + off));
          vv = e4m3x8_to<T>(*reinterpret_cast<const uint2*>(vc8 + off));
        } else {
          kv = *reinterpret_cast<const uint4*>(kc + off);
          vv = *reinterpret_cast<const uint4*>(vc + off);
        }
      }
      *reinterpret_cast<uint4*>(ks + j * S + col) = kv;
      *reinterpret_cast<uint4*>(vs + j * S + col) = vv;
    }
    __syncthreads();

    // 1. S = Q K^T: B[k = d][n = key] = K[key][d], a contiguous pair per register
    float s[kKeys / 8][4];
#pragma unroll
    for (int nt = 0; nt < kKeys / 8; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
      const uint16_t* krow = ks + (nt * 8 + g) * S;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        mma<T>(s[nt], qa[kk], load32(krow + kk * 16 + 2 * t), load32(krow + kk * 16 + 8 + 2 * t));
      }
    }
    // 2-3. scale, causal mask, online softmax
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int nt = 0; nt < kKeys / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t key = k0 + nt * 8 + 2 * t + (e & 1);
        const float v = key <= pos_g + 8 * (e >> 1) ? s[nt][e] * scale_log2 : kMasked;
        s[nt][e] = v;
        mx[e >> 1] = fmaxf(mx[e >> 1], v);
      }
    }
    float alpha[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
      alpha[h] = exp2f(m[h] - mx[h]);
      m[h] = mx[h];
      l[h] *= alpha[h];
    }
#pragma unroll
    for (int nt = 0; nt < kKeys / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] = exp2f(s[nt][e] - m[e >> 1]);
        l[e >> 1] += s[nt][e];
      }
    }
    // 4. O = O * alpha + P V: B[k = key][n = d] = V[key][d], a column pair per register
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      o[dt][0] *= alpha[0];
      o[dt][1] *= alpha[0];
      o[dt][2] *= alpha[1];
      o[dt][3] *= alpha[1];
    }
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
      const uint32_t pa[4] = {pack<T>(s[2 * kk][0], s[2 * kk][1]),
                              pack<T>(s[2 * kk][2], s[2 * kk][3]),
                              pack<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              pack<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
      const uint16_t* v0 = vs + (kk * 16 + 2 * t) * S;  // key rows 2t, 2t+1, 2t+8, 2t+9
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        const int col = dt * 8 + g;
        mma<T>(o[dt], pa, column_pair(v0 + col, v0 + S + col),
               column_pair(v0 + 8 * S + col, v0 + 9 * S + col));
      }
    }
  }

#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
  }
  const float v_scale = kv_scale(p, p.v_scale);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = warp * 16 + g + 8 * h;
    if (r < rows) {
      T* orow = static_cast<T*>(p.out) + (q_begin + tile0 + r) * p.out_token_stride +
                head * p.out_head_stride;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        *reinterpret_cast<uint32_t*>(orow + dt * 8 + 2 * t) =
            pack<T>(o[dt][2 * h] / l[h] * v_scale, o[dt][2 * h + 1] / l[h] * v_scale);
      }
    }
  }
}

}  // namespace reward_engine::cuda::mma_attention
