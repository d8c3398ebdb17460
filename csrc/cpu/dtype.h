// Element types shared by every CPU kernel, and exact scalar conversions.
//
// No framework headers: the compiled module is not built against PyTorch, so a
// tensor's element type arrives as an integer code (see kernels/_native.py).
//
// Every function here is `static inline` on purpose: this header is compiled
// into translation units built with different ISA flags (-mavx512f, -mavx2,
// none). Internal linkage gives each unit its own copy, so the linker can never
// pick an AVX-512 body for a caller in the scalar unit.
#pragma once

#include <cstdint>

namespace reward_engine {

// Must match kernels/_native.py DTYPE_CODES.
enum DTypeCode : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2, kNumDTypes = 3 };

// Selects an overload by element type without passing a value.
template <class T>
struct Tag {};

// Storage-only 16-bit types: arithmetic always happens in fp32.
struct bf16 {
  uint16_t bits;
};
struct fp16 {
  uint16_t bits;
};
// FP8 E4M3 (torch.float8_e4m3fn) code, storage only: the KV cache's element type when
// it is quantized. Decoded exactly to fp32 (csrc/cpu/fp8.h, and each vector type's load).
struct e4m3 {
  uint8_t bits;
};

static inline float bits_to_float(uint32_t u) {
  float f;
  __builtin_memcpy(&f, &u, sizeof(f));
  return f;
}

static inline uint32_t float_to_bits(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, sizeof(u));
  return u;
}

static inline float bf16_to_float(uint16_t b) { return bits_to_float(uint32_t(b) << 16); }

// Round to nearest even. Every NaN becomes the canonical quiet NaN 0x7FC0, as
// torch does, so outputs are bit-identical to a torch `.to(torch.bfloat16)`.
static inline uint16_t float_to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static inline float fp16_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {
    // zero or subnormal: mantissa * 2^-24 is exact in fp32
    float v = float(mantissa) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return bits_to_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// Round to nearest even, overflow to inf, NaN stays NaN (quiet, sign kept).
static inline uint16_t float_to_fp16(float f) {
  uint32_t u = float_to_bits(f);
  uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u;
  if (a >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to inf
  if (a < 0x38800000u) {
    // Below the smallest normal (2^-14): the result is round(|f| * 2^24) units
    // of 2^-24. Scaling by a power of two is exact; adding 2^23 then rounds to
    // an integer with the hardware's round-to-nearest-even.
    float scaled = bits_to_float(a) * 16777216.0f;
    float rounded = (scaled + 8388608.0f) - 8388608.0f;
    return sign | uint16_t(rounded);
  }
  a += 0xfffu + ((a >> 13) & 1u);  // round to nearest even at bit 13
  return sign | uint16_t((a - (112u << 23)) >> 13);
}

// Scalar load/store of any element type as fp32 (same rounding as above).
static inline float to_float(float v) { return v; }
static inline float to_float(bf16 v) { return bf16_to_float(v.bits); }
static inline float to_float(fp16 v) { return fp16_to_float(v.bits); }
static inline void store_float(float* p, float v) { *p = v; }
static inline void store_float(bf16* p, float v) { p->bits = float_to_bf16(v); }
static inline void store_float(fp16* p, float v) { p->bits = float_to_fp16(v); }

}  // namespace reward_engine
