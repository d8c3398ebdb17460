// Paged prefill attention for bf16 tensors on CPUs with AVX512-BF16: the same
// unit, "rows in lanes" layout and online softmax as attention_kernels.h, with
// both matrix products on VDPBF16PS, which multiplies pairs of bf16 values and
// adds both products to an fp32 lane: twice the multiply-adds per instruction
// of an fp32 FMA, and no conversion of K at all.
//   QK: lane m of a Q vector holds the pair (Q[m][d], Q[m][d+1]); the pair
//       (K[n][d], K[n][d+1]) is adjacent in the cache row and is broadcast as
//       one 32-bit value.
//   PV: lane m of a P vector holds (P[n][m], P[n+1][m]); V is repacked per
//       chunk into pairs (V[n][d], V[n+1][d]) to broadcast the same way.
//
// An E4M3 cache (C = e4m3) is decoded to bf16 as its rows are packed: every E4M3
// value (3 mantissa bits, exponents 2^-9 .. 2^8) is a normal bf16 number, so the
// decode is exact and the products stay exact; k_scale joins the softmax scale and
// v_scale the output, as in attention_kernels.h.
//
// Numerics: Q and K are used exactly (bf16 products are exact in fp32, summed
// in fp32); scores are scaled in fp32 after the dot product; the probabilities
// are rounded to bf16 for the PV product, as GPU flash attention does, while
// the softmax denominator sums them in fp32. VDPBF16PS treats bf16 subnormal
// inputs as zero; the output stays within the bf16 tolerance of the reference.
//
// Only included from kernels_avx512_bf16.cpp (compiled with -mavx512bf16).
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "attention_kernels.h"
#include "fp8.h"
#include "vec_avx512.h"

namespace reward_engine::cpu {
namespace {

// Packs 16 rows' probabilities of keys n and n + 1 into bf16 pairs.
inline __m512i bf16_pairs(__m512 even, __m512 odd) {
  const __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(even));
  const __m512i hi = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(odd));
  return _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));
}

// The first n (clamped to 0..32) of 32 lanes.
inline __mmask32 lane_mask32(int64_t n) {
  return n >= 32 ? ~__mmask32(0) : n <= 0 ? __mmask32(0) : __mmask32((1u << n) - 1u);
}

inline __m512 dot_pairs(__m512 acc, __m512i a, __m512i b) {
  return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);
}

// 32 E4M3 codes (bytes) -> their bf16 bit patterns, exactly: a normal code's exponent
// is rebiased (7 -> 127) and its mantissa moved up 4 bits; a subnormal one
// (m * 2^-9, m < 8) comes from a table; magnitude 0x7F is NaN (0x7FC0, sign kept).
inline __m512i e4m3_to_bf16(__m256i codes) {
  const __m512i x = _mm512_cvtepu8_epi16(codes);
  const __m512i mag = _mm512_and_si512(x, _mm512_set1_epi16(0x7f));
  const __m512i sign = _mm512_slli_epi16(_mm512_and_si512(x, _mm512_set1_epi16(0x80)), 8);
  const __m512i normal = _mm512_add_epi16(_mm512_slli_epi16(mag, 4), _mm512_set1_epi16(120 << 7));
  // bf16 bits of m * 2^-9 for m = 0..7 (the rest of the 32 entries are not selected)
  const __m512i table = _mm512_set_epi16(
      0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
      0x3c60, 0x3c40, 0x3c20, 0x3c00, 0x3bc0, 0x3b80, 0x3b00, 0);
  const __m512i subnormal = _mm512_permutexvar_epi16(mag, table);
  __m512i r = _mm512_mask_blend_epi16(_mm512_cmplt_epu16_mask(mag, _mm512_set1_epi16(8)),
                                      normal, subnormal);
  r = _mm512_mask_blend_epi16(_mm512_cmpeq_epi16_mask(mag, _mm512_set1_epi16(0x7f)), r,
                              _mm512_set1_epi16(0x7fc0));
  return _mm512_or_si512(r, sign);
}

// The first n (<= 32) values of a cache row as bf16 bits in 16-bit lanes, zero past n.
inline __m512i bf16_row(const uint16_t* row, int64_t n) {
  return _mm512_maskz_loadu_epi16(lane_mask32(n), row);
}
inline __m512i bf16_row(const e4m3* row, int64_t n) {
  return e4m3_to_bf16(_mm256_maskz_loadu_epi8(lane_mask32(n), row));
}

// 16 values of a cache row, each zero-extended from bf16 bits to a 32-bit lane.
inline __m512i bf16_lanes(const uint16_t* row) {
  return _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row)));
}
inline __m512i bf16_lanes(const e4m3* row) {
  const __m128i codes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row));
  return _mm512_cvtepu16_epi32(_mm512_castsi512_si256(e4m3_to_bf16(_mm256_castsi128_si256(codes))));
}

