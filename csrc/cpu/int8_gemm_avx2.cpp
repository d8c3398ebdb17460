// int8_gemm on AVX2 (compiled with -mavx2 -mfma -mf16c). AVX2 has no signed x
// signed byte dot product: VPMADDUBSW multiplies unsigned by signed bytes and
// adds pairs into saturating int16. Using |a| as the unsigned operand and
// sign(a) * b as the signed one (VPSIGNB) keeps every pair sum within
// 2 * 127 * 127 < 32767, so nothing saturates and the sums stay exact; VPMADDWD
// with ones then widens the pairs to int32 lanes.
//
// Register tile: kRows rows x 16 columns (one packed group = two ymm of 8
// columns x 4 k). The launcher pads A to k_pad, so whole 4-byte k groups load.
#include <immintrin.h>

#include <cstring>

#include "int8_gemm.h"
#include "int8_kernels.h"
#include "vec_avx2.h"

namespace reward_engine::cpu {
namespace {

constexpr int kRows = 4;

template <int R>
void tile(const Int8GemmArgs& g, int64_t m, int64_t grp) {
  const int64_t k4 = g.k_pad / 4;
  const int8_t* b = g.b + int8_packed_offset(grp, 0, g.k_pad);
  const int8_t* a[R];
  for (int i = 0; i < R; ++i) a[i] = g.a + (m + i) * g.a_stride;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[R][2];
  for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
  for (int64_t r = 0; r < k4; ++r, b += 64) {
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 32));
    for (int i = 0; i < R; ++i) {
      int32_t word;
      std::memcpy(&word, a[i] + 4 * r, 4);
      const __m256i av = _mm256_set1_epi32(word);
      const __m256i ua = _mm256_abs_epi8(av);
      const __m256i p0 = _mm256_maddubs_epi16(ua, _mm256_sign_epi8(b0, av));
      const __m256i p1 = _mm256_maddubs_epi16(ua, _mm256_sign_epi8(b1, av));
      acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(p0, ones));
      acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(p1, ones));
    }
  }
  alignas(32) int32_t out[R][kInt8PackN];
  for (int i = 0; i < R; ++i) {
    _mm256_store_si256(reinterpret_cast<__m256i*>(out[i]), acc[i][0]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(out[i] + 8), acc[i][1]);
  }
  const int64_t n0 = grp * kInt8PackN;
  const int64_t count = g.n - n0 < kInt8PackN ? g.n - n0 : kInt8PackN;
  int8_store_tile<VecAVX2>(g, out[0], kInt8PackN, m, R, n0, count);
}

}  // namespace

void int8_gemm_avx2(const Int8GemmArgs& g, int64_t m0, int64_t m1, int64_t g0, int64_t g1) {
  const int64_t block = int8_rows_per_block(g.k_pad);
  for (int64_t mb = m0; mb < m1; mb += block) {
    const int64_t me = mb + block < m1 ? mb + block : m1;
    for (int64_t grp = g0; grp < g1; ++grp) {
      int64_t m = mb;
      for (; m + kRows <= me; m += kRows) tile<kRows>(g, m, grp);
      for (; m < me; ++m) tile<1>(g, m, grp);
    }
  }
}

}  // namespace reward_engine::cpu
