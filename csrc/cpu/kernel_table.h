// Builds the KernelTable for one vector type. Included only by the per-ISA
// translation units kernels_<isa>.cpp, each compiled with its own -m flags.
#pragma once

#include "activation_kernels.h"
#include "attention_kernels.h"
#include "fp8_kernels.h"
#include "gemm_kernels.h"
#include "int8_kernels.h"
#include "kernel_args.h"
#include "norm_kernels.h"
#include "rope_kernels.h"

namespace reward_engine::cpu {
namespace {

// Entries are indexed by DTypeCode: float32, bfloat16, float16.
template <class V>
constexpr KernelTable make_kernel_table() {
  return KernelTable{
      {&rms_norm_rows<V, float>, &rms_norm_rows<V, bf16>, &rms_norm_rows<V, fp16>},
      {&fused_add_rms_norm_rows<V, float>, &fused_add_rms_norm_rows<V, bf16>,
       &fused_add_rms_norm_rows<V, fp16>},
      {&rope_rows<V, float>, &rope_rows<V, bf16>, &rope_rows<V, fp16>},
      {&silu_mul_rows<V, float>, &silu_mul_rows<V, bf16>, &silu_mul_rows<V, fp16>},
      {&paged_attention_units<V, float>, &paged_attention_units<V, bf16>,
       &paged_attention_units<V, fp16>},
      {&paged_attention_units<V, float, e4m3>, &paged_attention_units<V, bf16, e4m3>,
       &paged_attention_units<V, fp16, e4m3>},
      &fp8_gemm_panel<V>,
      // the FP8 row kernels are plain loops: each ISA's compiler flags vectorize them
      {&quantize_row_of<float>, &quantize_row_of<bf16>, &quantize_row_of<fp16>},
      {&row_amax_of<float>, &row_amax_of<bf16>, &row_amax_of<fp16>},
      {&col_amax_of<float>, &col_amax_of<bf16>, &col_amax_of<fp16>},
      {&int8_quantize_row_of<V, float>, &int8_quantize_row_of<V, bf16>,
       &int8_quantize_row_of<V, fp16>},
      {gemm_f32_kernel<V, float>(), gemm_f32_kernel<V, bf16>(), gemm_f32_kernel<V, fp16>()},
  };
}

}  // namespace
}  // namespace reward_engine::cpu
