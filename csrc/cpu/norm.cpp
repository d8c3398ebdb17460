// Launchers for rms_norm and fused_add_rms_norm (kernels in norm_kernels.h).
#include <string>

#include "check.h"
#include "isa.h"
#include "ops.h"
#include "thread_pool.h"

namespace reward_engine::cpu {
namespace {

void check_norm_args(const char* op, uintptr_t out, uintptr_t x, uintptr_t weight, int64_t rows,
                     int64_t hidden, int dtype) {
  check_dtype(dtype, op);
  check(rows >= 0, std::string(op) + ": rows must be >= 0");
  check(hidden > 0, std::string(op) + ": hidden size must be > 0");
  check(rows == 0 || (out != 0 && x != 0 && weight != 0), std::string(op) + ": null pointer");
}

void run_rows(NormRowsFn fn, const NormArgs& args, int64_t rows, int num_threads, int dtype,
              int tensors) {
  const int64_t bytes = rows * args.hidden * element_size(dtype) * tensors;
  parallel_for(rows, threads_for(bytes, rows, num_threads),
               [&](int64_t begin, int64_t end) { fn(args, begin, end); });
}

}  // namespace

void rms_norm(uintptr_t out, uintptr_t x, uintptr_t weight, int64_t rows, int64_t hidden,
              int64_t out_stride, int64_t x_stride, double eps, int dtype, int num_threads) {
  check_norm_args("rms_norm", out, x, weight, rows, hidden, dtype);
  NormArgs args{reinterpret_cast<const void*>(x), x_stride, nullptr, 0,
                reinterpret_cast<const void*>(weight), reinterpret_cast<void*>(out), out_stride,
                hidden, float(eps)};
  run_rows(active_kernels().rms_norm[dtype], args, rows, num_threads, dtype, 2);
}

void fused_add_rms_norm(uintptr_t out, uintptr_t x, uintptr_t residual, uintptr_t weight,
                        int64_t rows, int64_t hidden, int64_t out_stride, int64_t x_stride,
                        int64_t residual_stride, double eps, int dtype, int num_threads) {
  check_norm_args("fused_add_rms_norm", out, x, weight, rows, hidden, dtype);
  check(rows == 0 || residual != 0, "fused_add_rms_norm: null residual pointer");
  NormArgs args{reinterpret_cast<const void*>(x), x_stride, reinterpret_cast<void*>(residual),
                residual_stride, reinterpret_cast<const void*>(weight),
                reinterpret_cast<void*>(out), out_stride, hidden, float(eps)};
  run_rows(active_kernels().fused_add_rms_norm[dtype], args, rows, num_threads, dtype, 4);
}

}  // namespace reward_engine::cpu
