// Launchers of the CPU kernels: validate arguments, pick the ISA and dtype
// instantiation, split the work across threads. Pointers are raw addresses
// (tensor.data_ptr() in Python), strides are in elements, `dtype` is a
// DTypeCode. Invalid arguments throw std::invalid_argument (ValueError in
// Python) before any memory is touched.
#pragma once

#include <cstdint>
#include <string>

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

// rope(...) on q and k, then k (rotated) and v [tokens, kv_heads, head_dim] are
// written to key_cache / value_cache [num_blocks, block_size, kv_heads, head_dim]
// (contiguous) at slot_mapping[t] = block * block_size + offset; negative slots
// are skipped. Every slot is checked before anything is written. kv_fp8: the
// caches hold E4M3 codes of k / *k_scale and v / *v_scale (fp32 scalars;
// exactly fp8_quantize of the activation-dtype rows), else the activation dtype.
void rope_and_cache(uintptr_t q, int64_t q_token_stride, int64_t q_head_stride,
                    int64_t num_q_heads, uintptr_t k, int64_t k_token_stride,
                    int64_t k_head_stride, int64_t num_kv_heads, uintptr_t v,
                    int64_t v_token_stride, int64_t v_head_stride, uintptr_t positions,
                    bool positions_int64, uintptr_t cos_sin_cache, int64_t max_position,
                    uintptr_t key_cache, uintptr_t value_cache, int64_t num_slots,
                    uintptr_t slot_mapping, bool slots_int64, int64_t num_tokens,
                    int64_t head_dim, bool kv_fp8, uintptr_t k_scale, uintptr_t v_scale,
                    int dtype, int num_threads);

// Causal attention of the packed new tokens of num_seqs sequences over their
// paged KV cache. Sequence s owns q rows [query_start_loc[s], query_start_loc[s+1])
// (int64), has context_lens[s] (int64) tokens in the cache including the new
// ones, which sit at absolute positions context_len - query_len .. context_len - 1.
// kv_fp8: the caches hold E4M3 codes; keys are code * *k_scale, values code * *v_scale.
void paged_prefill_attention(uintptr_t out, int64_t out_token_stride, int64_t out_head_stride,
                             uintptr_t q, int64_t q_token_stride, int64_t q_head_stride,
                             int64_t num_tokens, int64_t num_q_heads, uintptr_t key_cache,
                             uintptr_t value_cache, int64_t num_blocks, int64_t block_size,
                             int64_t num_kv_heads, int64_t head_dim, uintptr_t block_tables,
                             int64_t num_seqs, int64_t max_blocks_per_seq,
                             uintptr_t query_start_loc, uintptr_t context_lens, double scale,
                             bool kv_fp8, uintptr_t k_scale, uintptr_t v_scale, int dtype,
                             int num_threads);

// FP8 E4M3 quantization of x [rows, cols] into out (uint8 codes) with fp32
// scales: granularity kFp8PerTensor (scale[0]), kFp8PerToken (scale[rows]) or
// kFp8PerChannel (scale[cols]). dynamic: the scales are computed (largest
// finite |x| / 448) and written to `scale`; otherwise they are read from it.
enum Fp8Granularity : int { kFp8PerTensor = 0, kFp8PerToken = 1, kFp8PerChannel = 2 };
void fp8_quantize(uintptr_t out, uintptr_t x, int64_t rows, int64_t cols, int64_t out_stride,
                  int64_t x_stride, uintptr_t scale, int granularity, bool dynamic, int dtype,
                  int num_threads);

// out [m, n] (out_dtype) = (A @ B^T) * a_scale * b_scale + bias with A [m, k] and
// B [n, k] E4M3 codes (unit stride along k), fp32 accumulation, fp32 scales
// (a: one or one per row; b: one or one per column of out), bias [n] in
// out_dtype or 0 for none.
void fp8_gemm(uintptr_t out, int64_t out_stride, uintptr_t a, int64_t a_stride, uintptr_t b,
              int64_t b_stride, int64_t m, int64_t n, int64_t k, uintptr_t a_scale,
              bool a_per_token, uintptr_t b_scale, bool b_per_channel, uintptr_t bias,
              int out_dtype, int num_threads);

