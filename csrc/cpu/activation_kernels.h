// SwiGLU activation: y = silu(gate) * up, with x = [gate | up] per row.
// Computed in fp32 and rounded once to T (HF rounds silu(gate) to T before the
// multiply; the two differ by at most one rounding of T).
#pragma once

#include <cstdint>

#include "dtype.h"
#include "kernel_args.h"

namespace reward_engine::cpu {
namespace {  // internal linkage: see dtype.h

// silu(g) * u for results of type T.
template <class V, class T>
struct Silu {
  using F = typename V::F;
  static F times(F g, F u) {
    // silu(g) = g / (1 + e^-g); exp saturates for |g| > 87, where the quotient
    // is already g (or a value below fp32 resolution of zero)
    const F e = V::exp(V::sub(V::zero(), g));
    return V::mul(V::div(g, V::add(V::set1(1.0f), e)), u);
  }
};

// A bf16 result keeps 8 bits: the exponential and the reciprocal need no more than
// V's approximations (about 2^-14 relative with AVX-512, the exact forms elsewhere),
// which spare the division (silu_mul_quant at the 1B shape: 14.2 -> 12-13 ms).
template <class V>
struct Silu<V, bf16> {
  using F = typename V::F;
  static F times(F g, F u) {
    const F e = V::exp_approx(V::sub(V::zero(), g));
    return V::mul(V::mul(g, V::recip_approx(V::add(V::set1(1.0f), e))), u);
  }
};

template <class V, class T>
void silu_mul_rows(const SiluMulArgs& a, int64_t begin, int64_t end) {
  const int64_t n = a.inter;
  for (int64_t row = begin; row < end; ++row) {
    const T* gate = static_cast<const T*>(a.x) + row * a.x_stride;
    const T* up = gate + n;
    T* y = static_cast<T*>(a.out) + row * a.out_stride;
    int64_t i = 0;
    for (; i + V::W <= n; i += V::W) {
      V::store(y + i, Silu<V, T>::times(V::load(gate + i), V::load(up + i)));
    }
    if (i < n) {
      const int tail = int(n - i);
      V::store(y + i, Silu<V, T>::times(V::load(gate + i, tail), V::load(up + i, tail)), tail);
    }
  }
}

}  // namespace
}  // namespace reward_engine::cpu
