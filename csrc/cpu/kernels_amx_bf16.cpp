// The avx512_bf16 kernels, with the bf16 batch-invariant GEMM and bf16 attention (bf16
// or E4M3 caches) on the AMX tile unit.
// Compiled with the avx512_bf16 flags plus -mamx-tile -mamx-bf16 (see setup.py); used
// only after isa.cpp has checked that the CPU has AMX-BF16 and the kernel granted
// this process the tile state.
#include "attention_amx_kernels.h"
#include "gemm_amx_kernels.h"
#include "kernel_args.h"

namespace reward_engine::cpu {

const KernelTable& amx_bf16_kernels() {
  static const KernelTable table = [] {
    KernelTable t = avx512_bf16_kernels();
    t.gemm[kBFloat16] = GemmKernel{&gemm_pack_pairs_avx512, &gemm_compute_amx, kGemmPackedPairs};
    t.paged_attention[kBFloat16] = &paged_attention_units_amx<uint16_t>;
    t.paged_attention_fp8[kBFloat16] = &paged_attention_units_amx<e4m3>;
    return t;
  }();
  return table;
}

}  // namespace reward_engine::cpu
