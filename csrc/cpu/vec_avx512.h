// 16 x fp32 lanes with AVX-512 F/BW/VL/DQ. Only include from a translation unit
// compiled with the AVX-512 flags (kernels_avx512.cpp).
//
// bf16 rounding is done with integer ops rather than VCVTNEPS2BF16: that
// instruction flushes subnormal inputs to zero, and we want results
// bit-identical to torch's conversion.
#pragma once

#include <immintrin.h>

#include "dtype.h"

namespace reward_engine::cpu {
namespace {  // internal linkage: see dtype.h

struct VecAVX512 {
  static constexpr int W = 16;
  using F = __m512;

  static F zero() { return _mm512_setzero_ps(); }
  static F set1(float v) { return _mm512_set1_ps(v); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F div(F a, F b) { return _mm512_div_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F max(F a, F b) { return _mm512_max_ps(a, b); }
  // Lane-wise a > b ? t : f
  static F select_gt(F a, F b, F t, F f) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_GT_OQ), f, t);
  }
  static float sum(F a) { return _mm512_reduce_add_ps(a); }

  // Same method and constants as VecAVX2::exp.
  static F exp(F x) {
    const __mmask16 overflow =
        _mm512_cmp_ps_mask(x, _mm512_set1_ps(88.72283935546875f), _CMP_GT_OQ);
    x = _mm512_max_ps(_mm512_set1_ps(-87.0f), x);
    x = _mm512_min_ps(_mm512_set1_ps(88.0f), x);
    F n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    F r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    F p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    __m512i e = _mm512_slli_epi32(
        _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mask_blend_ps(overflow, _mm512_mul_ps(p, _mm512_castsi512_ps(e)),
                                _mm512_set1_ps(__builtin_inff()));
  }

  // exp and 1/x to about 2^-14 relative, for results rounded to bf16 (8 bits) and
  // softmax probabilities: 2^n * 2^f, f in [-0.5, 0.5] from a degree-5 Taylor
  // polynomial, VSCALEFPS doing the exponent (overflow to inf, NaN kept); VRCP14PS.
  // Arguments below -87 give e^-87, as in exp: never a subnormal result, which the
  // next floating-point operation would pay a microcode assist for.
  static F exp_approx(F x) {
    x = _mm512_min_ps(_mm512_set1_ps(100.0f), _mm512_max_ps(_mm512_set1_ps(-87.0f), x));
    const F t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
    const F n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const F f = _mm512_sub_ps(t, n);
    F p = _mm512_set1_ps(1.3333558146e-3f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108665e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650696e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718056e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
  }
  static F recip_approx(F x) { return _mm512_rcp14_ps(x); }
  // x / s rounded as VDIVPS rounds it, given r = 1 / s (rounded to nearest): the
  // quotient x * r corrected once by its exact FMA residual (Markstein), three
  // pipelined operations for a division's 8-10 cycles; where x * r is infinite the
  // residual is NaN and x * r is the answer (NaN x stays NaN).
  static F divide_by(F x, F s, F r) {
    const F q0 = _mm512_mul_ps(x, r);
    const F q1 = _mm512_fmadd_ps(_mm512_fnmadd_ps(q0, s, x), r, q0);
    return _mm512_mask_mov_ps(q1, _mm512_fpclass_ps_mask(q0, 0x18), q0);
  }

  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static F from_i32(const int32_t* p) { return _mm512_cvtepi32_ps(_mm512_loadu_si512(p)); }
  static F load(const bf16* p) {
    return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static F load(const fp16* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static F load(const e4m3* p) {
    return decode_e4m3(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  // First n (< W) lanes from p, the rest zero; masked, so nothing past p + n is read.
  static F load(const float* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static F load(const bf16* p, int n) { return widen_bf16(_mm256_maskz_loadu_epi16(mask(n), p)); }
  static F load(const fp16* p, int n) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask(n), p));
  }
  static F load(const e4m3* p, int n) {
    return decode_e4m3(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask(n), p)));
  }

  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static void store(bf16* p, F v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(bf16_bits(v)));
  }
  static void store(fp16* p, F v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), to_fp16(v));
  }
  // Non-temporal (streaming) stores of W lanes: p aligned to their size (64 bytes
  // for float, 32 for bf16 and fp16); ordered by an SFENCE before other threads read.
  static void stream(float* p, F v) { _mm512_stream_ps(p, v); }
  static void stream(bf16* p, F v) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(bf16_bits(v)));
  }
  static void stream(fp16* p, F v) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), to_fp16(v));
  }
  static void store(float* p, F v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  static void store(bf16* p, F v, int n) {
    _mm512_mask_cvtepi32_storeu_epi16(p, mask(n), bf16_bits(v));
  }
  static void store(fp16* p, F v, int n) { _mm256_mask_storeu_epi16(p, mask(n), to_fp16(v)); }

  static F round(F v, Tag<float>) { return v; }
  // Symmetric int8 codes of v: NaN -> 0, clamped to [-127, 127], rounded half to
  // even (VCVTPS2DQ in the default rounding mode); W bytes, or the first n.
  static void store_int8(int8_t* p, F v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtsepi32_epi8(int8_codes(v)));
  }
  static void store_int8(int8_t* p, F v, int n) {
    _mm512_mask_cvtsepi32_storeu_epi8(p, mask(n), int8_codes(v));
  }

  static F round(F v, Tag<bf16>) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(bf16_bits(v), 16));
  }
  static F round(F v, Tag<fp16>) { return _mm512_cvtph_ps(to_fp16(v)); }

 private:
  static __mmask16 mask(int n) { return __mmask16((1u << n) - 1u); }
  // Exact E4M3 -> fp32, one code per 32-bit lane (same method as VecAVX2::decode_e4m3).
  static F decode_e4m3(__m512i v) {
    const __m512i mag = _mm512_and_si512(v, _mm512_set1_epi32(0x7f));
    const __m512i sign = _mm512_slli_epi32(_mm512_and_si512(v, _mm512_set1_epi32(0x80)), 24);
    const __m512i normal = _mm512_add_epi32(_mm512_slli_epi32(mag, 20), _mm512_set1_epi32(120 << 23));
    const F subnormal = _mm512_mul_ps(_mm512_cvtepi32_ps(mag), _mm512_set1_ps(0.001953125f));
    F r = _mm512_mask_blend_ps(_mm512_cmplt_epi32_mask(mag, _mm512_set1_epi32(8)),
                               _mm512_castsi512_ps(normal), subnormal);
    r = _mm512_mask_blend_ps(_mm512_cmpeq_epi32_mask(mag, _mm512_set1_epi32(0x7f)), r,
                             _mm512_castsi512_ps(_mm512_set1_epi32(0x7fc00000)));
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(r), sign));
  }
  static F widen_bf16(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static __m512i int8_codes(F v) {
    v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v);
    v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-127.0f)), _mm512_set1_ps(127.0f));
    return _mm512_cvtps_epi32(v);
  }
  static __m256i to_fp16(F v) {
    return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  // Same rule as float_to_bf16 in dtype.h, 16 lanes at a time.
  static __m512i bf16_bits(F v) {
    __m512i u = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_srli_epi32(
        _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    return _mm512_mask_blend_epi32(nan, rounded, _mm512_set1_epi32(0x7fc0));
  }
};

}  // namespace
}  // namespace reward_engine::cpu
