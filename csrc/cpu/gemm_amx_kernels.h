// Batch-invariant GEMM for bf16 on CPUs with AMX (Sapphire Rapids and later): the
// products on the tile unit, TDPBF16PS.
//
// Tiles: C 16 rows x 16 fp32 columns, A 16 rows x 32 bf16 (one 64-byte row of A
// per tile row, loaded from A as stored), B 16 pair rows x 16 columns, loaded
// straight from the packed pair panels (gemm_pack_pairs: a 64-column panel row is
// 256 bytes, so a 16-column B tile is a strided load). A block of 32 rows x 32
// columns keeps four C tiles in tile registers for the whole of K.
//
// Numerics: per output element, k in blocks of 32 in ascending order, each one
// TDPBF16PS step on one fp32 accumulator that never leaves the tile register
// until K is done. The step's arithmetic (pairs of exact bf16 products, DAZ/FTZ,
// round to nearest even) is the hardware's; it is the same for every row and
// column of a tile and does not read the other rows, so a row's result depends
// on its own values only: batch-invariant. Rows past M and columns past K read a
// zero-padded copy, never memory past A. The epilogue adds the bias in fp32 and rounds
// with VCVTNE2PS2BF16 (nearest even; an fp32 subnormal result becomes zero).
//
// Only included from kernels_amx_bf16.cpp (compiled with -mamx-tile -mamx-bf16);
// isa.cpp has asked the kernel for the tile state before this code can run.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "gemm_bf16_kernels.h"
#include "vec_avx512.h"

namespace reward_engine::cpu {
namespace {

struct alignas(64) AmxTileConfig {
  uint8_t palette;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Every tile 16 rows x 64 bytes: tmm0-3 C, tmm4-5 A, tmm6-7 B.
inline void amx_configure() {
  AmxTileConfig cfg = {};
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
}

// Two C tiles side by side (16 x 16 fp32 each at c and c + 256, row stride 16) + bias
// -> out rows [m, m + rows), columns [col, col + 32) below n. VCVTNE2PS2BF16 rounds 32
// values to nearest even in one instruction (it reads fp32 subnormals as zero; the
// integer rounding of the other kernels would cost a dozen instructions per 16).
inline void amx_store_tiles(const GemmArgs& g, const float* c, int64_t rows, int64_t m,
                            int64_t col) {
  if (col >= g.n || rows <= 0) return;
  const int64_t width = g.n - col < 32 ? g.n - col : 32;
  const __mmask32 keep = width == 32 ? ~__mmask32(0) : __mmask32((1u << width) - 1u);
  const uint16_t* bias = static_cast<const uint16_t*>(g.bias);
  __m512 b_lo = _mm512_setzero_ps(), b_hi = _mm512_setzero_ps();
  if (bias != nullptr) {
    const __m512i b16 = _mm512_maskz_loadu_epi16(keep, bias + col);  // 32 bf16
    b_lo = _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm512_castsi512_si256(b16)), 16));
    b_hi = _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(b16, 1)), 16));
  }
  for (int64_t i = 0; i < rows; ++i) {
    const __m512 lo = _mm512_add_ps(_mm512_loadu_ps(c + i * 16), b_lo);
    const __m512 hi = _mm512_add_ps(_mm512_loadu_ps(c + 256 + i * 16), b_hi);
    const __m512i packed = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
    uint16_t* o = static_cast<uint16_t*>(g.out) + (m + i) * g.out_stride + col;
    _mm512_mask_storeu_epi16(o, keep, packed);
  }
}

inline void gemm_compute_amx(const GemmArgs& g, const void* packed, int64_t n0, int64_t m0,
                             int64_t m1, int64_t p0, int64_t p1) {
  const int64_t kblocks = (g.k + 31) / 32, kfull = g.k / 32, padded = kblocks * 16;
  const int64_t kp = kblocks * 32;  // row length of a zero-padded copy of A
  // scratch: a zero-padded copy of 32 rows of A, the tail k block of 32 rows, 4 C tiles
  uint16_t* pad = static_cast<uint16_t*>(gemm_scratch(2 * (32 * kp + 32 * 32) + 4 * 4 * 256));
  uint16_t* tail = pad + 32 * kp;
  float* cbuf = reinterpret_cast<float*>(tail + 32 * 32);
  const uint16_t* a = static_cast<const uint16_t*>(g.a);
  amx_configure();
  for (int64_t r0 = m0; r0 < m1; r0 += 32) {
    const int64_t valid = m1 - r0 < 32 ? m1 - r0 : 32;
    const uint16_t* abase;
    int64_t astride;  // elements
    const uint16_t* atail = nullptr;  // the last k block when k is not a multiple of 32
    if (valid < 32) {
      for (int64_t i = 0; i < 32; ++i) {
        uint16_t* dst = pad + i * kp;
        const int64_t copied = i < valid ? g.k : 0;
        if (copied) __builtin_memcpy(dst, a + (r0 + i) * g.a_stride, 2 * size_t(g.k));
        for (int64_t j = copied; j < kp; ++j) dst[j] = 0;
      }
      abase = pad;
      astride = kp;
    } else {
      abase = a + r0 * g.a_stride;
      astride = g.a_stride;
      if (kfull < kblocks) {
        const int64_t rest = g.k - kfull * 32;
        for (int64_t i = 0; i < 32; ++i) {
          uint16_t* dst = tail + i * 32;
          __builtin_memcpy(dst, abase + i * astride + kfull * 32, 2 * size_t(rest));
          for (int64_t j = rest; j < 32; ++j) dst[j] = 0;
        }
        atail = tail;
      }
    }
    for (int64_t p = p0; p < p1; ++p) {
      const uint32_t* bp = static_cast<const uint32_t*>(packed) + p * padded * kGemmPanelCols;
      for (int64_t s = 0; s < kGemmPanelCols; s += 32) {
        const int64_t col = n0 + p * kGemmPanelCols + s;
        if (col >= g.n) break;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t kb = 0; kb < kblocks; ++kb) {
          if (atail != nullptr && kb == kfull) {
            _tile_loadd(4, atail, 64);
            _tile_loadd(5, atail + 16 * 32, 64);
          } else {
            _tile_loadd(4, abase + kb * 32, astride * 2);
            _tile_loadd(5, abase + 16 * astride + kb * 32, astride * 2);
          }
          const uint32_t* bk = bp + kb * 16 * kGemmPanelCols + s;
          _tile_loadd(6, bk, kGemmPanelCols * 4);
          _tile_loadd(7, bk + 16, kGemmPanelCols * 4);
          _tile_dpbf16ps(0, 4, 6);
          _tile_dpbf16ps(1, 4, 7);
          _tile_dpbf16ps(2, 5, 6);
          _tile_dpbf16ps(3, 5, 7);
        }
        _tile_stored(0, cbuf, 64);  // rows 0-15, columns 0-15
        _tile_stored(1, cbuf + 256, 64);  // rows 0-15, columns 16-31
        _tile_stored(2, cbuf + 512, 64);
        _tile_stored(3, cbuf + 768, 64);
        const int64_t top = valid < 16 ? valid : 16, bottom = valid - top;
        amx_store_tiles(g, cbuf, top, r0, col);
        amx_store_tiles(g, cbuf + 512, bottom, r0 + 16, col);
      }
    }
  }
  _tile_release();
}

}  // namespace
}  // namespace reward_engine::cpu
