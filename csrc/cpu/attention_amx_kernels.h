// Paged prefill attention for bf16 queries on CPUs with AMX-BF16: the work units,
// "rows in lanes" layout and online softmax of attention_bf16_kernels.h, with both
// matrix products on the tile unit (TDPBF16PS), whose 16 x 16 x 32 step does in one
// instruction what takes VDPBF16PS 32. The vector units keep the softmax: scaling,
// masking, the running max and the exponentials are two passes over the chunk's
// scores, the second one writing the probabilities straight out as the bf16 pairs
// the second product reads.
//
// Tiles (all 16 rows x 64 bytes, amx_configure): for a block of 32 keys x 32 rows,
//   QK  St[n][m] += K[n][d..d+32] . Qp[d/2..][m]: A = 16 key rows of the chunk's
//       packed K (as stored, bf16), B = 16 dimension pairs of the unit's packed
//       queries (pair (Q[m][d], Q[m][d+1]) in 32-bit word m): four C tiles in tmm0-3.
//   PV  Ot[d][m] += Vt[d][n..n+32] . Pp[n/2..][m]: A = 16 rows of V transposed (rows
//       d, 32 keys each), B = 16 key pairs of the probabilities (the layout
//       bf16_pairs writes); C loaded from and stored back to Ot, which the vector
//       units rescale by alpha between chunks.
// Vt comes from V's rows interleaved two keys at a time (32-bit words: the pair
// (V[n][d], V[n+1][d])) and a 16 x 16 transpose of those words.
//
// Numerics: as attention_bf16_kernels.h (exact bf16 products summed in fp32 by the
// tile unit, which flushes bf16 subnormal inputs to zero; scores scaled in fp32;
// probabilities rounded to bf16 for PV, their sum kept in fp32), except that the
// exponentials are VecAVX512::exp_approx (about 2^-14 relative, well inside the bf16
// rounding the probabilities get). Keys are visited in
// 64-key chunks from key 0 at absolute positions, a masked key's probability is
// exactly 0 and every product reads a row's own values only, so a row's result does
// not depend on which rows share its unit: batch-invariant like the other kernels.
//
// Only included from kernels_amx_bf16.cpp; isa.cpp has asked the kernel for the tile
// state before this code can run.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "attention_bf16_kernels.h"
#include "gemm_amx_kernels.h"

