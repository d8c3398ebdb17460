// FP8 E4M3 ("e4m3fn": no infinities, one NaN pattern per sign, max 448) <->
// fp32, exact scalar conversions shared by the CPU kernels.
//
// Encoding rounds to nearest even and saturates: |v| >= 448 (and +-inf) becomes
// +-448, NaN stays NaN (0x7F / 0xFF, sign kept). Values below the smallest
// normal (2^-6) round to the subnormal grid (multiples of 2^-9). The rounding
// is the same as torch's `.to(torch.float8_e4m3fn)` on values already clamped
// to [-448, 448], so the cpu backend is bit-identical to the reference.
// `static inline` for the reason given in dtype.h.
#pragma once

#include <cstdint>

#include "dtype.h"

namespace reward_engine {

constexpr float kFp8E4M3Max = 448.0f;

// Branch-free (both roundings computed, then selected) so loops over it vectorize.
static inline uint8_t float_to_e4m3(float f) {
  const uint32_t u = float_to_bits(f);
  const uint32_t sign = (u >> 24) & 0x80u;
  const uint32_t a = u & 0x7fffffffu;
  // normal (>= 2^-6): rebias the exponent (127 -> 7), round away 20 mantissa bits
  const uint32_t normal = (a + (uint32_t(7 - 127) << 23) + 0x7ffffu + ((a >> 20) & 1u)) >> 20;
  // below 2^-6: adding 2^(141-127) = 2^14 lines the subnormal step 2^-9 up with
  // fp32's last mantissa bit, so the hardware add rounds to nearest even
  const uint32_t magic = 141u << 23;
  const uint32_t subnormal = float_to_bits(bits_to_float(a) + bits_to_float(magic)) - magic;
  uint32_t r = a < (121u << 23) ? subnormal : normal;
  r = a >= 0x43e00000u ? 0x7eu : r;  // >= 448 (and inf) saturates to 448
  r = a > 0x7f800000u ? 0x7fu : r;   // NaN
  return uint8_t(sign | r);
}

static inline float e4m3_to_float(uint8_t v) {
  const uint32_t sign = uint32_t(v & 0x80u) << 24;
  const uint32_t exponent = (v >> 3) & 0xfu;
  const uint32_t mantissa = v & 0x7u;
  if (exponent == 0xf && mantissa == 0x7) return bits_to_float(sign | 0x7fc00000u);
  if (exponent == 0) {
    const float m = float(mantissa) * 0.001953125f;  // mantissa * 2^-9, exact
    return sign ? -m : m;
  }
  return bits_to_float(sign | ((exponent + 120u) << 23) | (mantissa << 20));
}

}  // namespace reward_engine
