// Launchers of the CPU kernels: validate arguments, pick the ISA and dtype
// instantiation, split the work across threads. Pointers are raw addresses
// (tensor.data_ptr() in Python), strides are in elements, `dtype` is a
// DTypeCode. Invalid arguments throw std::invalid_argument (ValueError in
// Python) before any memory is touched.
#pragma once

#include <cstdint>

namespace reward_engine::cpu {

// out[r, :] = rms_norm(x[r, :]) * weight for r < rows.
void rms_norm(uintptr_t out, uintptr_t x, uintptr_t weight, int64_t rows, int64_t hidden,
              int64_t out_stride, int64_t x_stride, double eps, int dtype, int num_threads);

// residual[r, :] <- x[r, :] + residual[r, :]; out[r, :] = rms_norm(residual[r, :]) * weight.
void fused_add_rms_norm(uintptr_t out, uintptr_t x, uintptr_t residual, uintptr_t weight,
                        int64_t rows, int64_t hidden, int64_t out_stride, int64_t x_stride,
                        int64_t residual_stride, double eps, int dtype, int num_threads);

// In-place rotary embedding of q [tokens, q_heads, head_dim] and
// k [tokens, kv_heads, head_dim] (last dim contiguous, any token/head strides)
// with positions (int32 or int64) into cos_sin_cache fp32 [max_position, head_dim].
void rope(uintptr_t q, int64_t q_token_stride, int64_t q_head_stride, int64_t num_q_heads,
          uintptr_t k, int64_t k_token_stride, int64_t k_head_stride, int64_t num_kv_heads,
          uintptr_t positions, bool positions_int64, uintptr_t cos_sin_cache,
          int64_t max_position, int64_t num_tokens, int64_t head_dim, int dtype,
          int num_threads);

// out[r, :inter] = silu(x[r, :inter]) * x[r, inter:2*inter].
void silu_mul(uintptr_t out, uintptr_t x, int64_t rows, int64_t inter, int64_t out_stride,
              int64_t x_stride, int dtype, int num_threads);

}  // namespace reward_engine::cpu
