// FP8 E4M3 kernels: quantize rows (any activation dtype -> E4M3 with fp32
// scales) and the fp32-accumulating GEMM panel behind fp8_gemm.
//
// Quantize: q = e4m3(x / scale) with x widened to fp32 and the division in
// fp32 (bit-identical to the reference `(x.float() / scale).clamp(-448, 448)`
// cast to E4M3). Dynamic scales come from the largest finite |x| (NaN and inf
// do not enlarge the scale).
//
// GEMM: C = A @ B^T with A [M, K] already decoded to fp32 and B [N, K] E4M3
// decoded panel by panel through a 256-entry table. Products of two E4M3
// values are exact in fp32, so a fused multiply-add and a multiply then add
// give the same sum on every ISA; only the summation order (k ascending within
// each 256-wide block, blocks ascending) is fixed by this file.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "dtype.h"
#include "fp8.h"
#include "kernel_args.h"

namespace reward_engine::cpu {
namespace {  // internal linkage: see dtype.h

// m[j] = max(m[j], finite |x[j]|) for j < n.
template <class T>
void update_col_amax(float* __restrict__ m, const T* __restrict__ x, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const float a = std::fabs(to_float(x[j]));
    const float v = a <= 3.4028234663852886e38f ? a : 0.0f;  // NaN and inf count as 0
    m[j] = v > m[j] ? v : m[j];
  }
}

// Largest finite |x[i]| over a row of n elements (0 when there is none): the
// column maxima of the row cut into 64-wide pieces, then their maximum (a
// running scalar maximum would not vectorize; max is exact in any order).
template <class T>
float row_amax(const T* x, int64_t n) {
  constexpr int64_t kLanes = 64;
  float lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) update_col_amax(lanes, x + i, kLanes);
  update_col_amax(lanes, x + i, n - i);
  float m = 0.0f;
  for (const float v : lanes) m = v > m ? v : m;
  return m;
}

// One row: out[j] = e4m3(x[j] / scale[j * scale_step]) (step 0: one scale).
// Restrict-qualified, with the per-row scale hoisted: out is uint8_t, which may
// alias anything, and without these the loop reloads the scale and does not vectorize.
template <class T>
void quantize_row(uint8_t* __restrict__ out, const T* __restrict__ x,
                  const float* __restrict__ scale, int64_t scale_step, int64_t n) {
  if (scale_step == 0) {
    const float s = scale[0];
    for (int64_t j = 0; j < n; ++j) out[j] = float_to_e4m3(to_float(x[j]) / s);
  } else {
    for (int64_t j = 0; j < n; ++j) out[j] = float_to_e4m3(to_float(x[j]) / scale[j]);
  }
}

// The kernel table's type-erased forms of the three above (x of element type T).
template <class T>
void quantize_row_of(uint8_t* out, const void* x, const float* scale, int64_t scale_step,
                     int64_t n) {
  quantize_row(out, static_cast<const T*>(x), scale, scale_step, n);
}

template <class T>
float row_amax_of(const void* x, int64_t n) {
  return row_amax(static_cast<const T*>(x), n);
}

template <class T>
void col_amax_of(float* m, const void* x, int64_t n) {
  update_col_amax(m, static_cast<const T*>(x), n);
}

constexpr int64_t kGemmPanelN = 64;   // columns of C per task (one B panel)
constexpr int64_t kGemmBlockK = 256;  // depth of one packed B block
constexpr int kGemmRows = 6;          // rows of the register tile

// C[0:M, 0:kGemmPanelN] = A @ B[n0 : n0 + kGemmPanelN]^T, C row-major with row
// stride kGemmPanelN, zeroed by the caller; columns past N come out as 0.
// bp is scratch for kGemmBlockK * kGemmPanelN floats.
template <class V>
void fp8_gemm_panel(const Fp8GemmArgs& g, int64_t n0, float* c, float* bp) {
  using F = typename V::F;
  constexpr int64_t NR = 2 * V::W;  // register tile: kGemmRows x NR
  constexpr int64_t kSub = kGemmPanelN / NR;
  static_assert(kGemmPanelN % NR == 0, "panel width must be a multiple of the tile");
  for (int64_t k0 = 0; k0 < g.k; k0 += kGemmBlockK) {
    const int64_t kn = std::min(kGemmBlockK, g.k - k0);
    // pack: bp[s][k][r] = B[n0 + s * NR + r][k0 + k] in fp32, zero past N
    for (int64_t j = 0; j < kGemmPanelN; ++j) {
      float* dst = bp + (j / NR) * kn * NR + j % NR;
      if (n0 + j < g.n) {
        const uint8_t* src = g.b + (n0 + j) * g.b_stride + k0;
        for (int64_t k = 0; k < kn; ++k) dst[k * NR] = g.lut[src[k]];
      } else {
        for (int64_t k = 0; k < kn; ++k) dst[k * NR] = 0.0f;
      }
    }
    for (int64_t m = 0; m < g.m; m += kGemmRows) {
      const float* ar[kGemmRows];
      for (int i = 0; i < kGemmRows; ++i) {
        // rows past M repeat the last row; their results are not stored
        ar[i] = g.a + std::min(m + i, g.m - 1) * g.k + k0;
      }
      const int rows = int(std::min<int64_t>(kGemmRows, g.m - m));
      for (int64_t s = 0; s < kSub; ++s) {
        const float* bs = bp + s * kn * NR;
        float* cs = c + m * kGemmPanelN + s * NR;
        F acc[kGemmRows][2];
        for (int i = 0; i < kGemmRows; ++i) {
          acc[i][0] = i < rows ? V::load(cs + i * kGemmPanelN) : V::zero();
          acc[i][1] = i < rows ? V::load(cs + i * kGemmPanelN + V::W) : V::zero();
        }
        for (int64_t k = 0; k < kn; ++k) {
          const F b0 = V::load(bs + k * NR);
          const F b1 = V::load(bs + k * NR + V::W);
          for (int i = 0; i < kGemmRows; ++i) {
            const F av = V::set1(ar[i][k]);
            acc[i][0] = V::fmadd(av, b0, acc[i][0]);
            acc[i][1] = V::fmadd(av, b1, acc[i][1]);
          }
        }
        for (int i = 0; i < rows; ++i) {
          V::store(cs + i * kGemmPanelN, acc[i][0]);
          V::store(cs + i * kGemmPanelN + V::W, acc[i][1]);
        }
      }
    }
  }
}

}  // namespace
}  // namespace reward_engine::cpu
