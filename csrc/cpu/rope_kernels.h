// Rotary position embedding (HF Llama rotate-half convention), in place.
//
// For each token t, head h, and i < D/2, with c = cache[pos[t], i] and
// s = cache[pos[t], D/2 + i]:
//   x1 = x[i], x2 = x[i + D/2]
//   x[i]       <- round_T(x1 * c - x2 * s)
//   x[i + D/2] <- round_T(x2 * c + x1 * s)
// computed in fp32 and rounded once to T. Plain multiplies and adds (no FMA),
// the same operations as the reference, so fp32 results match it bit for bit.
#pragma once

#include <cstdint>

#include "dtype.h"
#include "kernel_args.h"

namespace reward_engine::cpu {
namespace {  // internal linkage: see dtype.h

template <class V, class T>
inline void rotate_head(T* x, const float* cos, const float* sin, int64_t half) {
  T* x2p = x + half;
  int64_t i = 0;
  for (; i + V::W <= half; i += V::W) {
    typename V::F c = V::load(cos + i), s = V::load(sin + i);
    typename V::F x1 = V::load(x + i), x2 = V::load(x2p + i);
    V::store(x + i, V::sub(V::mul(x1, c), V::mul(x2, s)));
    V::store(x2p + i, V::add(V::mul(x2, c), V::mul(x1, s)));
  }
  if (i < half) {
    const int tail = int(half - i);
    typename V::F c = V::load(cos + i, tail), s = V::load(sin + i, tail);
    typename V::F x1 = V::load(x + i, tail), x2 = V::load(x2p + i, tail);
    V::store(x + i, V::sub(V::mul(x1, c), V::mul(x2, s)), tail);
    V::store(x2p + i, V::add(V::mul(x2, c), V::mul(x1, s)), tail);
  }
}

template <class V, class T>
void rope_rows(const RopeArgs& a, int64_t begin, int64_t end) {
  const int64_t half = a.head_dim / 2;
  for (int64_t t = begin; t < end; ++t) {
    const int64_t pos = a.positions_int64 ? static_cast<const int64_t*>(a.positions)[t]
                                          : static_cast<const int32_t*>(a.positions)[t];
    const float* cos = a.cos_sin_cache + pos * a.head_dim;
    const float* sin = cos + half;
    T* q = static_cast<T*>(a.q) + t * a.q_token_stride;
    for (int64_t h = 0; h < a.num_q_heads; ++h) rotate_head<V, T>(q + h * a.q_head_stride, cos, sin, half);
    T* k = static_cast<T*>(a.k) + t * a.k_token_stride;
    for (int64_t h = 0; h < a.num_kv_heads; ++h) rotate_head<V, T>(k + h * a.k_head_stride, cos, sin, half);
  }
}

}  // namespace
}  // namespace reward_engine::cpu
