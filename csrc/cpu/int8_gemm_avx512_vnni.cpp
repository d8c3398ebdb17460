// int8_gemm on AVX512-VNNI (compiled with the AVX-512 flags plus -mavx512vnni).
// VPDPBUSD multiplies unsigned by signed bytes, four per int32 lane, and adds
// them into the lane with no intermediate rounding or saturation. A's signed
// bytes become unsigned by adding 128 (flipping the top bit), which adds
// 128 * sum_k b[n, k] to every sum: the packed weight's colsum takes it out.
//
// Register tile: up to kRows rows x kGroups packed groups of 16 columns (24 zmm
// accumulators); each zmm of B is one group's four k values for 16 columns.
// The accumulators are named variables, not an array: GCC 12 leaves a 6 x 4
// array of zmm in memory (a reload and a spill around every VPDPBUSD, which
// halves the throughput), and the asm below names each one as read-write so
// it stays in its register for the whole k loop.
#include <immintrin.h>

#include <cstring>

#include "int8_gemm.h"
#include "int8_kernels.h"
#include "vec_avx512.h"

namespace reward_engine::cpu {
namespace {

constexpr int kRows = 6;
constexpr int kGroups = 4;

inline void dpbusd(__m512i& acc, __m512i a_u8, __m512i b_s8) {
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a_u8), "v"(b_s8));
}

// Row i's four k bytes at r, broadcast and biased to unsigned.
inline __m512i load_a(const int8_t* row, int64_t r, __m512i flip) {
  int32_t word;
  std::memcpy(&word, row + 4 * r, 4);
  return _mm512_xor_si512(_mm512_set1_epi32(word), flip);
}

// Takes 128 * colsum out of one group's accumulators (rows [0, R)) and stores
// them through the shared epilogue.
template <int R>
void store_group(const Int8GemmArgs& g, int64_t m, int64_t grp, const __m512i (&acc)[kRows]) {
  const int64_t n0 = grp * kInt8PackN;
  // 128 * colsum (a multiply: GCC 12 warns inside its own _mm512_slli_epi32)
  const __m512i bias =
      _mm512_mullo_epi32(_mm512_loadu_si512(g.colsum + n0), _mm512_set1_epi32(128));
  alignas(64) int32_t out[kRows][kInt8PackN];
  for (int i = 0; i < R; ++i) _mm512_store_si512(out[i], _mm512_sub_epi32(acc[i], bias));
  const int64_t count = g.n - n0 < kInt8PackN ? g.n - n0 : kInt8PackN;
  int8_store_tile<VecAVX512>(g, out[0], kInt8PackN, m, R, n0, count);
}

// out[m : m + R, groups grp : grp + G] (R <= kRows, G <= kGroups).
template <int R, int G>
void tile(const Int8GemmArgs& g, int64_t m, int64_t grp) {
  static_assert(R >= 1 && R <= kRows && G >= 1 && G <= kGroups, "tile shape");
  const int64_t k4 = g.k_pad / 4;
  const int64_t group_bytes = g.k_pad * kInt8PackN;
  const int8_t* b = g.b + int8_packed_offset(grp, 0, g.k_pad);
  // rows past R alias row 0 and are never read (if constexpr below)
  const int8_t* a0 = g.a + m * g.a_stride;
  const int8_t* a1 = a0 + (R > 1 ? 1 : 0) * g.a_stride;
  const int8_t* a2 = a0 + (R > 2 ? 2 : 0) * g.a_stride;
  const int8_t* a3 = a0 + (R > 3 ? 3 : 0) * g.a_stride;
  const int8_t* a4 = a0 + (R > 4 ? 4 : 0) * g.a_stride;
  const int8_t* a5 = a0 + (R > 5 ? 5 : 0) * g.a_stride;
  const __m512i flip = _mm512_set1_epi32(int32_t(0x80808080u));
  const __m512i zero = _mm512_setzero_si512();
  __m512i c00 = zero, c01 = zero, c02 = zero, c03 = zero, c10 = zero, c11 = zero, c12 = zero,
          c13 = zero, c20 = zero, c21 = zero, c22 = zero, c23 = zero, c30 = zero, c31 = zero,
          c32 = zero, c33 = zero, c40 = zero, c41 = zero, c42 = zero, c43 = zero, c50 = zero,
          c51 = zero, c52 = zero, c53 = zero;
  for (int64_t r = 0; r < k4; ++r, b += 64) {
    const __m512i b0 = _mm512_loadu_si512(b);
    const __m512i b1 = G > 1 ? _mm512_loadu_si512(b + group_bytes) : zero;
    const __m512i b2 = G > 2 ? _mm512_loadu_si512(b + 2 * group_bytes) : zero;
    const __m512i b3 = G > 3 ? _mm512_loadu_si512(b + 3 * group_bytes) : zero;
#define RE_INT8_ROW(i)                              \
  if constexpr (R > i) {                            \
    const __m512i ua = load_a(a##i, r, flip);       \
    dpbusd(c##i##0, ua, b0);                        \
    if constexpr (G > 1) dpbusd(c##i##1, ua, b1);   \
    if constexpr (G > 2) dpbusd(c##i##2, ua, b2);   \
    if constexpr (G > 3) dpbusd(c##i##3, ua, b3);   \
  }
    RE_INT8_ROW(0)
    RE_INT8_ROW(1)
    RE_INT8_ROW(2)
    RE_INT8_ROW(3)
    RE_INT8_ROW(4)
    RE_INT8_ROW(5)
#undef RE_INT8_ROW
  }
  store_group<R>(g, m, grp, {c00, c10, c20, c30, c40, c50});
  if constexpr (G > 1) store_group<R>(g, m, grp + 1, {c01, c11, c21, c31, c41, c51});
  if constexpr (G > 2) store_group<R>(g, m, grp + 2, {c02, c12, c22, c32, c42, c52});
  if constexpr (G > 3) store_group<R>(g, m, grp + 3, {c03, c13, c23, c33, c43, c53});
}

// Rows [m, me) against groups [grp, grp + G): whole tiles of kRows, then one
// tile of the rows left.
template <int G>
void rows(const Int8GemmArgs& g, int64_t m, int64_t me, int64_t grp) {
  for (; m + kRows <= me; m += kRows) tile<kRows, G>(g, m, grp);
  switch (me - m) {
    case 5:
      return tile<5, G>(g, m, grp);
    case 4:
      return tile<4, G>(g, m, grp);
    case 3:
      return tile<3, G>(g, m, grp);
    case 2:
      return tile<2, G>(g, m, grp);
    case 1:
      return tile<1, G>(g, m, grp);
    default:
      return;
  }
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
