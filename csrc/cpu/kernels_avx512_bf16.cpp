// The avx512 kernels, with bf16 attention (bf16 or E4M3 caches) and the bf16
// batch-invariant GEMM on VDPBF16PS. Compiled with the avx512 flags plus -mavx512bf16
// (see setup.py); used only after isa.cpp has checked at run time that the CPU
// supports AVX512-BF16.
#include "attention_bf16_kernels.h"
#include "gemm_bf16_kernels.h"
#include "kernel_args.h"

namespace reward_engine::cpu {

const KernelTable& avx512_bf16_kernels() {
  static const KernelTable table = [] {
    KernelTable t = avx512_kernels();
    t.paged_attention[kBFloat16] = &paged_attention_units_bf16dp<uint16_t>;
    t.paged_attention_fp8[kBFloat16] = &paged_attention_units_bf16dp<e4m3>;
    t.gemm[kBFloat16] = GemmKernel{&gemm_pack_pairs_avx512, &gemm_compute_bf16dp, kGemmPackedPairs};
    return t;
  }();
  return table;
}

}  // namespace reward_engine::cpu
