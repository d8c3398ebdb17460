// Batch-invariant GEMM (batch_invariant_linear), fp32 multiply-add family: written
// once over a vector type V and element type T, for every ISA and dtype.
//
//   out[m][n] = round_T(acc[m][n] + bias[n]),  acc[m][n] = sum over k of a[m][k] * b[n][k]
//
// The sum runs over k in ascending order into ONE fp32 accumulator per output
// element: acc = fmadd(a[m][k], b[n][k], acc) (the scalar path multiplies, then
// adds). That chain is the same whatever M is, wherever row m sits in its tile
// and whichever rows share it, so a row's result never depends on the batch.
// Tiling only decides when a partial sum waits in memory (fp32, exact) between
// K blocks. bf16 and fp16 products are exact in fp32, so for them the result is
// bit-equal to the reference's multiply-then-add chain on every ISA.
//
// Work: B is packed per call into fp32 panels [k][kGemmPanelCols] (gemm.cpp); a
// work item is up to kLinearItemRows rows x a few panels. Per K block of
// kLinearBlockK, A's rows are widened to fp32 once (bf16/fp16) and a register tile
// of kLinearTileRows rows x 2 vectors accumulates with broadcast A values.
#pragma once

#include <stdlib.h>

#include <cstdint>

#include "dtype.h"
#include "kernel_args.h"

