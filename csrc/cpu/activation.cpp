// Launcher for silu_mul (kernel in activation_kernels.h).
#include "check.h"
#include "isa.h"
#include "ops.h"
#include "thread_pool.h"

namespace reward_engine::cpu {

void silu_mul(uintptr_t out, uintptr_t x, int64_t rows, int64_t inter, int64_t out_stride,
              int64_t x_stride, int dtype, int num_threads) {
  check_dtype(dtype, "silu_mul");
  check(rows >= 0 && inter > 0, "silu_mul: rows must be >= 0 and the output width > 0");
  if (rows == 0) return;
  check(out != 0 && x != 0, "silu_mul: null pointer");
  SiluMulArgs args{reinterpret_cast<const void*>(x), x_stride, reinterpret_cast<void*>(out),
                   out_stride, inter};
  SiluMulRowsFn fn = active_kernels().silu_mul[dtype];
  const int64_t bytes = rows * inter * element_size(dtype) * 3;
  parallel_for(rows, threads_for(bytes, rows, num_threads),
               [&](int64_t begin, int64_t end) { fn(args, begin, end); });
}

}  // namespace reward_engine::cpu
