// Run-time choice of instruction set for the CPU kernels.
#pragma once

#include <string>
#include <vector>

#include "kernel_args.h"

namespace reward_engine::cpu {

// Ordered: each level includes the ones below it. avx512_bf16 is avx512 plus
// VDPBF16PS, used by the bf16 attention and GEMM kernels; amx_bf16 adds the AMX
// tile unit (TDPBF16PS), used by the bf16 batch-invariant GEMM.
enum class Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3, kAmxBf16 = 4 };

// Best ISA this CPU (and OS) supports, detected once.
Isa best_isa();

// best_isa(), lowered by REWARD_ENGINE_CPU_ISA=scalar|avx2|avx512|avx512_bf16|amx_bf16
// when set.
// Asking for more than the CPU supports gives best_isa(); an unknown value
// throws std::invalid_argument. Read on every call so tests can switch paths.
Isa active_isa();

const char* isa_name(Isa isa);
std::vector<std::string> supported_isas();

// Kernels for active_isa().
const KernelTable& active_kernels();

}  // namespace reward_engine::cpu