namespace reward_engine::cpu {
namespace {  // internal linkage: see dtype.h

constexpr int64_t kLinearItemRows = 96;  // rows per work item: a multiple of 6, 16 and 32
constexpr int64_t kLinearItemPanels = 4;  // most panels per work item
constexpr int64_t kLinearBlockK = 256;    // depth of one pass over a panel
constexpr int kLinearTileRows = 6;

// Per-thread scratch that only grows (plain malloc: no C++ library code in an
// ISA-specific translation unit; see attention_kernels.h).
struct GemmScratch {
  void* data;
  int64_t bytes;
};
thread_local GemmScratch t_gemm_scratch = {nullptr, 0};

inline void* gemm_scratch(int64_t bytes) {
  if (t_gemm_scratch.bytes < bytes) {
    free(t_gemm_scratch.data);
    t_gemm_scratch.data = aligned_alloc(64, size_t((bytes + 63) / 64 * 64));
    t_gemm_scratch.bytes = t_gemm_scratch.data ? bytes : 0;
  }
  return t_gemm_scratch.data;
}

// Packed fp32 panels: element (k, c) of panel p at p * k * kGemmPanelCols + k * 64 + c;
// columns past n are zero. One k row at a time across the panel's 64 rows of B:
// the writes are contiguous and the 64 source lines stay in L1 for 8-32 k.
template <class T>
void gemm_pack_f32(const GemmArgs& g, int64_t n0, int64_t p0, int64_t p1, void* packed) {
  const T* b = static_cast<const T*>(g.b);
  for (int64_t p = p0; p < p1; ++p) {
    float* dst = static_cast<float*>(packed) + p * g.k * kGemmPanelCols;
    const int64_t col0 = n0 + p * kGemmPanelCols;
    const int64_t width = g.n - col0 < kGemmPanelCols ? g.n - col0 : kGemmPanelCols;
    for (int64_t k = 0; k < g.k; ++k) {
      float* row = dst + k * kGemmPanelCols;
      int64_t c = 0;
      for (; c < width; ++c) row[c] = to_float(b[(col0 + c) * g.b_stride + k]);
      for (; c < kGemmPanelCols; ++c) row[c] = 0.0f;
    }
  }
}

// Packed bf16 pairs (the VDPBF16PS and AMX layout): word (j, c) of panel p at
// p * (round_up(k, 32) / 2) * kGemmPanelCols + j * 64 + c holds (b[col][2j], b[col][2j+1]),
// the pair that sits adjacent in B's row; zero past k and past n.
inline void gemm_pack_pairs(const GemmArgs& g, int64_t n0, int64_t p0, int64_t p1, void* packed) {
  const int64_t pairs = g.k / 2, padded = (g.k + 31) / 32 * 16;
  const uint16_t* b = static_cast<const uint16_t*>(g.b);
  for (int64_t p = p0; p < p1; ++p) {
    uint32_t* dst = static_cast<uint32_t*>(packed) + p * padded * kGemmPanelCols;
    const int64_t col0 = n0 + p * kGemmPanelCols;
    const int64_t width = g.n - col0 < kGemmPanelCols ? g.n - col0 : kGemmPanelCols;
    const uint16_t* src = b + col0 * g.b_stride;
    for (int64_t j = 0; j < padded; ++j) {
      uint32_t* row = dst + j * kGemmPanelCols;
      int64_t c = 0;
      if (j < pairs) {
        for (; c < width; ++c) {
          uint32_t pair;
          __builtin_memcpy(&pair, src + c * g.b_stride + 2 * j, sizeof(pair));
          row[c] = pair;
        }
      } else if (j == pairs && g.k % 2) {
        for (; c < width; ++c) row[c] = src[c * g.b_stride + g.k - 1];
      }
      for (; c < kGemmPanelCols; ++c) row[c] = 0;
    }
  }
}

// Stores a register tile of `rows` rows x NV vectors starting at column col:
// acc + bias, rounded to T; columns past n are dropped.
template <class V, class T, int NV>
inline void gemm_store_tile(const GemmArgs& g, typename V::F (*acc)[NV], int rows, int64_t m,
                            int64_t col) {
  using F = typename V::F;
  const T* bias = static_cast<const T*>(g.bias);
  for (int j = 0; j < NV; ++j) {
    const int64_t c = col + j * V::W;
    if (c >= g.n) break;
    const int width = g.n - c < V::W ? int(g.n - c) : V::W;
    F b = V::zero();
    if (bias != nullptr) b = width == V::W ? V::load(bias + c) : V::load(bias + c, width);
    for (int i = 0; i < rows; ++i) {
      T* o = static_cast<T*>(g.out) + (m + i) * g.out_stride + c;
      const F v = V::add(acc[i][j], b);
      if (width == V::W) {
        V::store(o, v);
      } else {
        V::store(o, v, width);
      }
    }
  }
}

template <class V, class T>
void gemm_compute_f32(const GemmArgs& g, const void* packed, int64_t n0, int64_t m0, int64_t m1,
                      int64_t p0, int64_t p1) {
  using F = typename V::F;
  constexpr int64_t NR = 2 * V::W;  // register tile: kLinearTileRows x NR
  constexpr int64_t kSub = kGemmPanelCols / NR;
  static_assert(kGemmPanelCols % NR == 0, "a panel must be a whole number of tiles");
  const int64_t rows = m1 - m0, panels = p1 - p0;
  const int64_t c_stride = panels * kGemmPanelCols;
  // partial sums between K blocks, then (for bf16/fp16) A's block widened to fp32
  float* c = static_cast<float*>(gemm_scratch(4 * (rows * c_stride + rows * kLinearBlockK)));
  float* a32 = c + rows * c_stride;
  const T* a = static_cast<const T*>(g.a);

  for (int64_t k0 = 0; k0 < g.k; k0 += kLinearBlockK) {
    const int64_t kn = g.k - k0 < kLinearBlockK ? g.k - k0 : kLinearBlockK;
    const bool first = k0 == 0, last = k0 + kn == g.k;
    const float* arows;
    int64_t lda;
    if constexpr (sizeof(T) == sizeof(float)) {
      arows = reinterpret_cast<const float*>(a) + m0 * g.a_stride + k0;
      lda = g.a_stride;
    } else {
      for (int64_t i = 0; i < rows; ++i) {
        const T* src = a + (m0 + i) * g.a_stride + k0;
        float* dst = a32 + i * kLinearBlockK;
        int64_t j = 0;
        for (; j + V::W <= kn; j += V::W) V::store(dst + j, V::load(src + j));
        for (; j < kn; ++j) dst[j] = to_float(src[j]);
      }
      arows = a32;
      lda = kLinearBlockK;
    }
    for (int64_t p = p0; p < p1; ++p) {
      const float* bp = static_cast<const float*>(packed) + (p * g.k + k0) * kGemmPanelCols;
      for (int64_t m = 0; m < rows; m += kLinearTileRows) {
        const int tile_rows = rows - m < kLinearTileRows ? int(rows - m) : kLinearTileRows;
        const float* ar[kLinearTileRows];
        for (int i = 0; i < kLinearTileRows; ++i) {
          // rows past the item repeat its last row; their results are not stored
          ar[i] = arows + (m + (i < tile_rows ? i : tile_rows - 1)) * lda;
        }
        for (int64_t s = 0; s < kSub; ++s) {
          const int64_t col = (p - p0) * kGemmPanelCols + s * NR;
          float* cs = c + m * c_stride + col;
          F acc[kLinearTileRows][2];
          for (int i = 0; i < kLinearTileRows; ++i) {
            const bool keep = !first && i < tile_rows;
            acc[i][0] = keep ? V::load(cs + i * c_stride) : V::zero();
            acc[i][1] = keep ? V::load(cs + i * c_stride + V::W) : V::zero();
          }
          const float* bs = bp + s * NR;
          for (int64_t k = 0; k < kn; ++k) {
            const F b0 = V::load(bs + k * kGemmPanelCols);
            const F b1 = V::load(bs + k * kGemmPanelCols + V::W);
            for (int i = 0; i < kLinearTileRows; ++i) {
              const F av = V::set1(ar[i][k]);
              acc[i][0] = V::fmadd(av, b0, acc[i][0]);
              acc[i][1] = V::fmadd(av, b1, acc[i][1]);
            }
          }
          if (last) {
            gemm_store_tile<V, T, 2>(g, acc, tile_rows, m0 + m, n0 + p * kGemmPanelCols + s * NR);
          } else {
            for (int i = 0; i < tile_rows; ++i) {
              V::store(cs + i * c_stride, acc[i][0]);
              V::store(cs + i * c_stride + V::W, acc[i][1]);
            }
          }
        }
      }
    }
  }
}

template <class V, class T>
constexpr GemmKernel gemm_f32_kernel() {
  return GemmKernel{&gemm_pack_f32<T>, &gemm_compute_f32<V, T>, kGemmPackedF32};
}

}  // namespace
}  // namespace reward_engine::cpu
