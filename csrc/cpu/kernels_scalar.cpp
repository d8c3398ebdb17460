// Instantiates every CPU kernel for one ISA. Compiled with: no ISA flags: runs on any x86-64.
// Nothing outside this file calls into it except through the table, and only
// after isa.cpp has checked at run time that the CPU supports the ISA.
#include "vec_scalar.h"
#include "kernel_table.h"

namespace reward_engine::cpu {

const KernelTable& scalar_kernels() {
  static constexpr KernelTable table = make_kernel_table<VecScalar>();
  return table;
}

}  // namespace reward_engine::cpu
