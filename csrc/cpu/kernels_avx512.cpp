// Instantiates every CPU kernel for one ISA. Compiled with: -mavx512f -mavx512bw -mavx512vl -mavx512dq (see setup.py).
// Nothing outside this file calls into it except through the table, and only
// after isa.cpp has checked at run time that the CPU supports the ISA.
#include "vec_avx512.h"
#include "kernel_table.h"

namespace reward_engine::cpu {

const KernelTable& avx512_kernels() {
  static constexpr KernelTable table = make_kernel_table<VecAVX512>();
  return table;
}

}  // namespace reward_engine::cpu
