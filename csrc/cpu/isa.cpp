#include "isa.h"

#include <cstdlib>
#include <cstring>
#include <stdexcept>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "int8_gemm.h"  // amx_request_permission

namespace reward_engine::cpu {
namespace {

constexpr Isa kAllIsas[] = {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Bf16,
                           Isa::kAmxBf16};

// AMX-TILE and AMX-BF16 in CPUID, the OS saving the tile state (XCR0 bits 17-18), and
// the kernel's permission to use it (asked once per process; int8_gemm shares it).
bool amx_bf16_usable() {
#if !defined(REWARD_ENGINE_SCALAR_ONLY) && defined(__linux__) && defined(__x86_64__)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  if (!(edx & (1u << 24)) || !(edx & (1u << 22))) return false;  // AMX-TILE, AMX-BF16
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (lo & (3u << 17)) == (3u << 17) && amx_request_permission();
#else
  return false;
#endif
}

Isa detect() {
#if !defined(REWARD_ENGINE_SCALAR_ONLY) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  // __builtin_cpu_supports also checks that the OS saves the YMM/ZMM state.
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("fma") && __builtin_cpu_supports("avx2")) {
    if (!__builtin_cpu_supports("avx512bf16")) return Isa::kAvx512;
    return amx_bf16_usable() ? Isa::kAmxBf16 : Isa::kAvx512Bf16;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c")) {
    return Isa::kAvx2;
  }
#endif
  return Isa::kScalar;
}

}  // namespace

Isa best_isa() {
  static const Isa best = detect();
  return best;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAmxBf16:
      return "amx_bf16";
    case Isa::kAvx512Bf16:
      return "avx512_bf16";
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "scalar";
  }
}

Isa active_isa() {
  const Isa best = best_isa();
  const char* forced = std::getenv("REWARD_ENGINE_CPU_ISA");
  if (forced == nullptr || forced[0] == '\0') return best;
  for (Isa isa : kAllIsas) {
    if (std::strcmp(forced, isa_name(isa)) == 0) return isa < best ? isa : best;
  }
  throw std::invalid_argument(std::string("REWARD_ENGINE_CPU_ISA='") + forced +
                              "' is not one of scalar, avx2, avx512, avx512_bf16, amx_bf16");
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> names;
  for (Isa isa : kAllIsas) {
    if (isa <= best_isa()) names.emplace_back(isa_name(isa));
  }
  return names;
}

const KernelTable& active_kernels() {
#ifdef REWARD_ENGINE_SCALAR_ONLY  // not x86: setup.py builds only kernels_scalar.cpp
  (void)active_isa();
  return scalar_kernels();
#else
  switch (active_isa()) {
    case Isa::kAmxBf16:
      return amx_bf16_kernels();
    case Isa::kAvx512Bf16:
      return avx512_bf16_kernels();
    case Isa::kAvx512:
      return avx512_kernels();
    case Isa::kAvx2:
      return avx2_kernels();
    default:
      return scalar_kernels();
  }
#endif
}

}  // namespace reward_engine::cpu
