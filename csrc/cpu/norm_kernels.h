// RMSNorm kernels, written once over a vector type V (VecScalar, VecAVX2,
// VecAVX512) and an element type T (float, bf16, fp16).
//
// Numerics follow HF LlamaRMSNorm (see kernels/norm.py, the reference):
//   1. (fused) s = round_T(x + residual); residual <- s
//   2. var = mean(float(s)^2) in fp32
//   3. n = round_T(float(s) * 1/sqrt(var + eps))
//   4. y = round_T(n * float(weight))
// Each row is read twice; the second read hits L1/L2 (a 8192-wide bf16 row is
// 16 KiB), so DRAM traffic is one read of each input and one write of each output.
#pragma once

#include <cstdint>

#include "dtype.h"
#include "kernel_args.h"

namespace reward_engine::cpu {
namespace {  // internal linkage: see dtype.h

template <class V, class T>
inline void normalize_row(const T* s, const T* w, T* y, int64_t n, float inv_rms) {
  const typename V::F scale = V::set1(inv_rms);
  int64_t i = 0;
  for (; i + V::W <= n; i += V::W) {
    typename V::F normed = V::round(V::mul(V::load(s + i), scale), Tag<T>{});
    V::store(y + i, V::mul(normed, V::load(w + i)));
  }
  if (i < n) {
    const int tail = int(n - i);
    typename V::F normed = V::round(V::mul(V::load(s + i, tail), scale), Tag<T>{});
    V::store(y + i, V::mul(normed, V::load(w + i, tail)), tail);
  }
}

inline float inv_rms(float sum_squares, int64_t n, float eps) {
  return 1.0f / __builtin_sqrtf(sum_squares / float(n) + eps);
}

template <class V, class T>
void rms_norm_rows(const NormArgs& a, int64_t begin, int64_t end) {
  const T* w = static_cast<const T*>(a.weight);
  const int64_t n = a.hidden;
  for (int64_t row = begin; row < end; ++row) {
    const T* x = static_cast<const T*>(a.x) + row * a.x_stride;
    T* y = static_cast<T*>(a.out) + row * a.out_stride;
    typename V::F acc0 = V::zero(), acc1 = V::zero();  // two chains hide FMA latency
    int64_t i = 0;
    for (; i + 2 * V::W <= n; i += 2 * V::W) {
      typename V::F v0 = V::load(x + i), v1 = V::load(x + i + V::W);
      acc0 = V::fmadd(v0, v0, acc0);
      acc1 = V::fmadd(v1, v1, acc1);
    }
    for (; i + V::W <= n; i += V::W) {
      typename V::F v = V::load(x + i);
      acc0 = V::fmadd(v, v, acc0);
    }
    if (i < n) {
      typename V::F v = V::load(x + i, int(n - i));
      acc1 = V::fmadd(v, v, acc1);
    }
    normalize_row<V, T>(x, w, y, n, inv_rms(V::sum(V::add(acc0, acc1)), n, a.eps));
  }
}

template <class V, class T>
void fused_add_rms_norm_rows(const NormArgs& a, int64_t begin, int64_t end) {
  const T* w = static_cast<const T*>(a.weight);
  const int64_t n = a.hidden;
  for (int64_t row = begin; row < end; ++row) {
    const T* x = static_cast<const T*>(a.x) + row * a.x_stride;
    T* res = static_cast<T*>(a.residual) + row * a.residual_stride;
    T* y = static_cast<T*>(a.out) + row * a.out_stride;
    typename V::F acc = V::zero();
    int64_t i = 0;
    for (; i + V::W <= n; i += V::W) {
      // the variance is taken over the sum as stored (rounded to T), like HF
      typename V::F s = V::round(V::add(V::load(x + i), V::load(res + i)), Tag<T>{});
      V::store(res + i, s);
      acc = V::fmadd(s, s, acc);
    }
    if (i < n) {
      const int tail = int(n - i);
      typename V::F s =
          V::round(V::add(V::load(x + i, tail), V::load(res + i, tail)), Tag<T>{});
      V::store(res + i, s, tail);
      acc = V::fmadd(s, s, acc);
    }
    normalize_row<V, T>(res, w, y, n, inv_rms(V::sum(acc), n, a.eps));
  }
}

}  // namespace
}  // namespace reward_engine::cpu