inline uint32_t bf16_bits(uint16_t v) { return v; }
inline uint32_t bf16_bits(e4m3 v) { return float_to_bf16(e4m3_to_float(v.bits)); }

// dst[d] = the pair (row0[d], row1[d]) as bf16 bits (row0 low) for d < width: zero past
// D, a missing row (nullptr) zero.
template <class C>
inline void interleave_rows(const C* row0, const C* row1, uint32_t* dst, int64_t D,
                            int64_t width) {
  int64_t d = 0;
  for (; d + 16 <= D && row1; d += 16) {
    const __m512i lo = bf16_lanes(row0 + d), hi = bf16_lanes(row1 + d);
    _mm512_storeu_si512(dst + d, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
  }
  for (; d < width; ++d) {
    const uint32_t lo = row0 && d < D ? bf16_bits(row0[d]) : 0;
    const uint32_t hi = row1 && d < D ? bf16_bits(row1[d]) : 0;
    dst[d] = lo | (hi << 16);
  }
}

// Prefetches key j's K and V rows (when j < num_keys): the rows of the next chunk, which
// the block-table indirection hides from the hardware prefetcher, while this chunk's
// products cover the latency.
template <class C>
inline void prefetch_kv_row(const AttentionArgs& a, const int32_t* table, int64_t kv_head,
                            int64_t j, int64_t num_keys, const C* key_cache,
                            const C* value_cache) {
  if (j >= num_keys) return;
  const int64_t offset = kv_offset(a, table, kv_head, j);
  for (int64_t d = 0; d < a.head_dim; d += 64 / int64_t(sizeof(C))) {  // one per cache line
    _mm_prefetch(reinterpret_cast<const char*>(key_cache + offset + d), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(value_cache + offset + d), _MM_HINT_T0);
  }
}

// C: the caches' element type, bf16 bits (uint16_t) or e4m3.
template <class C>
void paged_attention_units_bf16dp(const AttentionArgs& a, const AttentionUnit* units,
                                  int64_t begin, int64_t end) {
  using V = VecAVX512;
  constexpr int W = 16;
  constexpr int MB = 4;  // row vectors per register tile
  constexpr int NB = 4;  // keys (QK) or head dims (PV) per register tile
  const int64_t D = a.head_dim, group = a.num_q_heads / a.num_kv_heads;
  const int64_t D2 = (D + 1) / 2;     // dimension pairs
  const int64_t Dp = round_up(D, NB);  // PV output columns
  const int64_t Mp = round_up(a.tokens_per_unit * group, int64_t(MB) * W);
  constexpr int64_t kPairs = kKeyChunk / 2;

  // Scratch, in 32-bit words: Q pairs [D2][Mp], O [Dp][Mp], S [kKeyChunk][Mp],
  // P pairs [kPairs][Mp], K rows [kKeyChunk][D2], V pairs [kPairs][Dp], row state.
  float* base = scratch(D2 * Mp + Dp * Mp + kKeyChunk * Mp + kPairs * Mp + kKeyChunk * D2 +
                        kPairs * Dp + 4 * Mp);
  uint32_t* qp = reinterpret_cast<uint32_t*>(base);
  float* ot = base + D2 * Mp;
  float* st = ot + Dp * Mp;
  uint32_t* pp = reinterpret_cast<uint32_t*>(st + kKeyChunk * Mp);
  uint32_t* kp = pp + kPairs * Mp;
  uint32_t* vp = kp + kKeyChunk * D2;
  float* state = reinterpret_cast<float*>(vp + kPairs * Dp);
  const RowState rs{state, state + Mp, state + 2 * Mp, state + 3 * Mp};

  const C* key_cache = static_cast<const C*>(a.key_cache);
  const C* value_cache = static_cast<const C*>(a.value_cache);
  const __m512 scale = _mm512_set1_ps(a.scale * a.k_scale);

  for (int64_t u = begin; u < end; ++u) {
    const AttentionUnit& unit = units[u];
    const int64_t tokens = unit.token_end - unit.token_begin;
    const int64_t rows = tokens * group;
    const int32_t* table = a.block_tables + unit.seq * a.block_table_stride;

    init_rows(rs, unit, group, rows, Mp);
    for (int64_t i = 0; i < Dp * Mp; ++i) ot[i] = 0.0f;
    // Q pairs are adjacent in the query row: copy them as 32-bit words.
    for (int64_t m = 0; m < Mp; ++m) {
      const uint16_t* q = m < rows ? &query_row<bf16>(a, unit, group, m)->bits : nullptr;
      for (int64_t d2 = 0; d2 < D / 2; ++d2) {
        uint32_t pair = 0;
        if (q) __builtin_memcpy(&pair, q + 2 * d2, sizeof(pair));
        qp[d2 * Mp + m] = pair;
      }
      if (D % 2) qp[(D2 - 1) * Mp + m] = q ? q[D - 1] : 0;
    }

    const int64_t num_keys = unit.first_pos + tokens;
    for (int64_t c0 = 0; c0 < num_keys; c0 += kKeyChunk) {
      const int64_t nk = num_keys - c0 < kKeyChunk ? num_keys - c0 : kKeyChunk;
      const int64_t nkp = round_up(nk, NB);

      // K rows as dimension pairs (an odd head_dim gets a zero partner); V rows
      // interleaved two keys at a time. Padding keys are zero.
      for (int64_t n = 0; n < nkp; n += 2) {
        const C* k_row[2] = {nullptr, nullptr};
        const C* v_row[2] = {nullptr, nullptr};
        for (int i = 0; i < 2; ++i) {
          if (n + i < nk) {
            const int64_t offset = kv_offset(a, table, unit.kv_head, c0 + n + i);
            k_row[i] = key_cache + offset;
            v_row[i] = value_cache + offset;
          }
          prefetch_kv_row(a, table, unit.kv_head, c0 + kKeyChunk + n + i, num_keys,
                          key_cache, value_cache);
        }
        for (int i = 0; i < 2; ++i) {
          uint16_t* dst = reinterpret_cast<uint16_t*>(kp + (n + i) * D2);
          for (int64_t d = 0; d < 2 * D2; d += 32) {
            const __m512i k = k_row[i] ? bf16_row(k_row[i] + d, D - d) : _mm512_setzero_si512();
            _mm512_mask_storeu_epi16(dst + d, lane_mask32(2 * D2 - d), k);
          }
        }
        interleave_rows(v_row[0], v_row[1], vp + (n / 2) * Dp, D, Dp);
      }

      // St[n][m] = scale * sum_d K[n][d] * Q[m][d], two dimensions per instruction.
      for (int64_t m0 = 0; m0 < Mp; m0 += MB * W) {
        for (int64_t n0 = 0; n0 < nkp; n0 += NB) {
          __m512 acc[NB][MB];
          for (int i = 0; i < NB; ++i)
            for (int j = 0; j < MB; ++j) acc[i][j] = _mm512_setzero_ps();
          for (int64_t d2 = 0; d2 < D2; ++d2) {
            __m512i qv[MB];
            for (int j = 0; j < MB; ++j)
              qv[j] = _mm512_loadu_si512(qp + d2 * Mp + m0 + j * W);
            for (int i = 0; i < NB; ++i) {
              const __m512i kb = _mm512_set1_epi32(int(kp[(n0 + i) * D2 + d2]));
              for (int j = 0; j < MB; ++j) acc[i][j] = dot_pairs(acc[i][j], kb, qv[j]);
            }
          }
          for (int i = 0; i < NB; ++i)
            for (int j = 0; j < MB; ++j)
              _mm512_storeu_ps(st + (n0 + i) * Mp + m0 + j * W, _mm512_mul_ps(acc[i][j], scale));
        }
      }

      mask_scores<V>(st, rs, c0, nk, nkp, unit.first_pos, Mp);
      softmax_chunk<V>(st, rs, nkp, Mp);
      for (int64_t n = 0; n < nkp; n += 2) {
        for (int64_t m = 0; m < Mp; m += W) {
          _mm512_storeu_si512(pp + (n / 2) * Mp + m, bf16_pairs(_mm512_loadu_ps(st + n * Mp + m),
                                                                _mm512_loadu_ps(st + (n + 1) * Mp + m)));
        }
      }

      // Ot[d][m] = Ot[d][m] * alpha[m] + sum_n V[n][d] * P[n][m], two keys per instruction.
      for (int64_t m0 = 0; m0 < Mp; m0 += MB * W) {
        __m512 al[MB];
        for (int j = 0; j < MB; ++j) al[j] = _mm512_loadu_ps(rs.alpha + m0 + j * W);
        for (int64_t d0 = 0; d0 < Dp; d0 += NB) {
          __m512 acc[NB][MB];
          for (int i = 0; i < NB; ++i)
            for (int j = 0; j < MB; ++j)
              acc[i][j] = _mm512_mul_ps(_mm512_loadu_ps(ot + (d0 + i) * Mp + m0 + j * W), al[j]);
          for (int64_t n2 = 0; n2 < nkp / 2; ++n2) {
            __m512i pv[MB];
            for (int j = 0; j < MB; ++j) pv[j] = _mm512_loadu_si512(pp + n2 * Mp + m0 + j * W);
            for (int i = 0; i < NB; ++i) {
              const __m512i vb = _mm512_set1_epi32(int(vp[n2 * Dp + d0 + i]));
              for (int j = 0; j < MB; ++j) acc[i][j] = dot_pairs(acc[i][j], vb, pv[j]);
            }
          }
          for (int i = 0; i < NB; ++i)
            for (int j = 0; j < MB; ++j)
              _mm512_storeu_ps(ot + (d0 + i) * Mp + m0 + j * W, acc[i][j]);
        }
      }
    }
    store_output<bf16>(a, unit, ot, rs, group, rows, Mp);
  }
}

}  // namespace
}  // namespace reward_engine::cpu
