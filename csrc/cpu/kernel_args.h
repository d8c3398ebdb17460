// Plain argument records passed from the launchers to the ISA-specific kernels.
// Pointers are untyped; the launcher picks the kernel instantiation whose
// element type matches the dtype code. Strides are in elements.
#pragma once

#include <cstdint>

namespace reward_engine::cpu {

struct NormArgs {
  const void* x;
  int64_t x_stride;
  void* residual;  // fused_add_rms_norm only: read, then overwritten with x + residual
  int64_t residual_stride;
  const void* weight;
  void* out;
  int64_t out_stride;
  int64_t hidden;
  float eps;
};

struct RopeArgs {
  void* q;
  int64_t q_token_stride;
  int64_t q_head_stride;
  int64_t num_q_heads;
  void* k;
  int64_t k_token_stride;
  int64_t k_head_stride;
  int64_t num_kv_heads;
  const void* positions;  // int32 or int64, one per token
  bool positions_int64;
  const float* cos_sin_cache;  // [max_position, head_dim]: cos half, then sin half
  int64_t head_dim;
};

struct SiluMulArgs {
  const void* x;  // [rows, 2 * inter]: gate, then up
  int64_t x_stride;
  void* out;  // [rows, inter]
  int64_t out_stride;
  int64_t inter;
};

// Paged KV cache: key_cache/value_cache [num_blocks, block_size, num_kv_heads,
// head_dim], contiguous; token j of a sequence lives in block
// block_tables[seq][j / block_size] at offset j % block_size. The caches hold the
// activation dtype (k_scale = v_scale = 1), or E4M3 codes whose values are
// code * k_scale and code * v_scale.
struct AttentionArgs {
  const void* q;  // [tokens, num_q_heads, head_dim], last dim contiguous
  int64_t q_token_stride;
  int64_t q_head_stride;
  const void* key_cache;
  const void* value_cache;
  int64_t block_size;
  int64_t num_q_heads;
  int64_t num_kv_heads;
  int64_t head_dim;
  const int32_t* block_tables;  // [num_seqs, block_table_stride]
  int64_t block_table_stride;
  void* out;  // [tokens, num_q_heads, head_dim]
  int64_t out_token_stride;
  int64_t out_head_stride;
  float scale;
  int64_t tokens_per_unit;  // the most new tokens any AttentionUnit holds
  float k_scale;
  float v_scale;
};

// Queries [token_begin, token_end) (global token indices) of one sequence, for the
// q heads of one KV head; token_begin sits at absolute position first_pos.
struct AttentionUnit {
  int64_t seq;
  int64_t kv_head;
  int64_t token_begin;
  int64_t token_end;
  int64_t first_pos;
};

// fp8_gemm: A decoded to fp32 [m, k] (contiguous), B E4M3 [n, k] (row stride
// b_stride), lut the 256-entry E4M3 -> fp32 table.
struct Fp8GemmArgs {
  const float* a;
  const uint8_t* b;
  int64_t b_stride;
  const float* lut;
  int64_t m;
  int64_t n;
  int64_t k;
};

// int8_gemm: out [m, n] = (A @ B^T) * a_scale * b_scale + bias, A int8 [m, k]
// (row stride a_stride), B packed as int8_kernels.h describes (with colsum).
struct Int8GemmArgs {
  const int8_t* a;
  int64_t a_stride;
  const int8_t* b;
  const int32_t* colsum;
  int64_t m;
  int64_t n;
  int64_t k;
  int64_t k_pad;
  const float* a_scale;
  bool a_per_token;
  const float* b_scale;
  bool b_per_channel;
  const void* bias;  // [n] in out_dtype, or null
  void* out;
  int64_t out_stride;
  int out_dtype;
  // Write the output with non-temporal stores (kernels that support them): set for
  // outputs far larger than the caches, whose lines would otherwise each be read in
  // before being overwritten, and are evicted before the next op reads them anyway.
  bool stream_out;
};

// batch_invariant_linear: out [m, n] = a [m, k] @ b [n, k]^T + bias [n], every
// tensor in the activation dtype (row strides in elements, unit stride along k
// and n). B is first packed into panels of kGemmPanelCols columns (gemm.cpp).
struct GemmArgs {
  const void* a;
  int64_t a_stride;
  const void* b;
  int64_t b_stride;
  const void* bias;  // or nullptr
  void* out;
  int64_t out_stride;
  int64_t m;
  int64_t n;
  int64_t k;
};

// Layouts of a packed B panel (kGemmPanelCols columns of B, k-major):
//   kGemmPackedF32:   float  [k][kGemmPanelCols]
//   kGemmPackedPairs: uint32 [round_up(k, 32) / 2][kGemmPanelCols], each word the bf16
//                     pair (b[col][2j], b[col][2j + 1]) with the even element low; zero
//                     past k and past n
enum GemmPackedLayout : int { kGemmPackedF32 = 0, kGemmPackedPairs = 1 };
constexpr int64_t kGemmPanelCols = 64;

// Packs panels [p0, p1) of B, panel p covering columns n0 + p * kGemmPanelCols onward,
// into packed + p * (bytes of one panel).
using GemmPackFn = void (*)(const GemmArgs&, int64_t n0, int64_t p0, int64_t p1, void* packed);
// Writes out rows [m0, m1) x the columns of panels [p0, p1) (panels as packed above).
using GemmComputeFn = void (*)(const GemmArgs&, const void* packed, int64_t n0, int64_t m0,
                               int64_t m1, int64_t p0, int64_t p1);
struct GemmKernel {
  GemmPackFn pack;
  GemmComputeFn compute;
  int layout;  // GemmPackedLayout
};

// A kernel processes rows (or tokens) [begin, end); launchers split the range
// across threads.
using NormRowsFn = void (*)(const NormArgs&, int64_t begin, int64_t end);
using RopeRowsFn = void (*)(const RopeArgs&, int64_t begin, int64_t end);
using SiluMulRowsFn = void (*)(const SiluMulArgs&, int64_t begin, int64_t end);
using AttentionFn = void (*)(const AttentionArgs&, const AttentionUnit* units, int64_t begin,
                             int64_t end);
using Fp8GemmPanelFn = void (*)(const Fp8GemmArgs&, int64_t n0, float* c, float* packed_b);
// Rows [m0, m1) of out for the 16-column groups [g0, g1) of the packed B.
using Int8GemmFn = void (*)(const Int8GemmArgs&, int64_t m0, int64_t m1, int64_t g0, int64_t g1);
// out[j] = q(x[j] / scale[j * scale_step]), symmetric int8 (int8_kernels.h).
using Int8QuantizeRowFn = void (*)(int8_t* out, const void* x, const float* scale,
                                   int64_t scale_step, int64_t n);

// FP8 quantization of one row whose elements have the table entry's dtype:
// out[j] = e4m3(x[j] / scale[j * scale_step]).
using Fp8QuantizeRowFn = void (*)(uint8_t* out, const void* x, const float* scale,
                                  int64_t scale_step, int64_t n);
// The largest finite |x[j]| of one row (0 when there is none).
using RowAmaxFn = float (*)(const void* x, int64_t n);
// m[j] = max(m[j], finite |x[j]|) for j < n.
using ColAmaxFn = void (*)(float* m, const void* x, int64_t n);

// One instantiation of every kernel for one ISA, indexed by DTypeCode.
struct KernelTable {
  NormRowsFn rms_norm[3];
  NormRowsFn fused_add_rms_norm[3];
  RopeRowsFn rope[3];
  SiluMulRowsFn silu_mul[3];
  AttentionFn paged_attention[3];
  AttentionFn paged_attention_fp8[3];  // E4M3 caches, by the dtype of q and out
  Fp8GemmPanelFn fp8_gemm_panel;
  Fp8QuantizeRowFn fp8_quantize_row[3];
  RowAmaxFn row_amax[3];
  ColAmaxFn col_amax[3];
  Int8QuantizeRowFn int8_quantize_row[3];
  GemmKernel gemm[3];
};

const KernelTable& scalar_kernels();
const KernelTable& avx2_kernels();
const KernelTable& avx512_kernels();
const KernelTable& avx512_bf16_kernels();
const KernelTable& amx_bf16_kernels();

}  // namespace reward_engine::cpu
