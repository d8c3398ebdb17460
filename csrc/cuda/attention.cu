// Launcher for paged_prefill_attention: the tensor-core kernel
// (attention_mma_kernels.cuh) where it applies, else the scalar one
// (attention_kernels.cuh).
#include "attention_kernels.cuh"
#include "attention_mma_kernels.cuh"
#include "ops.h"

namespace reward_engine::cuda {
namespace {

// kernel<<<grid, threads, smem>>>(p), raising the dynamic shared-memory limit
// first where the kernel needs more than the default 48 KiB.
template <class Kernel>
void launch_attention(Kernel kernel, dim3 grid, int threads, size_t smem, cudaStream_t stream,
                      const AttentionParams& p) {
  if (smem > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) {
      throw std::runtime_error(std::string("paged_prefill_attention: ") + std::to_string(smem) +
                               " bytes of shared memory: " + cudaGetErrorString(err));
    }
  }
  kernel<<<grid, threads, smem, stream>>>(p);
}

template <class T, bool kFp8>
void launch_mma(const AttentionParams& p, int64_t num_tokens, int64_t num_seqs,
                cudaStream_t stream) {
  using namespace mma_attention;
  const dim3 grid(unsigned((num_tokens + kRows - 1) / kRows), unsigned(p.num_q_heads),
                  unsigned(num_seqs));
  const size_t smem = smem_bytes(p.head_dim);
  if (p.head_dim == 64) {
    launch_attention(&paged_attention_mma_kernel<T, 64, kFp8>, grid, kThreads, smem, stream, p);
  } else {
    launch_attention(&paged_attention_mma_kernel<T, 128, kFp8>, grid, kThreads, smem, stream, p);
  }
}

template <class T>
void launch_mma(const AttentionParams& p, int64_t num_tokens, int64_t num_seqs,
                cudaStream_t stream) {
  if (p.kv_fp8) {
    launch_mma<T, true>(p, num_tokens, num_seqs, stream);
  } else {
    launch_mma<T, false>(p, num_tokens, num_seqs, stream);
  }
}

}  // namespace

void paged_prefill_attention(uintptr_t out, int64_t out_token_stride, int64_t out_head_stride,
                             uintptr_t q, int64_t q_token_stride, int64_t q_head_stride,
                             int64_t num_tokens, int64_t num_q_heads, uintptr_t key_cache,
                             uintptr_t value_cache, int64_t /*num_blocks*/, int64_t block_size,
                             int64_t num_kv_heads, int64_t head_dim, uintptr_t block_tables,
                             int64_t num_seqs, int64_t max_blocks_per_seq,
                             uintptr_t query_start_loc, uintptr_t context_lens, double scale,
                             bool kv_fp8, uintptr_t k_scale, uintptr_t v_scale, int dtype,
                             uintptr_t stream) {
  const char* op = "paged_prefill_attention";
  check_dtype(dtype, op);
  check(!kv_fp8 || (k_scale && v_scale),
        "paged_prefill_attention: an E4M3 cache needs k_scale and v_scale");
  check(num_q_heads > 0 && num_kv_heads > 0 && num_q_heads % num_kv_heads == 0,
        "paged_prefill_attention: q heads must be a positive multiple of kv heads");
  check(head_dim > 0 && head_dim <= kMaxHeadDim,
        "paged_prefill_attention: the cuda kernel takes head_dim in [1, 256]");
  check(block_size > 0 && num_seqs >= 0 && num_seqs < 65536 && max_blocks_per_seq >= 0,
        "paged_prefill_attention: bad block size or sequence count (< 65536)");
  check(num_tokens >= 0, "paged_prefill_attention: num_tokens must be >= 0");
  if (num_tokens == 0 || num_seqs == 0) return;
  AttentionParams p{reinterpret_cast<void*>(out), out_token_stride, out_head_stride,
                    reinterpret_cast<const void*>(q), q_token_stride, q_head_stride,
                    reinterpret_cast<const void*>(key_cache),
                    reinterpret_cast<const void*>(value_cache), block_size, num_q_heads,
                    num_kv_heads, head_dim, reinterpret_cast<const int32_t*>(block_tables),
                    max_blocks_per_seq, reinterpret_cast<const int64_t*>(query_start_loc),
                    reinterpret_cast<const int64_t*>(context_lens), float(scale), kv_fp8,
                    reinterpret_cast<const float*>(k_scale),
                    reinterpret_cast<const float*>(v_scale)};
  // Grids span the whole batch's token count: no sequence has more new tokens
  // than that, and tiles past a sequence's own query length exit at once (this
  // avoids reading the lengths on the host).
  auto s = reinterpret_cast<cudaStream_t>(stream);
  if (mma_attention::supports(p, dtype)) {
    if (dtype == 1) {
      launch_mma<__nv_bfloat16>(p, num_tokens, num_seqs, s);
    } else {
      launch_mma<__half>(p, num_tokens, num_seqs, s);
    }
    check_launch(op);
    return;
  }
  const dim3 grid(unsigned((num_tokens + kTileQ - 1) / kTileQ), unsigned(num_q_heads),
                  unsigned(num_seqs));
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (kv_fp8) {
      launch_attention(&paged_attention_kernel<T, uint8_t>, grid, kAttnThreads,
                       attention_smem_bytes(head_dim), s, p);
    } else {
      launch_attention(&paged_attention_kernel<T, T>, grid, kAttnThreads,
                       attention_smem_bytes(head_dim), s, p);
    }
  });
  check_launch(op);
}

}  // namespace reward_engine::cuda
