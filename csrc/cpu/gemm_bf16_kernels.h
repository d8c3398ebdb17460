// Batch-invariant GEMM for bf16 on CPUs with AVX512-BF16: the work items and K
// blocking of gemm_kernels.h, with the products on VDPBF16PS.
//
// B is packed into bf16 pairs (gemm_pack_pairs): lane c of a panel row j holds
// (b[c][2j], b[c][2j+1]); the matching pair of A, (a[m][2j], a[m][2j+1]), sits
// adjacent in A's row and is broadcast as one 32-bit word, so A is used as stored.
// One instruction adds both products of a pair to each fp32 lane.
//
// Numerics: per output element, pairs j = 0, 1, .. in ascending order, each one
// VDPBF16PS step on one fp32 accumulator (an odd k ends with the pair
// (a[k-1], 0)); the partial sum waits in fp32 memory between K blocks. The same
// chain for every element whatever the batch: batch-invariant. VDPBF16PS rounds
// after each of the two products and treats bf16 subnormal inputs and fp32
// subnormal results as zero, so results differ from the one-k-at-a-time chain of
// the other ISAs by fp32 rounding.
//
// Only included from kernels_avx512_bf16.cpp (compiled with -mavx512bf16).
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "gemm_kernels.h"
#include "vec_avx512.h"

