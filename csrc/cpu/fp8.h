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

static inline uint8_t float_to_e4m3(float f) {
  uint32_t u = float_to_bits(f);
  const uint8_t sign = uint8_t((u >> 24) & 0x80u);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return sign | 0x7f;    // NaN
  if (u >= 0x43e00000u) return sign | 0x7e;   // >= 448 (and inf) saturates to 448
  if (u < (121u << 23)) {
    // below 2^-6: adding 2^(141-127) = 2^14 lines the subnormal step 2^-9 up
    // with fp32's last mantissa bit, so the hardware add rounds to nearest even
    const uint32_t magic = 141u << 23;
    const float rounded = bits_to_float(u) + bits_to_float(magic);
    return sign | uint8_t(float_to_bits(rounded) - magic);
  }
  // normal: rebias the exponent (127 -> 7) and round away the low 20 mantissa bits
  const uint32_t odd = (u >> 20) & 1u;
  u += (uint32_t(7 - 127) << 23) + 0x7ffffu + odd;
  return sign | uint8_t(u >> 20);
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
