// The int8_gemm inner kernels, one per instruction set, each in its own
// translation unit compiled with that set's flags (see setup.py). All take the
// same arguments (kernel_args.h Int8GemmFn) and produce bit-identical results:
// the integer sums are exact and the epilogue is shared (int8_kernels.h).
#pragma once

#include <cstdint>

#include "kernel_args.h"

namespace reward_engine::cpu {

// Which kernel int8_gemm runs: detected once, lowered by REWARD_ENGINE_INT8_GEMM
// (and by REWARD_ENGINE_CPU_ISA=avx2|scalar).
enum class Int8Isa : int { kScalar = 0, kAvx2 = 1, kAvx512Vnni = 2, kAmx = 3 };

Int8Isa int8_best_isa();
Int8Isa int8_active_isa();
const char* int8_isa_name(Int8Isa isa);
Int8GemmFn int8_gemm_kernel(Int8Isa isa);

void int8_gemm_scalar(const Int8GemmArgs& g, int64_t m0, int64_t m1, int64_t g0, int64_t g1);
#if !defined(REWARD_ENGINE_SCALAR_ONLY)
void int8_gemm_avx2(const Int8GemmArgs& g, int64_t m0, int64_t m1, int64_t g0, int64_t g1);
void int8_gemm_avx512_vnni(const Int8GemmArgs& g, int64_t m0, int64_t m1, int64_t g0,
                           int64_t g1);
void int8_gemm_amx(const Int8GemmArgs& g, int64_t m0, int64_t m1, int64_t g0, int64_t g1);
// Asks Linux for the AMX tile-data state (arch_prctl ARCH_REQ_XCOMP_PERM);
// false when the kernel refuses (AMX then stays unused).
bool amx_request_permission();
#endif

// Rows of A (and of the output) one kernel call covers best, given k: a block of
// A that stays in the L2 cache while the B columns stream past it.
inline int64_t int8_rows_per_block(int64_t k_pad) {
  int64_t rows = (int64_t(1) << 20) / (k_pad > 0 ? k_pad : 1);  // 1 MiB of A
  rows = rows < 32 ? 32 : (rows > 256 ? 256 : rows);
  return rows / 32 * 32;
}

}  // namespace reward_engine::cpu