namespace reward_engine::cpu {
namespace {

// Transposes a 16 x 16 block of 32-bit words in registers: r[i][j] -> r[j][i].
inline void transpose16x16_epi32(__m512i r[16]) {
  __m512i a[16], b[16];
  for (int i = 0; i < 16; i += 2) {
    a[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    a[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  // b[4i + q], 128-bit lane L: column 4L + q of rows 4i .. 4i + 3
  for (int i = 0; i < 16; i += 4) {
    b[i] = _mm512_unpacklo_epi64(a[i], a[i + 2]);
    b[i + 1] = _mm512_unpackhi_epi64(a[i], a[i + 2]);
    b[i + 2] = _mm512_unpacklo_epi64(a[i + 1], a[i + 3]);
    b[i + 3] = _mm512_unpackhi_epi64(a[i + 1], a[i + 3]);
  }
  for (int q = 0; q < 4; ++q) {
    const __m512i c0 = _mm512_shuffle_i32x4(b[q], b[4 + q], 0x44);
    const __m512i c1 = _mm512_shuffle_i32x4(b[q], b[4 + q], 0xEE);
    const __m512i d0 = _mm512_shuffle_i32x4(b[8 + q], b[12 + q], 0x44);
    const __m512i d1 = _mm512_shuffle_i32x4(b[8 + q], b[12 + q], 0xEE);
    r[q] = _mm512_shuffle_i32x4(c0, d0, 0x88);
    r[4 + q] = _mm512_shuffle_i32x4(c0, d0, 0xDD);
    r[8 + q] = _mm512_shuffle_i32x4(c1, d1, 0x88);
    r[12 + q] = _mm512_shuffle_i32x4(c1, d1, 0xDD);
  }
}

// gemm_pack_pairs (same layout and result), whole 16-column x 16-pair blocks moved as
// register transposes; the edges (columns past n, an odd k, the zero padding) as there.
inline void gemm_pack_pairs_avx512(const GemmArgs& g, int64_t n0, int64_t p0, int64_t p1,
                                   void* packed) {
  const int64_t pairs = g.k / 2, padded = (g.k + 31) / 32 * 16;
  const uint16_t* b = static_cast<const uint16_t*>(g.b);
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t col0 = n0 + p * kGemmPanelCols;
    if (g.n - col0 < kGemmPanelCols) {  // the last, partial panel
      gemm_pack_pairs(g, n0, p, p + 1, packed);
      continue;
    }
    uint32_t* dst = static_cast<uint32_t*>(packed) + p * padded * kGemmPanelCols;
    int64_t j = 0;
    for (; j + 16 <= pairs; j += 16) {
      for (int64_t c = 0; c < kGemmPanelCols; c += 16) {
        __m512i r[16];
        for (int i = 0; i < 16; ++i) {
          r[i] = _mm512_loadu_si512(b + (col0 + c + i) * g.b_stride + 2 * j);
        }
        transpose16x16_epi32(r);
        for (int i = 0; i < 16; ++i) _mm512_storeu_si512(dst + (j + i) * kGemmPanelCols + c, r[i]);
      }
    }
    for (; j < padded; ++j) {
      uint32_t* row = dst + j * kGemmPanelCols;
      for (int64_t c = 0; c < kGemmPanelCols; ++c) {
        const uint16_t* src = b + (col0 + c) * g.b_stride;
        uint32_t pair = 0;
        if (j < pairs) {
          __builtin_memcpy(&pair, src + 2 * j, sizeof(pair));
        } else if (j == pairs && g.k % 2) {
          pair = src[g.k - 1];
        }
        row[c] = pair;
      }
    }
  }
}

inline void gemm_compute_bf16dp(const GemmArgs& g, const void* packed, int64_t n0, int64_t m0,
                                int64_t m1, int64_t p0, int64_t p1) {
  using V = VecAVX512;
  constexpr int NV = 4;  // register tile: kLinearTileRows x 64 columns
  static_assert(NV * V::W == kGemmPanelCols, "one tile spans a panel");
  constexpr int64_t kBlockPairs = kLinearBlockK / 2;
  const int64_t rows = m1 - m0, c_stride = (p1 - p0) * kGemmPanelCols;
  const int64_t padded = (g.k + 31) / 32 * 16, full_pairs = g.k / 2;
  const int64_t total_pairs = (g.k + 1) / 2;
  const bool split = total_pairs > kBlockPairs;  // partial sums wait in c between blocks
  float* c = split ? static_cast<float*>(gemm_scratch(4 * rows * c_stride)) : nullptr;
  const uint16_t* a = static_cast<const uint16_t*>(g.a);

  for (int64_t j0 = 0; j0 < total_pairs; j0 += kBlockPairs) {
    const int64_t j1 = total_pairs - j0 < kBlockPairs ? total_pairs : j0 + kBlockPairs;
    const int64_t j1_full = j1 < full_pairs ? j1 : full_pairs;
    const bool first = j0 == 0, last = j1 == total_pairs;
    for (int64_t p = p0; p < p1; ++p) {
      const uint32_t* bp = static_cast<const uint32_t*>(packed) + p * padded * kGemmPanelCols;
      for (int64_t m = 0; m < rows; m += kLinearTileRows) {
        const int tile_rows = rows - m < kLinearTileRows ? int(rows - m) : kLinearTileRows;
        const uint16_t* ar[kLinearTileRows];
        for (int i = 0; i < kLinearTileRows; ++i) {
          ar[i] = a + (m0 + m + (i < tile_rows ? i : tile_rows - 1)) * g.a_stride;
        }
        float* cs = split ? c + m * c_stride + (p - p0) * kGemmPanelCols : nullptr;
        __m512 acc[kLinearTileRows][NV];
        for (int i = 0; i < kLinearTileRows; ++i) {
          for (int v = 0; v < NV; ++v) {
            acc[i][v] = !first && i < tile_rows ? _mm512_loadu_ps(cs + i * c_stride + v * V::W)
                                                : _mm512_setzero_ps();
          }
        }
        int64_t j = j0;
        for (; j < j1_full; ++j) {
          __m512i b[NV];
          for (int v = 0; v < NV; ++v) b[v] = _mm512_loadu_si512(bp + j * kGemmPanelCols + v * V::W);
          for (int i = 0; i < kLinearTileRows; ++i) {
            int32_t pair;
            __builtin_memcpy(&pair, ar[i] + 2 * j, sizeof(pair));
            const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
            for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], av, (__m512bh)b[v]);
          }
        }
        if (j < j1) {  // odd k: the last pair is (a[k - 1], 0), never read past the row
          __m512i b[NV];
          for (int v = 0; v < NV; ++v) b[v] = _mm512_loadu_si512(bp + j * kGemmPanelCols + v * V::W);
          for (int i = 0; i < kLinearTileRows; ++i) {
            const __m512bh av = (__m512bh)_mm512_set1_epi32(int32_t(ar[i][g.k - 1]));
            for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], av, (__m512bh)b[v]);
          }
        }
        if (last) {
          gemm_store_tile<V, bf16, NV>(g, acc, tile_rows, m0 + m, n0 + p * kGemmPanelCols);
        } else {
          for (int i = 0; i < tile_rows; ++i) {
            for (int v = 0; v < NV; ++v) _mm512_storeu_ps(cs + i * c_stride + v * V::W, acc[i][v]);
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace reward_engine::cpu
