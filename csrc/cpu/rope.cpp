// Launcher for rope (kernel in rope_kernels.h).
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

}  // namespace

void rope(uintptr_t q, int64_t q_token_stride, int64_t q_head_stride, int64_t num_q_heads,
          uintptr_t k, int64_t k_token_stride, int64_t k_head_stride, int64_t num_kv_heads,
          uintptr_t positions, bool positions_int64, uintptr_t cos_sin_cache,
          int64_t max_position, int64_t num_tokens, int64_t head_dim, int dtype,
          int num_threads) {
  check_dtype(dtype, "rope");
  check(head_dim > 0 && head_dim % 2 == 0, "rope: head_dim must be even and > 0");
  check(num_tokens >= 0 && num_q_heads >= 0 && num_kv_heads >= 0, "rope: negative size");
  if (num_tokens == 0) return;
  check(q != 0 && k != 0 && positions != 0 && cos_sin_cache != 0, "rope: null pointer");
  // Every position is checked before anything is written, so a bad call
  // leaves q and k untouched.
  if (positions_int64) {
    check_positions(reinterpret_cast<const int64_t*>(positions), num_tokens, max_position);
  } else {
    check_positions(reinterpret_cast<const int32_t*>(positions), num_tokens, max_position);
  }
  RopeArgs args{reinterpret_cast<void*>(q), q_token_stride, q_head_stride, num_q_heads,
                reinterpret_cast<void*>(k), k_token_stride, k_head_stride, num_kv_heads,
                reinterpret_cast<const void*>(positions), positions_int64,
                reinterpret_cast<const float*>(cos_sin_cache), head_dim};
  RopeRowsFn fn = active_kernels().rope[dtype];
  const int64_t bytes = num_tokens * (num_q_heads + num_kv_heads) * head_dim * element_size(dtype) * 2;
  parallel_for(num_tokens, threads_for(bytes, num_tokens, num_threads),
               [&](int64_t begin, int64_t end) { fn(args, begin, end); });
}

}  // namespace reward_engine::cpu
