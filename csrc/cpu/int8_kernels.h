// Symmetric INT8 kernels shared by every ISA: quantize one row, the GEMM's
// packed weight layout, and the GEMM epilogue, written once over the vector
// type V of the translation unit that instantiates them. The ISA-specific GEMM
// inner loops live in int8_gemm_<isa>.cpp.
//
// Quantize: q = round_half_even(clamp(x / scale, -127, 127)) with x widened to
// fp32, the division in fp32, NaN -> 0 (bit-identical to the reference in
// kernels/int8.py).
//
// Packed weight (int8_pack_weight): B [n, k] as ceil(n/16) groups of 16 rows;
// each group holds k_pad / 4 rows of 64 bytes, row r = for each of the 16
// columns, its four k values 4r..4r+3 (k_pad = k rounded up to 64, zeros past
// n and k). That is exactly the B operand of AMX TDPBSSD (16 x 64-byte tile
// rows per 64 k) and of AVX512-VNNI VPDPBUSD (one zmm = 16 columns x 4 k).
// colsum[n] = sum_k B[n, k], for kernels that bias the activations to unsigned.
#pragma once

#include <cstdint>

#include "dtype.h"
#include "kernel_args.h"

namespace reward_engine::cpu {

constexpr int64_t kInt8PackN = 16;
constexpr int64_t kInt8PackK = 64;

inline int64_t int8_k_pad(int64_t k) { return (k + kInt8PackK - 1) / kInt8PackK * kInt8PackK; }
inline int64_t int8_n_pad(int64_t n) { return (n + kInt8PackN - 1) / kInt8PackN * kInt8PackN; }

// Byte offset of (column group g, k4 row r) in the packed weight.
inline int64_t int8_packed_offset(int64_t g, int64_t r, int64_t k_pad) {
  return (g * (k_pad / 4) + r) * 64;
}

namespace {  // internal linkage: see dtype.h

// out[j] = q(x[j] / scale[j * scale_step]) (step 0: one scale), V::W lanes at a
// time: x widened to fp32, divided in fp32 (with one scale through V::divide_by,
// which gives the division's quotient), then V::store_int8 (NaN -> 0, clamp, round
// half to even): the same codes on every ISA.
template <class V, class T>
void int8_quantize_row(int8_t* __restrict__ out, const T* __restrict__ x,
                       const float* __restrict__ scale, int64_t scale_step, int64_t n) {
  using F = typename V::F;
  if (scale_step == 0) {
    const F s = V::set1(scale[0]), r = V::set1(1.0f / scale[0]);
    int64_t j = 0;
    for (; j + V::W <= n; j += V::W) V::store_int8(out + j, V::divide_by(V::load(x + j), s, r));
    if (j < n) {
      const int rest = int(n - j);
      V::store_int8(out + j, V::divide_by(V::load(x + j, rest), s, r), rest);
    }
    return;
  }
  int64_t j = 0;
  for (; j + V::W <= n; j += V::W) {
    V::store_int8(out + j, V::div(V::load(x + j), V::load(scale + j)));
  }
  if (j < n) {
    const int rest = int(n - j);
    V::store_int8(out + j, V::div(V::load(x + j, rest), V::load(scale + j, rest)), rest);
  }
}

template <class V, class T>
void int8_quantize_row_of(int8_t* out, const void* x, const float* scale, int64_t scale_step,
                          int64_t n) {
  int8_quantize_row<V>(out, static_cast<const T*>(x), scale, scale_step, n);
}

// out[j] = float(acc[j]) * (sa * b_scale[n0 + j]) + bias[n0 + j], for one output
// row of `count` columns starting at column n0, rounded to T; V::W lanes at a time
// (V is the translation unit's vector type: the same operations in the same order
// as one lane, so every ISA rounds alike). float() of an int32 rounds to nearest even.
// kStream: whole vectors go out with V::stream (out aligned to a vector's bytes).
template <class V, bool kStream, class T>
void int8_epilogue_row(T* __restrict__ out, const int32_t* __restrict__ acc, int64_t count,
                       int64_t n0, float sa, const float* __restrict__ b_scale,
                       bool per_channel, const T* __restrict__ bias) {
  using F = typename V::F;
  const F vsa = V::set1(sa);
  const F shared = V::set1(sa * b_scale[0]);
  int64_t j = 0;
  for (; j + V::W <= count; j += V::W) {
    const F s = per_channel ? V::mul(vsa, V::load(b_scale + n0 + j)) : shared;
    F v = V::mul(V::from_i32(acc + j), s);
    if (bias != nullptr) v = V::add(v, V::load(bias + n0 + j));
    if constexpr (kStream) {
      V::stream(out + j, v);
    } else {
      V::store(out + j, v);
    }
  }
  if (j < count) {
    const int n = int(count - j);
    alignas(64) int32_t tail[64] = {};
    for (int i = 0; i < n; ++i) tail[i] = acc[j + i];
    const F s = per_channel ? V::mul(vsa, V::load(b_scale + n0 + j, n)) : shared;
    F v = V::mul(V::from_i32(tail), s);
    if (bias != nullptr) v = V::add(v, V::load(bias + n0 + j, n));
    V::store(out + j, v, n);
  }
}

template <class V, bool kStream, class T>
void int8_epilogue_row_to(T* out, const int32_t* acc, int64_t count, int64_t n0, float sa,
                          const Int8GemmArgs& g) {
  const T* bias = static_cast<const T*>(g.bias);
  if constexpr (kStream) {
    if (reinterpret_cast<uintptr_t>(out) % (V::W * sizeof(T)) == 0) {
      int8_epilogue_row<V, true>(out, acc, count, n0, sa, g.b_scale, g.b_per_channel, bias);
      return;
    }
  }
  int8_epilogue_row<V, false>(out, acc, count, n0, sa, g.b_scale, g.b_per_channel, bias);
}

// The epilogue of rows [0, rows) of an accumulator tile (row stride acc_stride
// int32) into out[m0 + i, n0 : n0 + count]. kStream: with non-temporal stores where
// a row's columns are aligned (the caller fences before the output is read).
template <class V, bool kStream = false>
void int8_store_tile(const Int8GemmArgs& g, const int32_t* acc, int64_t acc_stride, int64_t m0,
                     int64_t rows, int64_t n0, int64_t count) {
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t m = m0 + i;
    const float sa = g.a_scale[g.a_per_token ? m : 0];
    const int32_t* row = acc + i * acc_stride;
    const int64_t esize = g.out_dtype == kFloat32 ? 4 : 2;
    char* o = static_cast<char*>(g.out) + (m * g.out_stride + n0) * esize;
    if (g.out_dtype == kFloat32) {
      int8_epilogue_row_to<V, kStream>(reinterpret_cast<float*>(o), row, count, n0, sa, g);
    } else if (g.out_dtype == kBFloat16) {
      int8_epilogue_row_to<V, kStream>(reinterpret_cast<bf16*>(o), row, count, n0, sa, g);
    } else {
      int8_epilogue_row_to<V, kStream>(reinterpret_cast<fp16*>(o), row, count, n0, sa, g);
    }
  }
}

}  // namespace
}  // namespace reward_engine::cpu
