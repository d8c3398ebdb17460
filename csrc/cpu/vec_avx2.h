// 8 x fp32 lanes with AVX2 + FMA + F16C. Only include from a translation unit
// compiled with -mavx2 -mfma -mf16c (kernels_avx2.cpp).
#pragma once

#include <immintrin.h>

#include "dtype.h"

namespace reward_engine::cpu {
namespace {  // internal linkage: see dtype.h

struct VecAVX2 {
  static constexpr int W = 8;
  using F = __m256;

  static F zero() { return _mm256_setzero_ps(); }
  static F set1(float v) { return _mm256_set1_ps(v); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F div(F a, F b) { return _mm256_div_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F max(F a, F b) { return _mm256_max_ps(a, b); }
  // Lane-wise a > b ? t : f
  static F select_gt(F a, F b, F t, F f) {
    return _mm256_blendv_ps(f, t, _mm256_cmp_ps(a, b, _CMP_GT_OQ));
  }
  static float sum(F a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }

  // exp(x) to about 2 ulp: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial
  // for e^r, then scale by 2^n through the exponent bits. The input is clamped
  // to [-87, 88] so 2^n stays a normal float (NaN passes through the clamps:
  // max/min return their second operand when either is NaN); above
  // ln(FLT_MAX) the result is +inf, as expf gives.
  static F exp(F x) {
    const F overflow = _mm256_cmp_ps(x, _mm256_set1_ps(88.72283935546875f), _CMP_GT_OQ);
    x = _mm256_max_ps(_mm256_set1_ps(-87.0f), x);
    x = _mm256_min_ps(_mm256_set1_ps(88.0f), x);
    F n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    F r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    F p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_blendv_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)),
                            _mm256_set1_ps(__builtin_inff()), overflow);
  }

  // No cheaper forms here: the exact ones (see VecAVX512::exp_approx).
  static F exp_approx(F x) { return exp(x); }
  static F recip_approx(F x) { return div(set1(1.0f), x); }
  static F divide_by(F x, F s, F) { return div(x, s); }

  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static F from_i32(const int32_t* p) {
    return _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static F load(const bf16* p) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static F load(const fp16* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static F load(const e4m3* p) {
    return decode_e4m3(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  // First n (< W) lanes from p, the rest zero.
  static F load(const float* p, int n) { return _mm256_maskload_ps(p, lane_mask(n)); }
  template <class T16>
  static F load(const T16* p, int n) {
    T16 buf[W] = {};
    for (int i = 0; i < n; ++i) buf[i] = p[i];
    return load(buf);
  }

  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static void store(bf16* p, F v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), pack_u32_to_u16(bf16_bits(v)));
  }
  static void store(fp16* p, F v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  static void store(float* p, F v, int n) { _mm256_maskstore_ps(p, lane_mask(n), v); }
  template <class T16>
  static void store(T16* p, F v, int n) {
    T16 buf[W];
    store(buf, v);
    for (int i = 0; i < n; ++i) p[i] = buf[i];
  }

  // Symmetric int8 codes of v: NaN -> 0, clamped to [-127, 127], rounded half to
  // even (VCVTPS2DQ in the default rounding mode); W bytes, or the first n.
  static void store_int8(int8_t* p, F v) {
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), int8_codes(v));
  }
  static void store_int8(int8_t* p, F v, int n) {
    alignas(16) int8_t buf[16];
    _mm_store_si128(reinterpret_cast<__m128i*>(buf), int8_codes(v));
    for (int i = 0; i < n; ++i) p[i] = buf[i];
  }

  static F round(F v, Tag<float>) { return v; }
  static F round(F v, Tag<bf16>) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(bf16_bits(v), 16));
  }
  static F round(F v, Tag<fp16>) {
    return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }

 private:
  // Exact E4M3 -> fp32 of one code per 32-bit lane, with integer ops: a normal code's
  // exponent is rebiased (7 -> 127) and its 3 mantissa bits moved to the top of fp32's;
  // a subnormal one (exponent 0) is mantissa * 2^-9; magnitude 0x7F is NaN.
  static F decode_e4m3(__m256i v) {
    const __m256i mag = _mm256_and_si256(v, _mm256_set1_epi32(0x7f));
    const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(v, _mm256_set1_epi32(0x80)), 24);
    const __m256i normal = _mm256_add_epi32(_mm256_slli_epi32(mag, 20), _mm256_set1_epi32(120 << 23));
    const F subnormal = _mm256_mul_ps(_mm256_cvtepi32_ps(mag), _mm256_set1_ps(0.001953125f));
    const __m256i is_sub = _mm256_cmpgt_epi32(_mm256_set1_epi32(8), mag);
    const __m256i is_nan = _mm256_cmpeq_epi32(mag, _mm256_set1_epi32(0x7f));
    F r = _mm256_blendv_ps(_mm256_castsi256_ps(normal), subnormal, _mm256_castsi256_ps(is_sub));
    r = _mm256_blendv_ps(r, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000)),
                         _mm256_castsi256_ps(is_nan));
    return _mm256_or_ps(r, _mm256_castsi256_ps(sign));
  }
  // The 8 codes in the low 8 bytes.
  static __m128i int8_codes(F v) {
    v = _mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q));
    v = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-127.0f)), _mm256_set1_ps(127.0f));
    const __m256i i = _mm256_cvtps_epi32(v);
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
    return _mm_packs_epi16(w, w);
  }
  static __m256i lane_mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  // bf16 bit patterns (round to nearest even, NaN -> 0x7FC0) in the low half
  // of each 32-bit lane; same rule as float_to_bf16 in dtype.h.
  static __m256i bf16_bits(F v) {
    __m256i u = _mm256_castps_si256(v);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_srli_epi32(
        _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    return _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7fc0), nan);
  }
  static __m128i pack_u32_to_u16(__m256i v) {
    // values are <= 0xFFFF, so the unsigned-saturating pack is exact
    return _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  }
};

}  // namespace
}  // namespace reward_engine::cpu
