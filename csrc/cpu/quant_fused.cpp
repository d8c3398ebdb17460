// Launchers for the quantized-output forms of rms_norm, fused_add_rms_norm and
// silu_mul: the input of a W8A8 GEMM, quantized by the kernel that produces it.
// Each thread runs the activation-dtype kernel on a few rows into a small
// scratch buffer (cache resident) and quantizes those rows from there, so
// memory sees one pass: read x, write 1 byte per output element.
//
// Output codes: E4M3 (qtype kQuantFp8) or symmetric int8 (kQuantInt8), with a
// static per-tensor fp32 scale read from scale[0], or (dynamic) one scale per
// row computed from the row's largest finite |y| and written to scale[row].
// The codes are exactly fp8_quantize / int8_quantize of the activation-dtype
// result y with that scale.
#include <algorithm>
#include <string>
#include <vector>

#include "check.h"
#include "fp8.h"
#include "isa.h"
#include "ops.h"
#include "thread_pool.h"

namespace reward_engine::cpu {
namespace {

// Rows per block: as many as fit 16 KiB of scratch (at least one, at most 8), so the
// block is still in L1 when it is read back twice (amax, then quantize).
constexpr int64_t kScratchBytes = 16 * 1024;
constexpr int64_t kMaxRowsPerBlock = 8;

float dynamic_scale(float amax, float qmax) {
  const float s = amax > 0.0f ? amax / qmax : 1.0f;
  return std::max(s, 1.17549435e-38f);  // never below the smallest normal fp32
}

// run(rows_begin, rows_count, scratch) writes rows_count rows of width `width`
// (element type of `dtype`) into scratch; they are then quantized to out.
template <class Run>
void quantized_rows(const char* op, uintptr_t out, int64_t out_stride, uintptr_t scale,
                    int qtype, bool dynamic, int64_t rows, int64_t width, int dtype,
                    int64_t bytes, int num_threads, const Run& run) {
  check(scale != 0 && out != 0, std::string(op) + ": null pointer");
  check(qtype == kQuantFp8 || qtype == kQuantInt8,
        std::string(op) + ": qtype must be 0 (fp8) or 1 (int8)");
  float* s = reinterpret_cast<float*>(scale);
  auto* o = reinterpret_cast<char*>(out);
  const int64_t esize = element_size(dtype);
  const KernelTable& kernels = active_kernels();
  const Fp8QuantizeRowFn fp8_row = kernels.fp8_quantize_row[dtype];
  const Int8QuantizeRowFn int8_row = kernels.int8_quantize_row[dtype];
  const RowAmaxFn row_amax = kernels.row_amax[dtype];
  const float qmax = qtype == kQuantFp8 ? kFp8E4M3Max : 127.0f;
  parallel_for(rows, threads_for(bytes, rows, num_threads), [&](int64_t begin, int64_t end) {
    const int64_t block = std::clamp<int64_t>(kScratchBytes / (width * esize), 1, kMaxRowsPerBlock);
    std::vector<unsigned char> scratch(size_t(block * width * esize));
    for (int64_t r0 = begin; r0 < end; r0 += block) {
      const int64_t n = std::min(block, end - r0);
      run(r0, n, scratch.data());
      for (int64_t i = 0; i < n; ++i) {
        const unsigned char* y = scratch.data() + i * width * esize;
        const float* row_scale = s;
        if (dynamic) {
          s[r0 + i] = dynamic_scale(row_amax(y, width), qmax);
          row_scale = s + r0 + i;
        }
        char* dst = o + (r0 + i) * out_stride;
        if (qtype == kQuantFp8) {
          fp8_row(reinterpret_cast<uint8_t*>(dst), y, row_scale, 0, width);
        } else {
          int8_row(reinterpret_cast<int8_t*>(dst), y, row_scale, 0, width);
        }
      }
    }
  });
}

const char* offset(uintptr_t p, int64_t elements, int dtype) {
  return reinterpret_cast<const char*>(p) + elements * element_size(dtype);
}

}  // namespace

void rms_norm_quant(uintptr_t out, uintptr_t x, uintptr_t weight, int64_t rows, int64_t hidden,
                    int64_t out_stride, int64_t x_stride, double eps, uintptr_t scale, int qtype,
                    bool dynamic, int dtype, int num_threads) {
  check_dtype(dtype, "rms_norm");
  check(rows >= 0 && hidden > 0, "rms_norm: rows must be >= 0 and hidden > 0");
  if (rows == 0) return;
  check(x != 0 && weight != 0, "rms_norm: null pointer");
  const NormRowsFn fn = active_kernels().rms_norm[dtype];
  quantized_rows("rms_norm", out, out_stride, scale, qtype, dynamic, rows, hidden, dtype,
                 rows * hidden * (element_size(dtype) + 1), num_threads,
                 [&](int64_t r0, int64_t n, void* scratch) {
                   NormArgs a{offset(x, r0 * x_stride, dtype), x_stride, nullptr, 0,
                              reinterpret_cast<const void*>(weight), scratch, hidden, hidden,
                              float(eps)};
                   fn(a, 0, n);
                 });
}

void fused_add_rms_norm_quant(uintptr_t out, uintptr_t x, uintptr_t residual, uintptr_t weight,
                              int64_t rows, int64_t hidden, int64_t out_stride, int64_t x_stride,
                              int64_t residual_stride, double eps, uintptr_t scale, int qtype,
                              bool dynamic, int dtype, int num_threads) {
  check_dtype(dtype, "fused_add_rms_norm");
  check(rows >= 0 && hidden > 0, "fused_add_rms_norm: rows must be >= 0 and hidden > 0");
  if (rows == 0) return;
  check(x != 0 && residual != 0 && weight != 0, "fused_add_rms_norm: null pointer");
  const NormRowsFn fn = active_kernels().fused_add_rms_norm[dtype];
  quantized_rows("fused_add_rms_norm", out, out_stride, scale, qtype, dynamic, rows, hidden,
                 dtype, rows * hidden * (3 * element_size(dtype) + 1), num_threads,
                 [&](int64_t r0, int64_t n, void* scratch) {
                   NormArgs a{offset(x, r0 * x_stride, dtype), x_stride,
                              const_cast<char*>(offset(residual, r0 * residual_stride, dtype)),
                              residual_stride, reinterpret_cast<const void*>(weight), scratch,
                              hidden, hidden, float(eps)};
                   fn(a, 0, n);
                 });
}

void silu_mul_quant(uintptr_t out, uintptr_t x, int64_t rows, int64_t inter, int64_t out_stride,
                    int64_t x_stride, uintptr_t scale, int qtype, bool dynamic, int dtype,
                    int num_threads) {
  check_dtype(dtype, "silu_mul");
  check(rows >= 0 && inter > 0, "silu_mul: rows must be >= 0 and the output width > 0");
  if (rows == 0) return;
  check(x != 0, "silu_mul: null pointer");
  const SiluMulRowsFn fn = active_kernels().silu_mul[dtype];
  quantized_rows("silu_mul", out, out_stride, scale, qtype, dynamic, rows, inter, dtype,
                 rows * inter * (2 * element_size(dtype) + 1), num_threads,
                 [&](int64_t r0, int64_t n, void* scratch) {
                   SiluMulArgs a{offset(x, r0 * x_stride, dtype), x_stride, scratch, inter,
                                 inter};
                   fn(a, 0, n);
                 });
}

void rms_norm_fp8(uintptr_t out, uintptr_t x, uintptr_t weight, int64_t rows, int64_t hidden,
                  int64_t out_stride, int64_t x_stride, double eps, uintptr_t scale, int dtype,
                  int num_threads) {
  rms_norm_quant(out, x, weight, rows, hidden, out_stride, x_stride, eps, scale, kQuantFp8, false,
                 dtype, num_threads);
}

void fused_add_rms_norm_fp8(uintptr_t out, uintptr_t x, uintptr_t residual, uintptr_t weight,
                            int64_t rows, int64_t hidden, int64_t out_stride, int64_t x_stride,
                            int64_t residual_stride, double eps, uintptr_t scale, int dtype,
                            int num_threads) {
  fused_add_rms_norm_quant(out, x, residual, weight, rows, hidden, out_stride, x_stride,
                           residual_stride, eps, scale, kQuantFp8, false, dtype, num_threads);
}

void silu_mul_fp8(uintptr_t out, uintptr_t x, int64_t rows, int64_t inter, int64_t out_stride,
                  int64_t x_stride, uintptr_t scale, int dtype, int num_threads) {
  silu_mul_quant(out, x, rows, inter, out_stride, x_stride, scale, kQuantFp8, false, dtype,
                 num_threads);
}

}  // namespace reward_engine::cpu
