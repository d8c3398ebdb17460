// Launchers for rope and rope_and_cache (rope_kernels.cuh). Positions and
// slots are not range-checked here (that needs a device-to-host copy): the
// Python cuda backend checks them with tensor ops before the launch.
#include <algorithm>

#include "ops.h"
#include "rope_kernels.cuh"

namespace reward_engine::cuda {
namespace {

void launch(const RopeParams& p, int64_t num_tokens, int dtype, uintptr_t stream) {
  check_dtype(dtype, "rope");
  check(num_tokens >= 0 && num_tokens < (int64_t(1) << 31), "rope: tokens must be in [0, 2^31)");
  check(p.head_dim > 0 && p.head_dim % 2 == 0, "rope: head_dim must be even and > 0");
  if (num_tokens == 0) return;
  check(p.q && p.k && p.positions && p.cos_sin_cache, "rope: null pointer");
  const int64_t pairs = (p.num_q_heads + p.num_kv_heads) * p.head_dim / 2;
  const int threads = int(std::min<int64_t>(512, (pairs + 31) / 32 * 32));
  auto s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_dtype(dtype, [&](auto tag) {
    rope_kernel<decltype(tag)><<<unsigned(num_tokens), threads, 0, s>>>(p);
  });
  check_launch("rope");
}

}  // namespace

void rope(uintptr_t q, int64_t q_token_stride, int64_t q_head_stride, int64_t num_q_heads,
          uintptr_t k, int64_t k_token_stride, int64_t k_head_stride, int64_t num_kv_heads,
          uintptr_t positions, bool positions_int64, uintptr_t cos_sin_cache,
          int64_t /*max_position*/, int64_t num_tokens, int64_t head_dim, int dtype,
          uintptr_t stream) {
  RopeParams p{reinterpret_cast<void*>(q), q_token_stride, q_head_stride, num_q_heads,
               reinterpret_cast<void*>(k), k_token_stride, k_head_stride, num_kv_heads,
               nullptr, 0, 0, reinterpret_cast<const void*>(positions), positions_int64,
               reinterpret_cast<const float*>(cos_sin_cache), head_dim, nullptr, nullptr,
               nullptr, false, false, nullptr, nullptr};
  launch(p, num_tokens, dtype, stream);
}

void rope_and_cache(uintptr_t q, int64_t q_token_stride, int64_t q_head_stride,
                    int64_t num_q_heads, uintptr_t k, int64_t k_token_stride,
                    int64_t k_head_stride, int64_t num_kv_heads, uintptr_t v,
                    int64_t v_token_stride, int64_t v_head_stride, uintptr_t positions,
                    bool positions_int64, uintptr_t cos_sin_cache, int64_t /*max_position*/,
                    uintptr_t key_cache, uintptr_t value_cache, int64_t /*num_slots*/,
                    uintptr_t slot_mapping, bool slots_int64, int64_t num_tokens,
                    int64_t head_dim, bool kv_fp8, uintptr_t k_scale, uintptr_t v_scale,
                    int dtype, uintptr_t stream) {
  check(num_tokens == 0 || (v && key_cache && value_cache && slot_mapping),
        "rope_and_cache: null pointer");
  check(!kv_fp8 || (k_scale && v_scale), "rope_and_cache: an E4M3 cache needs k_scale and v_scale");
  RopeParams p{reinterpret_cast<void*>(q), q_token_stride, q_head_stride, num_q_heads,
               reinterpret_cast<void*>(k), k_token_stride, k_head_stride, num_kv_heads,
               reinterpret_cast<const void*>(v), v_token_stride, v_head_stride,
               reinterpret_cast<const void*>(positions), positions_int64,
               reinterpret_cast<const float*>(cos_sin_cache), head_dim,
               reinterpret_cast<void*>(key_cache), reinterpret_cast<void*>(value_cache),
               reinterpret_cast<const void*>(slot_mapping), slots_int64, kv_fp8,
               reinterpret_cast<const float*>(k_scale), reinterpret_cast<const float*>(v_scale)};
  launch(p, num_tokens, dtype, stream);
}

}  // namespace reward_engine::cuda