namespace reward_engine::cpu {
namespace {

// Index vectors of the transpose's four rounds (b = 0..3, s = 2^b) for VPERMT2D, which
// reads lanes 0-15 from its first source and 16-31 from its second.
struct TransposeIndex {
  alignas(64) int32_t lo[4][16];  // the low row keeps its columns without bit s
  alignas(64) int32_t hi[4][16];  // the high row keeps its columns with bit s
};
constexpr TransposeIndex make_transpose_index() {
  TransposeIndex t{};
  for (int b = 0; b < 4; ++b) {
    const int s = 1 << b;
    for (int j = 0; j < 16; ++j) {
      t.lo[b][j] = (j & s) ? 16 + j - s : j;
      t.hi[b][j] = (j & s) ? 16 + j : j + s;
    }
  }
  return t;
}
constexpr TransposeIndex kTransposeIndex = make_transpose_index();

// Transposes a 16 x 16 matrix of 32-bit words (rows src + i * src_stride) into dst
// (rows dst + j * dst_stride): four rounds, round b swapping bit b of the row and
// the column index between each pair of rows i and i + 2^b.
__attribute__((always_inline)) inline void transpose16x16_epi32(
    const uint32_t* src, int64_t src_stride, uint32_t* dst, int64_t dst_stride) {
  __m512i r[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(src + i * src_stride);
#pragma GCC unroll 4
  for (int b = 0; b < 4; ++b) {
    const int s = 1 << b;
    const __m512i lo = _mm512_load_si512(kTransposeIndex.lo[b]);
    const __m512i hi = _mm512_load_si512(kTransposeIndex.hi[b]);
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) {
      if (i & s) continue;
      const __m512i x = r[i], y = r[i + s];
      r[i] = _mm512_permutex2var_epi32(x, lo, y);
      r[i + s] = _mm512_permutex2var_epi32(x, hi, y);
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < 16; ++j) _mm512_storeu_si512(dst + j * dst_stride, r[j]);
}

// One chunk's scores St[n][m] (n < nkp, a multiple of 32; m < mp, rows Mp apart) ->
// probability pairs Pp[n/2][m], updating the rows' running max, sum and alpha. Pass one scales, masks
// (keys past a row's position, and the padding keys n >= nk) and takes the max;
// pass two exponentiates, sums and packs. A masked key's probability is exactly 0.
inline void softmax_to_pairs_amx(float* st, uint32_t* pp, const RowState& r, float scale,
                                 int64_t c0, int64_t nk, int64_t nkp, bool masked_chunk,
                                 int64_t mp, int64_t Mp) {
  using V = VecAVX512;
  const __m512 vscale = _mm512_set1_ps(scale), masked = _mm512_set1_ps(kMaskedScore);
  const __m512 unmasked = _mm512_set1_ps(0.5f * kMaskedScore);
  for (int64_t m = 0; m < mp; m += 16) {
    const __m512 old_max = _mm512_loadu_ps(r.max + m);
    __m512 mx = old_max;
    if (masked_chunk) {
      const __m512 pos = _mm512_loadu_ps(r.pos + m);
      for (int64_t n = 0; n < nkp; ++n) {
        const __m512 key_pos = _mm512_set1_ps(n < nk ? float(c0 + n) : __builtin_inff());
        float* s = st + n * Mp + m;
        const __m512 v = V::select_gt(key_pos, pos, masked, _mm512_mul_ps(_mm512_loadu_ps(s), vscale));
        _mm512_storeu_ps(s, v);
        mx = _mm512_max_ps(mx, v);
      }
    } else {
      for (int64_t n = 0; n < nkp; ++n) {
        float* s = st + n * Mp + m;
        const __m512 v = _mm512_mul_ps(_mm512_loadu_ps(s), vscale);
        _mm512_storeu_ps(s, v);
        mx = _mm512_max_ps(mx, v);
      }
    }
    const __m512 alpha = V::exp_approx(_mm512_sub_ps(old_max, mx));
    __m512 sum = _mm512_mul_ps(_mm512_loadu_ps(r.sum + m), alpha);
    for (int64_t n = 0; n < nkp; n += 2) {
      const __m512 s0 = _mm512_loadu_ps(st + n * Mp + m);
      const __m512 s1 = _mm512_loadu_ps(st + (n + 1) * Mp + m);
      const __m512 p0 = V::select_gt(s0, unmasked, V::exp_approx(_mm512_sub_ps(s0, mx)), _mm512_setzero_ps());
      const __m512 p1 = V::select_gt(s1, unmasked, V::exp_approx(_mm512_sub_ps(s1, mx)), _mm512_setzero_ps());
      sum = _mm512_add_ps(sum, _mm512_add_ps(p0, p1));
      _mm512_storeu_si512(pp + (n / 2) * Mp + m, bf16_pairs(p0, p1));
    }
    _mm512_storeu_ps(r.max + m, mx);
    _mm512_storeu_ps(r.sum + m, sum);
    _mm512_storeu_ps(r.alpha + m, alpha);
  }
}

// out[t, h, d] = Ot[d][m] * (v_scale / l[m]), rounded to bf16 (nearest even), 16 rows x
// 16 dims at a time through a transpose of Ot (tmp: 256 words).
inline void store_output_amx(const AttentionArgs& a, const AttentionUnit& unit, const float* ot,
                             const RowState& r, int64_t group, int64_t rows, int64_t Mp,
                             uint32_t* tmp) {
  const int64_t D = a.head_dim;
  for (int64_t m0 = 0; m0 < rows; m0 += 16) {
    for (int64_t d0 = 0; d0 < D; d0 += 16) {
      transpose16x16_epi32(reinterpret_cast<const uint32_t*>(ot + d0 * Mp + m0), Mp, tmp, 16);
      const __mmask16 keep = D - d0 >= 16 ? __mmask16(0xffff) : __mmask16((1u << (D - d0)) - 1u);
      for (int64_t i = 0; i < 16 && m0 + i < rows; ++i) {
        const int64_t m = m0 + i, t = unit.token_begin + m / group;
        const int64_t h = unit.kv_head * group + m % group;
        uint16_t* o = &(static_cast<bf16*>(a.out) + t * a.out_token_stride + h * a.out_head_stride)->bits;
        const __m512 v = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_loadu_si512(tmp + 16 * i)),
                                       _mm512_set1_ps(a.v_scale / r.sum[m]));
        _mm256_mask_storeu_epi16(o + d0, keep, (__m256i)_mm512_cvtneps_pbh(v));
      }
    }
  }
}

// tmm0-3 += the 2 x 2 products of A tiles (16 rows from a0, from a1; row stride
// a_stride bytes) and B tiles (b0, b1; b_stride): C00, C01, C10, C11.
inline void tile_dp_2x2(const void* a0, const void* a1, int64_t a_stride, const void* b0,
                        const void* b1, int64_t b_stride) {
  _tile_loadd(4, a0, a_stride);
  _tile_loadd(5, a1, a_stride);
  _tile_loadd(6, b0, b_stride);
  _tile_loadd(7, b1, b_stride);
  _tile_dpbf16ps(0, 4, 6);
  _tile_dpbf16ps(1, 4, 7);
  _tile_dpbf16ps(2, 5, 6);
  _tile_dpbf16ps(3, 5, 7);
}

// C: the caches' element type, bf16 bits (uint16_t) or e4m3.
template <class C>
void paged_attention_units_amx(const AttentionArgs& a, const AttentionUnit* units,
                               int64_t begin, int64_t end) {
  const int64_t D = a.head_dim, group = a.num_q_heads / a.num_kv_heads;
  const int64_t Dk = round_up(D, 32);  // head dims, zero-padded to whole tile steps
  const int64_t Mp = round_up(a.tokens_per_unit * group, 32);
  constexpr int64_t kPairs = kKeyChunk / 2;

  // Scratch, in 32-bit words: Q pairs [Dk/2][Mp], O [Dk][Mp], S [kKeyChunk][Mp],
  // P pairs [kPairs][Mp], K rows [kKeyChunk][Dk/2], V pairs [kPairs][Dk] and
  // transposed [Dk][kPairs], row state [4][Mp], Q rows [Mp][Dk/2], a 16 x 16 block.
  float* base = scratch(Dk / 2 * Mp + Dk * Mp + kKeyChunk * Mp + kPairs * Mp +
                        kKeyChunk * Dk / 2 + 2 * kPairs * Dk + 4 * Mp + Mp * Dk / 2 + 256);
  uint32_t* qp = reinterpret_cast<uint32_t*>(base);
  float* ot = base + Dk / 2 * Mp;
  float* st = ot + Dk * Mp;
  uint32_t* pp = reinterpret_cast<uint32_t*>(st + kKeyChunk * Mp);
  uint16_t* kb = reinterpret_cast<uint16_t*>(pp + kPairs * Mp);
  uint32_t* vp = reinterpret_cast<uint32_t*>(kb + kKeyChunk * Dk);
  uint32_t* vt = vp + kPairs * Dk;
  float* state = reinterpret_cast<float*>(vt + Dk * kPairs);
  const RowState rs{state, state + Mp, state + 2 * Mp, state + 3 * Mp};
  uint32_t* qrows = reinterpret_cast<uint32_t*>(state + 4 * Mp);
  uint32_t* block = qrows + Mp * Dk / 2;

  const C* key_cache = static_cast<const C*>(a.key_cache);
  const C* value_cache = static_cast<const C*>(a.value_cache);
  const float scale = a.scale * a.k_scale;
  amx_configure();

  for (int64_t u = begin; u < end; ++u) {
    const AttentionUnit& unit = units[u];
    const int64_t tokens = unit.token_end - unit.token_begin;
    const int64_t rows = tokens * group;
    const int64_t mp = round_up(rows, 32);  // this unit's rows, in whole tile pairs
    const int32_t* table = a.block_tables + unit.seq * a.block_table_stride;

    init_rows(rs, unit, group, rows, mp);
    for (int64_t i = 0; i < Dk; ++i)
      for (int64_t m = 0; m < mp; ++m) ot[i * Mp + m] = 0.0f;
    // Q pairs: the rows copied (zero past D and for padding rows), then transposed as
    // 32-bit words.
    for (int64_t m = 0; m < mp; ++m) {
      const uint16_t* q = m < rows ? &query_row<bf16>(a, unit, group, m)->bits : nullptr;
      uint16_t* dst = reinterpret_cast<uint16_t*>(qrows + m * (Dk / 2));
      for (int64_t d = 0; d < Dk; d += 32) {
        _mm512_storeu_si512(dst + d, q ? bf16_row(q + d, D - d) : _mm512_setzero_si512());
      }
    }
    for (int64_t m0 = 0; m0 < mp; m0 += 16) {
      for (int64_t d2 = 0; d2 < Dk / 2; d2 += 16) {
        transpose16x16_epi32(qrows + m0 * (Dk / 2) + d2, Dk / 2, qp + d2 * Mp + m0, Mp);
      }
    }

    const int64_t num_keys = unit.first_pos + tokens;
    for (int64_t c0 = 0; c0 < num_keys; c0 += kKeyChunk) {
      const int64_t nk = num_keys - c0 < kKeyChunk ? num_keys - c0 : kKeyChunk;
      const int64_t nkp = round_up(nk, 32);

      // K rows as stored (bf16, zero past D); V rows interleaved two keys at a time.
      // Padding keys are zero. The next chunk's rows are prefetched, as in
      // attention_bf16_kernels.h.
      for (int64_t n = 0; n < nkp; n += 2) {
        const C* v_row[2] = {nullptr, nullptr};
        for (int i = 0; i < 2; ++i) {
          uint16_t* dst = kb + (n + i) * Dk;
          if (n + i < nk) {
            const int64_t offset = kv_offset(a, table, unit.kv_head, c0 + n + i);
            v_row[i] = value_cache + offset;
            for (int64_t d = 0; d < Dk; d += 32) {
              _mm512_storeu_si512(dst + d, bf16_row(key_cache + offset + d, D - d));
            }
          } else {
            for (int64_t d = 0; d < Dk; d += 32) _mm512_storeu_si512(dst + d, _mm512_setzero_si512());
          }
          prefetch_kv_row(a, table, unit.kv_head, c0 + kKeyChunk + n + i, num_keys,
                          key_cache, value_cache);
        }
        interleave_rows(v_row[0], v_row[1], vp + (n / 2) * Dk, D, Dk);
      }
      for (int64_t n2 = 0; n2 < nkp / 2; n2 += 16) {
        for (int64_t d = 0; d < Dk; d += 16) {
          transpose16x16_epi32(vp + n2 * Dk + d, Dk, vt + d * kPairs + n2, kPairs);
        }
      }

      for (int64_t m0 = 0; m0 < mp; m0 += 32) {
        for (int64_t n0 = 0; n0 < nkp; n0 += 32) {
          _tile_zero(0);
          _tile_zero(1);
          _tile_zero(2);
          _tile_zero(3);
          for (int64_t d = 0; d < Dk; d += 32) {
            tile_dp_2x2(kb + n0 * Dk + d, kb + (n0 + 16) * Dk + d, Dk * 2,
                        qp + (d / 2) * Mp + m0, qp + (d / 2) * Mp + m0 + 16, Mp * 4);
          }
          _tile_stored(0, st + n0 * Mp + m0, Mp * 4);
          _tile_stored(1, st + n0 * Mp + m0 + 16, Mp * 4);
          _tile_stored(2, st + (n0 + 16) * Mp + m0, Mp * 4);
          _tile_stored(3, st + (n0 + 16) * Mp + m0 + 16, Mp * 4);
        }
      }

      const bool masked_chunk = c0 + nkp - 1 > unit.first_pos;
      softmax_to_pairs_amx(st, pp, rs, scale, c0, nk, nkp, masked_chunk, mp, Mp);

      if (c0 > 0) {  // Ot *= alpha (the first chunk finds Ot zero)
        for (int64_t d = 0; d < Dk; ++d) {
          float* o = ot + d * Mp;
          for (int64_t m = 0; m < mp; m += 16) {
            _mm512_storeu_ps(o + m, _mm512_mul_ps(_mm512_loadu_ps(o + m), _mm512_loadu_ps(rs.alpha + m)));
          }
        }
      }
      for (int64_t m0 = 0; m0 < mp; m0 += 32) {
        for (int64_t d0 = 0; d0 < Dk; d0 += 32) {
          float* o = ot + d0 * Mp + m0;
          _tile_loadd(0, o, Mp * 4);
          _tile_loadd(1, o + 16, Mp * 4);
          _tile_loadd(2, o + 16 * Mp, Mp * 4);
          _tile_loadd(3, o + 16 * Mp + 16, Mp * 4);
          for (int64_t n0 = 0; n0 < nkp; n0 += 32) {
            tile_dp_2x2(vt + d0 * kPairs + n0 / 2, vt + (d0 + 16) * kPairs + n0 / 2, kPairs * 4,
                        pp + (n0 / 2) * Mp + m0, pp + (n0 / 2) * Mp + m0 + 16, Mp * 4);
          }
          _tile_stored(0, o, Mp * 4);
          _tile_stored(1, o + 16, Mp * 4);
          _tile_stored(2, o + 16 * Mp, Mp * 4);
          _tile_stored(3, o + 16 * Mp + 16, Mp * 4);
        }
      }
    }
    store_output_amx(a, unit, ot, rs, group, rows, Mp, block);
  }
  _tile_release();
}

}  // namespace
}  // namespace reward_engine::cpu
