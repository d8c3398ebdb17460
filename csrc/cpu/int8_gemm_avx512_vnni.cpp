// int8_gemm on AVX512-VNNI (compiled with the AVX-512 flags plus -mavx512vnni).
// VPDPBUSD multiplies unsigned by signed bytes, four per int32 lane, and adds
// them into the lane with no intermediate rounding or saturation. A's signed
// bytes become unsigned by adding 128 (flipping the top bit), which adds
// 128 * sum_k b[n, k] to every sum: the packed weight's colsum takes it out.
//
// Register tile: kRows rows x kGroups packed groups of 16 columns (24 zmm
// accumulators); each zmm of B is one group's four k values for 16 columns.
#include <immintrin.h>

#include <cstring>

#include "int8_gemm.h"
#include "int8_kernels.h"
#include "vec_avx512.h"

namespace reward_engine::cpu {
namespace {

constexpr int kRows = 6;
constexpr int kGroups = 4;

template <int R, int G>
void tile(const Int8GemmArgs& g, int64_t m, int64_t grp) {
  const int64_t k4 = g.k_pad / 4;
  const int64_t group_bytes = g.k_pad * kInt8PackN;
  const int8_t* b = g.b + int8_packed_offset(grp, 0, g.k_pad);
  const int8_t* a[R];
  for (int i = 0; i < R; ++i) a[i] = g.a + (m + i) * g.a_stride;
  const __m512i flip = _mm512_set1_epi32(int32_t(0x80808080u));
  __m512i acc[R][G];
  for (int i = 0; i < R; ++i) {
    for (int j = 0; j < G; ++j) acc[i][j] = _mm512_setzero_si512();
  }
  for (int64_t r = 0; r < k4; ++r, b += 64) {
    __m512i bv[G];
    for (int j = 0; j < G; ++j) bv[j] = _mm512_loadu_si512(b + j * group_bytes);
    for (int i = 0; i < R; ++i) {
      int32_t word;
      std::memcpy(&word, a[i] + 4 * r, 4);
      const __m512i ua = _mm512_xor_si512(_mm512_set1_epi32(word), flip);
      for (int j = 0; j < G; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], ua, bv[j]);
    }
  }
  alignas(64) int32_t out[R][kInt8PackN];
  for (int j = 0; j < G; ++j) {
    const int64_t n0 = (grp + j) * kInt8PackN;
    // 128 * colsum (a multiply: GCC 12 warns inside its own _mm512_slli_epi32)
    const __m512i bias = _mm512_mullo_epi32(_mm512_loadu_si512(g.colsum + n0),
                                            _mm512_set1_epi32(128));
    for (int i = 0; i < R; ++i) {
      _mm512_store_si512(out[i], _mm512_sub_epi32(acc[i][j], bias));
    }
    const int64_t count = g.n - n0 < kInt8PackN ? g.n - n0 : kInt8PackN;
    int8_store_tile<VecAVX512>(g, out[0], kInt8PackN, m, R, n0, count);
  }
}

template <int G>
void rows(const Int8GemmArgs& g, int64_t m, int64_t me, int64_t grp) {
  for (; m + kRows <= me; m += kRows) tile<kRows, G>(g, m, grp);
  for (; m < me; ++m) tile<1, G>(g, m, grp);
}

}  // namespace

void int8_gemm_avx512_vnni(const Int8GemmArgs& g, int64_t m0, int64_t m1, int64_t g0,
                           int64_t g1) {
  const int64_t block = int8_rows_per_block(g.k_pad);
  for (int64_t mb = m0; mb < m1; mb += block) {
    const int64_t me = mb + block < m1 ? mb + block : m1;
    int64_t grp = g0;
    for (; grp + kGroups <= g1; grp += kGroups) rows<kGroups>(g, mb, me, grp);
    for (; grp < g1; ++grp) rows<1>(g, mb, me, grp);
  }
}

}  // namespace reward_engine::cpu
