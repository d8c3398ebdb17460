// Launcher for rope (kernel in rope_kernels.h).
#include <cstring>
#include <string>

#include "check.h"
#include "isa.h"
#include "ops.h"
#include "thread_pool.h"

namespace reward_engine::cpu {
namespace {

template <class Index>
void check_positions(const Index* positions, int64_t num_tokens, int64_t max_position) {
  for (int64_t t = 0; t < num_tokens; ++t) {
    if (positions[t] < 0 || positions[t] >= max_position) {
      throw std::out_of_range("rope: positions[" + std::to_string(t) + "] = " +
                              std::to_string(positions[t]) +
                              " is outside the cos/sin cache [0, " +
                              std::to_string(max_position) + ")");
    }
  }
}

// Checks every argument (positions included, before anything is written, so a
// bad call leaves q and k untouched) and returns the kernel's arguments.
RopeArgs checked_rope_args(uintptr_t q, int64_t q_token_stride, int64_t q_head_stride,
                           int64_t num_q_heads, uintptr_t k, int64_t k_token_stride,
                           int64_t k_head_stride, int64_t num_kv_heads, uintptr_t positions,
                           bool positions_int64, uintptr_t cos_sin_cache, int64_t max_position,
                           int64_t num_tokens, int64_t head_dim, int dtype, const char* op) {
  check_dtype(dtype, op);
  check(head_dim > 0 && head_dim % 2 == 0, std::string(op) + ": head_dim must be even and > 0");
  check(num_tokens >= 0 && num_q_heads >= 0 && num_kv_heads >= 0,
        std::string(op) + ": negative size");
  if (num_tokens > 0) {
    check(q != 0 && k != 0 && positions != 0 && cos_sin_cache != 0,
          std::string(op) + ": null pointer");
    if (positions_int64) {
      check_positions(reinterpret_cast<const int64_t*>(positions), num_tokens, max_position);
    } else {
      check_positions(reinterpret_cast<const int32_t*>(positions), num_tokens, max_position);
    }
  }
  return RopeArgs{reinterpret_cast<void*>(q), q_token_stride, q_head_stride, num_q_heads,
                  reinterpret_cast<void*>(k), k_token_stride, k_head_stride, num_kv_heads,
                  reinterpret_cast<const void*>(positions), positions_int64,
                  reinterpret_cast<const float*>(cos_sin_cache), head_dim};
}

}  // namespace

void rope(uintptr_t q, int64_t q_token_stride, int64_t q_head_stride, int64_t num_q_heads,
          uintptr_t k, int64_t k_token_stride, int64_t k_head_stride, int64_t num_kv_heads,
          uintptr_t positions, bool positions_int64, uintptr_t cos_sin_cache,
          int64_t max_position, int64_t num_tokens, int64_t head_dim, int dtype,
          int num_threads) {
  const RopeArgs args = checked_rope_args(q, q_token_stride, q_head_stride, num_q_heads, k,
                                          k_token_stride, k_head_stride, num_kv_heads, positions,
                                          positions_int64, cos_sin_cache, max_position,
                                          num_tokens, head_dim, dtype, "rope");
  if (num_tokens == 0) return;
  RopeRowsFn fn = active_kernels().rope[dtype];
  const int64_t bytes = num_tokens * (num_q_heads + num_kv_heads) * head_dim * element_size(dtype) * 2;
  parallel_for(num_tokens, threads_for(bytes, num_tokens, num_threads),
               [&](int64_t begin, int64_t end) { fn(args, begin, end); });
}

}  // namespace reward_engine::cpu

