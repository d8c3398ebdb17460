// Launchers for the FP8-output forms of rms_norm, fused_add_rms_norm and
// silu_mul. Each thread runs the activation-dtype kernel on a few rows into a
// small scratch buffer (cache resident) and quantizes those rows to E4M3 with
// a static per-tensor scale, so memory sees one pass: read x, write 1 byte per
// output element. The output is exactly fp8_quantize(y, scale) of the
// activation-dtype result y.
#include <string>
#include <vector>

#include "check.h"
#include "fp8_kernels.h"
#include "isa.h"
#include "ops.h"
#include "thread_pool.h"

namespace reward_engine::cpu {
namespace {

constexpr int64_t kRowsPerBlock = 8;

// run(rows_begin, rows_count, scratch) writes rows_count rows of width `width`
// (element type of `dtype`) into scratch; they are then quantized to out.
template <class Run>
void quantized_rows(const char* op, uintptr_t out, int64_t out_stride, uintptr_t scale,
                    int64_t rows, int64_t width, int dtype, int64_t bytes, int num_threads,
                    const Run& run) {
  check(scale != 0 && out != 0, std::string(op) + ": null pointer");
  const float* s = reinterpret_cast<const float*>(scale);
  auto* o = reinterpret_cast<uint8_t*>(out);
  const int64_t esize = element_size(dtype);
  const Fp8QuantizeRowFn quantize_row = active_kernels().fp8_quantize_row[dtype];
  parallel_for(rows, threads_for(bytes, rows, num_threads), [&](int64_t begin, int64_t end) {
    std::vector<unsigned char> scratch(size_t(kRowsPerBlock * width * esize));
    for (int64_t r0 = begin; r0 < end; r0 += kRowsPerBlock) {
      const int64_t n = std::min(kRowsPerBlock, end - r0);
      run(r0, n, scratch.data());
      for (int64_t i = 0; i < n; ++i) {
        quantize_row(o + (r0 + i) * out_stride, scratch.data() + i * width * esize, s, 0, width);
      }
    }
  });
}

const char* offset(uintptr_t p, int64_t elements, int dtype) {
  return reinterpret_cast<const char*>(p) + elements * element_size(dtype);
}

}  // namespace

void rms_norm_fp8(uintptr_t out, uintptr_t x, uintptr_t weight, int64_t rows, int64_t hidden,
                  int64_t out_stride, int64_t x_stride, double eps, uintptr_t scale, int dtype,
                  int num_threads) {
  check_dtype(dtype, "rms_norm");
  check(rows >= 0 && hidden > 0, "rms_norm: rows must be >= 0 and hidden > 0");
  if (rows == 0) return;
  check(x != 0 && weight != 0, "rms_norm: null pointer");
  const NormRowsFn fn = active_kernels().rms_norm[dtype];
  quantized_rows("rms_norm", out, out_stride, scale, rows, hidden, dtype,
                 rows * hidden * (element_size(dtype) + 1), num_threads,
                 [&](int64_t r0, int64_t n, void* scratch) {
                   NormArgs a{offset(x, r0 * x_stride, dtype), x_stride, nullptr, 0,
                              reinterpret_cast<const void*>(weight), scratch, hidden, hidden,
                              float(eps)};
                   fn(a, 0, n);
                 });
}

void fused_add_rms_norm_fp8(uintptr_t out, uintptr_t x, uintptr_t residual, uintptr_t weight,
                            int64_t rows, int64_t hidden, int64_t out_stride, int64_t x_stride,
                            int64_t residual_stride, double eps, uintptr_t scale, int dtype,
                            int num_threads) {
  check_dtype(dtype, "fused_add_rms_norm");
  check(rows >= 0 && hidden > 0, "fused_add_rms_norm: rows must be >= 0 and hidden > 0");
  if (rows == 0) return;
  check(x != 0 && residual != 0 && weight != 0, "fused_add_rms_norm: null pointer");
  const NormRowsFn fn = active_kernels().fused_add_rms_norm[dtype];
  quantized_rows("fused_add_rms_norm", out, out_stride, scale, rows, hidden, dtype,
                 rows * hidden * (3 * element_size(dtype) + 1), num_threads,
                 [&](int64_t r0, int64_t n, void* scratch) {
                   NormArgs a{offset(x, r0 * x_stride, dtype), x_stride,
                              const_cast<char*>(offset(residual, r0 * residual_stride, dtype)),
                              residual_stride, reinterpret_cast<const void*>(weight), scratch,
                              hidden, hidden, float(eps)};
                   fn(a, 0, n);
                 });
}

void silu_mul_fp8(uintptr_t out, uintptr_t x, int64_t rows, int64_t inter, int64_t out_stride,
                  int64_t x_stride, uintptr_t scale, int dtype, int num_threads) {
  check_dtype(dtype, "silu_mul");
  check(rows >= 0 && inter > 0, "silu_mul: rows must be >= 0 and the output width > 0");
  if (rows == 0) return;
  check(x != 0, "silu_mul: null pointer");
  const SiluMulRowsFn fn = active_kernels().silu_mul[dtype];
  quantized_rows("silu_mul", out, out_stride, scale, rows, inter, dtype,
                 rows * inter * (2 * element_size(dtype) + 1), num_threads,
                 [&](int64_t r0, int64_t n, void* scratch) {
                   SiluMulArgs a{offset(x, r0 * x_stride, dtype), x_stride, scratch, inter,
                                 inter};
                   fn(a, 0, n);
                 });
}

}  // namespace reward_engine::cpu
