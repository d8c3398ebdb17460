// Launchers of the CUDA kernels. Pointers are device addresses
// (tensor.data_ptr()), strides are in elements, `dtype` is the code used by
// the CPU module (0 float32, 1 bfloat16, 2 float16), `stream` is a
// cudaStream_t passed as an integer (torch.cuda.current_stream().cuda_stream).
// No CUDA headers here, so the binding compiles with the host compiler alone.
#pragma once

#include <cstdint>

namespace reward_engine::cuda {

void rms_norm(uintptr_t out, uintptr_t x, uintptr_t weight, int64_t rows, int64_t hidden,
              int64_t out_stride, int64_t x_stride, double eps, int dtype, uintptr_t stream);

void fused_add_rms_norm(uintptr_t out, uintptr_t x, uintptr_t residual, uintptr_t weight,
                        int64_t rows, int64_t hidden, int64_t out_stride, int64_t x_stride,
                        int64_t residual_stride, double eps, int dtype, uintptr_t stream);

// The ops below mirror csrc/cpu/ops.h argument for argument, except that the
// last argument is the stream instead of num_threads.

// E4M3 output (uint8 codes) with the static per-tensor fp32 scale at `scale`.
void rms_norm_fp8(uintptr_t out, uintptr_t x, uintptr_t weight, int64_t rows, int64_t hidden,
                  int64_t out_stride, int64_t x_stride, double eps, uintptr_t scale, int dtype,
                  uintptr_t stream);
void fused_add_rms_norm_fp8(uintptr_t out, uintptr_t x, uintptr_t residual, uintptr_t weight,
                            int64_t rows, int64_t hidden, int64_t out_stride, int64_t x_stride,
                            int64_t residual_stride, double eps, uintptr_t scale, int dtype,
                            uintptr_t stream);

void silu_mul(uintptr_t out, uintptr_t x, int64_t rows, int64_t inter, int64_t out_stride,
              int64_t x_stride, int dtype, uintptr_t stream);
void silu_mul_fp8(uintptr_t out, uintptr_t x, int64_t rows, int64_t inter, int64_t out_stride,
                  int64_t x_stride, uintptr_t scale, int dtype, uintptr_t stream);

// Positions and slots are not range-checked (the Python cuda backend does it).
void rope(uintptr_t q, int64_t q_token_stride, int64_t q_head_stride, int64_t num_q_heads,
          uintptr_t k, int64_t k_token_stride, int64_t k_head_stride, int64_t num_kv_heads,
          uintptr_t positions, bool positions_int64, uintptr_t cos_sin_cache,
          int64_t max_position, int64_t num_tokens, int64_t head_dim, int dtype,
          uintptr_t stream);
void rope_and_cache(uintptr_t q, int64_t q_token_stride, int64_t q_head_stride,
                    int64_t num_q_heads, uintptr_t k, int64_t k_token_stride,
                    int64_t k_head_stride, int64_t num_kv_heads, uintptr_t v,
                    int64_t v_token_stride, int64_t v_head_stride, uintptr_t positions,
                    bool positions_int64, uintptr_t cos_sin_cache, int64_t max_position,
                    uintptr_t key_cache, uintptr_t value_cache, int64_t num_slots,
                    uintptr_t slot_mapping, bool slots_int64, int64_t num_tokens,
                    int64_t head_dim, bool kv_fp8, uintptr_t k_scale, uintptr_t v_scale,
                    int dtype, uintptr_t stream);

// query_start_loc and context_lens are int64 device arrays, block_tables int32.
// kv_fp8: E4M3 caches with fp32 scales k_scale / v_scale (device pointers, read by
// the kernels), as in rope_and_cache.
void paged_prefill_attention(uintptr_t out, int64_t out_token_stride, int64_t out_head_stride,
                             uintptr_t q, int64_t q_token_stride, int64_t q_head_stride,
                             int64_t num_tokens, int64_t num_q_heads, uintptr_t key_cache,
                             uintptr_t value_cache, int64_t num_blocks, int64_t block_size,
                             int64_t num_kv_heads, int64_t head_dim, uintptr_t block_tables,
                             int64_t num_seqs, int64_t max_blocks_per_seq,
                             uintptr_t query_start_loc, uintptr_t context_lens, double scale,
                             bool kv_fp8, uintptr_t k_scale, uintptr_t v_scale, int dtype,
                             uintptr_t stream);

void fp8_quantize(uintptr_t out, uintptr_t x, int64_t rows, int64_t cols, int64_t out_stride,
                  int64_t x_stride, uintptr_t scale, int granularity, bool dynamic, int dtype,
                  uintptr_t stream);

// Only in builds with cuBLASLt (REWARD_ENGINE_HAVE_CUBLASLT).
void fp8_gemm(uintptr_t out, int64_t out_stride, uintptr_t a, int64_t a_stride, uintptr_t b,
              int64_t b_stride, int64_t m, int64_t n, int64_t k, uintptr_t a_scale,
              bool a_per_token, uintptr_t b_scale, bool b_per_channel, uintptr_t bias,
              int out_dtype, uintptr_t stream);

}  // namespace reward_engine::cuda
