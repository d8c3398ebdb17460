// SwiGLU activation: y = silu(gate) * up, with x = [gate | up] per row.
// Computed in fp32 and rounded once to T (HF rounds silu(gate) to T before the
// multiply; the two differ by at most one rounding of T).
#pragma once

#include <cstdint>

#include "dtype.h"
#include "kernel_args.h"

namespace reward_engine::cpu {
namespace {  // internal linkage: see dtype.h

template <class V>
inline typename V::F silu_times(typename V::F g, typename V::F u) {
  // silu(g) = g / (1 + e^-g); exp saturates for |g| > 87, where the quotient
  // is already g (or a value below fp32 resolution of zero)
  typename V::F one = V::set1(1.0f);
  typename V::F e = V::exp(V::sub(V::zero(), g));
  return V::mul(V::div(g, V::add(one, e)), u);
}

template <class V, class T>
void silu_mul_rows(const SiluMulArgs& a, int64_t begin, int64_t end) {
  const int64_t n = a.inter;
  for (int64_t row = begin; row < end; ++row) {
    const T* gate = static_cast<const T*>(a.x) + row * a.x_stride;
    const T* up = gate + n;
    T* y = static_cast<T*>(a.out) + row * a.out_stride;
    int64_t i = 0;
    for (; i + V::W <= n; i += V::W) {
      V::store(y + i, silu_times<V>(V::load(gate + i), V::load(up + i)));
    }
    if (i < n) {
      const int tail = int(n - i);
      V::store(y + i, silu_times<V>(V::load(gate + i, tail), V::load(up + i, tail)), tail);
    }
  }
}

}  // namespace
}  // namespace reward_engine::cpu