namespace reward_engine::cpu {

void rope_and_cache(uintptr_t q, int64_t q_token_stride, int64_t q_head_stride,
                    int64_t num_q_heads, uintptr_t k, int64_t k_token_stride,
                    int64_t k_head_stride, int64_t num_kv_heads, uintptr_t v,
                    int64_t v_token_stride, int64_t v_head_stride, uintptr_t positions,
                    bool positions_int64, uintptr_t cos_sin_cache, int64_t max_position,
                    uintptr_t key_cache, uintptr_t value_cache, int64_t num_slots,
                    uintptr_t slot_mapping, bool slots_int64, int64_t num_tokens,
                    int64_t head_dim, bool kv_fp8, uintptr_t k_scale, uintptr_t v_scale,
                    int dtype, int num_threads) {
  const RopeArgs args = checked_rope_args(q, q_token_stride, q_head_stride, num_q_heads, k,
                                          k_token_stride, k_head_stride, num_kv_heads, positions,
                                          positions_int64, cos_sin_cache, max_position,
                                          num_tokens, head_dim, dtype, "rope_and_cache");
  if (num_tokens <= 0) return;
  check(v != 0 && key_cache != 0 && value_cache != 0 && slot_mapping != 0,
        "rope_and_cache: null pointer");
  check(!kv_fp8 || (k_scale != 0 && v_scale != 0),
        "rope_and_cache: an E4M3 cache needs k_scale and v_scale");
  auto slot_of = [&](int64_t t) {
    return slots_int64 ? reinterpret_cast<const int64_t*>(slot_mapping)[t]
                       : int64_t(reinterpret_cast<const int32_t*>(slot_mapping)[t]);
  };
  for (int64_t t = 0; t < num_tokens; ++t) {
    if (slot_of(t) >= num_slots) {
      throw std::out_of_range("rope_and_cache: slot_mapping[" + std::to_string(t) + "] = " +
                              std::to_string(slot_of(t)) + " is outside the cache's " +
                              std::to_string(num_slots) + " slots");
    }
  }
  const int64_t elem = element_size(dtype);
  const int64_t cache_elem = kv_fp8 ? 1 : elem;
  const int64_t slot_elems = num_kv_heads * head_dim;
  const KernelTable& kernels = active_kernels();
  RopeRowsFn rope_fn = kernels.rope[dtype];
  // An E4M3 cache row is fp8_quantize(row, scale) with the per-tensor scale: the same
  // row kernel as fp8_quantize, so the bytes equal the reference's.
  const Fp8QuantizeRowFn quantize_row = kernels.fp8_quantize_row[dtype];
  const float* scales[2] = {reinterpret_cast<const float*>(k_scale),
                            reinterpret_cast<const float*>(v_scale)};
  auto store_row = [&](char* dst, const char* src, int which) {
    if (kv_fp8) {
      quantize_row(reinterpret_cast<uint8_t*>(dst), src, scales[which], 0, head_dim);
    } else {
      std::memcpy(dst, src, size_t(head_dim * elem));
    }
  };
  // One pass: each chunk of tokens is rotated, then its k and v rows are copied
  // (or quantized) into the cache while they are still in this core's cache.
  auto rotate_and_store = [&](int64_t begin, int64_t end) {
    rope_fn(args, begin, end);
    auto* kc = reinterpret_cast<char*>(key_cache);
    auto* vc = reinterpret_cast<char*>(value_cache);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t slot = slot_of(t);
      if (slot < 0) continue;
      for (int64_t h = 0; h < num_kv_heads; ++h) {
        const int64_t dst = (slot * slot_elems + h * head_dim) * cache_elem;
        const int64_t ks = (t * k_token_stride + h * k_head_stride) * elem;
        const int64_t vs = (t * v_token_stride + h * v_head_stride) * elem;
        store_row(kc + dst, reinterpret_cast<const char*>(k) + ks, 0);
        store_row(vc + dst, reinterpret_cast<const char*>(v) + vs, 1);
      }
    }
  };
  constexpr int64_t kTokensPerChunk = 32;  // q, k, v rows of a chunk stay in L2
  const int64_t bytes = num_tokens * (num_q_heads + 3 * num_kv_heads) * head_dim * elem * 2;
  parallel_for(num_tokens, threads_for(bytes, num_tokens, num_threads), rotate_and_store,
               (num_tokens + kTokensPerChunk - 1) / kTokensPerChunk);
}

}  // namespace reward_engine::cpu
