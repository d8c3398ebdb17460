// Launcher for paged_prefill_attention (kernel in attention_kernels.h): checks
// the batch metadata, cuts the work into (sequence, KV head, token block)
// units, and hands them to the thread pool, most expensive first.
#include <algorithm>
#include <string>
#include <vector>

#include "check.h"
#include "isa.h"
#include "ops.h"
#include "thread_pool.h"

namespace reward_engine::cpu {
namespace {

// Query rows (tokens x heads of a GQA group) per unit: enough to amortize
// converting each K/V row, small enough that a unit's scratch stays in L2.
constexpr int64_t kRowsPerUnit = 128;

void check_metadata(const int64_t* query_start, const int64_t* context_lens, int64_t num_seqs,
                    int64_t num_tokens, const int32_t* block_tables, int64_t max_blocks,
                    int64_t block_size, int64_t num_blocks) {
  check(query_start[0] == 0 && query_start[num_seqs] == num_tokens,
        "paged_prefill_attention: query_start_loc must start at 0 and end at the token count " +
            std::to_string(num_tokens));
  for (int64_t s = 0; s < num_seqs; ++s) {
    const int64_t q_len = query_start[s + 1] - query_start[s], ctx = context_lens[s];
    const std::string where = "paged_prefill_attention: sequence " + std::to_string(s);
    check(q_len >= 0, where + ": query_start_loc decreases");
    check(ctx >= q_len, where + ": context_len " + std::to_string(ctx) + " < query_len " +
                            std::to_string(q_len));
    check(ctx <= max_blocks * block_size, where + ": context_len " + std::to_string(ctx) +
                                              " exceeds its block table");
    if (q_len == 0) continue;
    for (int64_t b = 0; b < (ctx + block_size - 1) / block_size; ++b) {
      const int32_t block = block_tables[s * max_blocks + b];
      check(block >= 0 && block < num_blocks,
            where + ": block_tables[" + std::to_string(b) + "] = " + std::to_string(block) +
                " is not a block of the cache (" + std::to_string(num_blocks) + " blocks)");
    }
  }
}

}  // namespace

void paged_prefill_attention(uintptr_t out, int64_t out_token_stride, int64_t out_head_stride,
                             uintptr_t q, int64_t q_token_stride, int64_t q_head_stride,
                             int64_t num_tokens, int64_t num_q_heads, uintptr_t key_cache,
                             uintptr_t value_cache, int64_t num_blocks, int64_t block_size,
                             int64_t num_kv_heads, int64_t head_dim, uintptr_t block_tables,
                             int64_t num_seqs, int64_t max_blocks_per_seq,
                             uintptr_t query_start_loc, uintptr_t context_lens, double scale,
                             bool kv_fp8, uintptr_t k_scale, uintptr_t v_scale, int dtype,
                             int num_threads) {
  check_dtype(dtype, "paged_prefill_attention");
  check(!kv_fp8 || (k_scale != 0 && v_scale != 0),
        "paged_prefill_attention: an E4M3 cache needs k_scale and v_scale");
  check(num_kv_heads > 0 && num_q_heads % num_kv_heads == 0,
        "paged_prefill_attention: q heads must be a multiple of kv heads");
  check(head_dim > 0 && block_size > 0 && num_seqs >= 0, "paged_prefill_attention: bad sizes");
  if (num_tokens == 0 || num_seqs == 0) return;
  const auto* query_start = reinterpret_cast<const int64_t*>(query_start_loc);
  const auto* ctx_lens = reinterpret_cast<const int64_t*>(context_lens);
  const auto* tables = reinterpret_cast<const int32_t*>(block_tables);
  check_metadata(query_start, ctx_lens, num_seqs, num_tokens, tables, max_blocks_per_seq,
                 block_size, num_blocks);

  const int64_t group = num_q_heads / num_kv_heads;
  const int64_t tokens_per_unit = std::max<int64_t>(1, kRowsPerUnit / group);
  std::vector<AttentionUnit> units;
  std::vector<double> cost;
  double total_cost = 0;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const int64_t q_len = query_start[s + 1] - query_start[s];
    const int64_t first_pos = ctx_lens[s] - q_len;
    for (int64_t t0 = 0; t0 < q_len; t0 += tokens_per_unit) {
      const int64_t t1 = std::min(q_len, t0 + tokens_per_unit);
      for (int64_t g = 0; g < num_kv_heads; ++g) {
        units.push_back({s, g, query_start[s] + t0, query_start[s] + t1, first_pos + t0});
        cost.push_back(double(t1 - t0) * double(first_pos + t1));
        total_cost += cost.back();
      }
    }
  }
  // Longest first: with dynamic claiming this balances causal (triangular) work.
  std::vector<int64_t> order(units.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = int64_t(i);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t x, int64_t y) { return cost[x] > cost[y]; });
  std::vector<AttentionUnit> sorted;
  sorted.reserve(units.size());
  for (int64_t i : order) sorted.push_back(units[i]);

  AttentionArgs args{reinterpret_cast<const void*>(q), q_token_stride, q_head_stride,
                     reinterpret_cast<const void*>(key_cache),
                     reinterpret_cast<const void*>(value_cache), block_size, num_q_heads,
                     num_kv_heads, head_dim, tables, max_blocks_per_seq,
                     reinterpret_cast<void*>(out), out_token_stride, out_head_stride,
                     float(scale), tokens_per_unit,
                     kv_fp8 ? *reinterpret_cast<const float*>(k_scale) : 1.0f,
                     kv_fp8 ? *reinterpret_cast<const float*>(v_scale) : 1.0f};
  const KernelTable& kernels = active_kernels();
  AttentionFn fn = kv_fp8 ? kernels.paged_attention_fp8[dtype] : kernels.paged_attention[dtype];
  const int64_t n = int64_t(sorted.size());
  // About 4 * group * head_dim flops per (token, key) pair; a thread pays off
  // from roughly a millisecond of work.
  const double flops = total_cost * double(group) * double(head_dim) * 4.0;
  const int threads = int(std::max<double>(1.0, std::min<double>(num_threads, flops / 2e7)));
  parallel_for(n, threads, [&](int64_t begin, int64_t end) { fn(args, sorted.data(), begin, end); },
               n);
}

}  // namespace reward_engine::cpu
