// One-lane "vector" for the portable fallback: plain C++ that any x86-64 (or
// other) compiler accepts. Same interface as VecAVX2 / VecAVX512 so the
// kernels in *_kernels.h are written once.
#pragma once

#include <math.h>

#include "dtype.h"
#include "fp8.h"

namespace reward_engine::cpu {
namespace {  // internal linkage: see dtype.h

struct VecScalar {
  static constexpr int W = 1;
  using F = float;

  static F zero() { return 0.0f; }
  static F set1(float v) { return v; }
  static F add(F a, F b) { return a + b; }
  static F sub(F a, F b) { return a - b; }
  static F mul(F a, F b) { return a * b; }
  static F div(F a, F b) { return a / b; }
  static F fmadd(F a, F b, F c) { return a * b + c; }
  static F max(F a, F b) { return a > b ? a : b; }
  static F select_gt(F a, F b, F t, F f) { return a > b ? t : f; }
  static float sum(F a) { return a; }
  static F exp(F a) { return expf(a); }

  // No cheaper forms here: the exact ones (see VecAVX512::exp_approx).
  static F exp_approx(F x) { return exp(x); }
  static F recip_approx(F x) { return div(set1(1.0f), x); }
  static F divide_by(F x, F s, F) { return div(x, s); }

  static F load(const float* p) { return *p; }
  static F from_i32(const int32_t* p) { return float(*p); }
  static F load(const bf16* p) { return bf16_to_float(p->bits); }
  static F load(const fp16* p) { return fp16_to_float(p->bits); }
  static F load(const e4m3* p) { return e4m3_to_float(p->bits); }
  template <class T>
  static F load(const T* p, int) { return load(p); }

  static void store(float* p, F v) { *p = v; }
  static void store(bf16* p, F v) { p->bits = float_to_bf16(v); }
  static void store(fp16* p, F v) { p->bits = float_to_fp16(v); }
  template <class T>
  static void store(T* p, F v, int) { store(p, v); }

  // The fp32 value nearest to v that T can hold (rounding to nearest even).
  // Symmetric int8 code of v: NaN -> 0, clamped to [-127, 127], rounded half to
  // even (adding and subtracting 1.5 * 2^23 in the default rounding mode; the
  // build's -ffp-contract=off keeps the two apart).
  static void store_int8(int8_t* p, F v) {
    v = v == v ? v : 0.0f;
    v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
    *p = int8_t(int32_t((v + 12582912.0f) - 12582912.0f));
  }
  static void store_int8(int8_t* p, F v, int) { store_int8(p, v); }

  static F round(F v, Tag<float>) { return v; }
  static F round(F v, Tag<bf16>) { return bf16_to_float(float_to_bf16(v)); }
  static F round(F v, Tag<fp16>) { return fp16_to_float(float_to_fp16(v)); }
};

}  // namespace
}  // namespace reward_engine::cpu