// Quantized-output forms (quant_fused.cpp): the same results in the activation
// dtype, then quantized to E4M3 (qtype kQuantFp8, uint8 codes) or symmetric
// int8 (kQuantInt8) with the static per-tensor scale at `scale` or, when
// `dynamic`, one scale per row written to scale[row] (largest finite |y| / qmax).
enum QuantType : int { kQuantFp8 = 0, kQuantInt8 = 1 };
void rms_norm_quant(uintptr_t out, uintptr_t x, uintptr_t weight, int64_t rows, int64_t hidden,
                    int64_t out_stride, int64_t x_stride, double eps, uintptr_t scale, int qtype,
                    bool dynamic, int dtype, int num_threads);
void fused_add_rms_norm_quant(uintptr_t out, uintptr_t x, uintptr_t residual, uintptr_t weight,
                              int64_t rows, int64_t hidden, int64_t out_stride, int64_t x_stride,
                              int64_t residual_stride, double eps, uintptr_t scale, int qtype,
                              bool dynamic, int dtype, int num_threads);
void silu_mul_quant(uintptr_t out, uintptr_t x, int64_t rows, int64_t inter, int64_t out_stride,
                    int64_t x_stride, uintptr_t scale, int qtype, bool dynamic, int dtype,
                    int num_threads);

// Symmetric int8 quantization of x [rows, cols] into out (int8 codes, row stride
// out_stride) with fp32 scales: granularity 0 (scale[0]) or 1 (scale[rows]);
// dynamic: computed (largest finite |x| / 127) and written, else read.
void int8_quantize(uintptr_t out, uintptr_t x, int64_t rows, int64_t cols, int64_t out_stride,
                   int64_t x_stride, uintptr_t scale, int granularity, bool dynamic, int dtype,
                   int num_threads);

// B [n, k] int8 (row stride b_stride) into the packed layout of int8_kernels.h
// (ceil(n/16) * ceil(k/64) * 1024 bytes) and colsum [ceil(n/16) * 16] int32.
void int8_pack_weight(uintptr_t packed, uintptr_t colsum, uintptr_t b, int64_t n, int64_t k,
                      int64_t b_stride);

// out [m, n] (out_dtype) = float(A @ B^T) * (a_scale * b_scale) + bias with A [m, k]
// int8 (unit stride along k), B packed by int8_pack_weight; scales and bias as
// in fp8_gemm. The kernel follows int8_gemm_isa().
void int8_gemm(uintptr_t out, int64_t out_stride, uintptr_t a, int64_t a_stride, uintptr_t b,
               uintptr_t colsum, int64_t m, int64_t n, int64_t k, uintptr_t a_scale,
               bool a_per_token, uintptr_t b_scale, bool b_per_channel, uintptr_t bias,
               int out_dtype, int num_threads);
std::string int8_gemm_isa();

// out [m, n] = a [m, k] @ b [n, k]^T + bias [n] (bias 0: none), every tensor in
// `dtype`, fp32 accumulation rounded once. Batch-invariant: row i of out depends on
// row i of a, b and bias only, bit for bit, whatever m is, where row i sits and how
// many threads run (the summation order per element is fixed; gemm_kernels.h).
void batch_invariant_linear(uintptr_t out, int64_t out_stride, uintptr_t a, int64_t a_stride,
                            uintptr_t b, int64_t b_stride, uintptr_t bias, int64_t m, int64_t n,
                            int64_t k, int dtype, int num_threads);

// FP8 output forms: the same results in the activation dtype, then quantized
// to E4M3 codes (uint8, row stride out_stride) with the static per-tensor
// fp32 scale at `scale` (exactly fp8_quantize of the activation-dtype output).
void rms_norm_fp8(uintptr_t out, uintptr_t x, uintptr_t weight, int64_t rows, int64_t hidden,
                  int64_t out_stride, int64_t x_stride, double eps, uintptr_t scale, int dtype,
                  int num_threads);
void fused_add_rms_norm_fp8(uintptr_t out, uintptr_t x, uintptr_t residual, uintptr_t weight,
                            int64_t rows, int64_t hidden, int64_t out_stride, int64_t x_stride,
                            int64_t residual_stride, double eps, uintptr_t scale, int dtype,
                            int num_threads);
void silu_mul_fp8(uintptr_t out, uintptr_t x, int64_t rows, int64_t inter, int64_t out_stride,
                  int64_t x_stride, uintptr_t scale, int dtype, int num_threads);

}  // namespace reward_engine::cpu
