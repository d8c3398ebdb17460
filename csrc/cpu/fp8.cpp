// Launchers for fp8_quantize and fp8_gemm (kernels in fp8_kernels.h).
#include <algorithm>
#include <array>
#include <string>
#include <vector>

#include "check.h"
#include "fp8_kernels.h"
#include "isa.h"
#include "ops.h"
#include "thread_pool.h"

namespace reward_engine::cpu {
namespace {

const float* e4m3_table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int i = 0; i < 256; ++i) t[i] = e4m3_to_float(uint8_t(i));
    return t;
  }();
  return table.data();
}

// Dynamic scale from an amax: amax / 448, 1 when there is no finite nonzero
// value, never below the smallest normal fp32 (so x / scale stays finite).
float scale_from_amax(float amax) {
  const float s = amax > 0.0f ? amax / kFp8E4M3Max : 1.0f;
  return std::max(s, 1.17549435e-38f);
}

// x: rows of element type `dtype`, row stride x_stride elements.
void quantize(uint8_t* out, const char* x, int dtype, int64_t rows, int64_t cols,
              int64_t out_stride, int64_t x_stride, float* scale, int granularity, bool dynamic,
              int threads) {
  const KernelTable& kernels = active_kernels();
  const int64_t esize = element_size(dtype);
  auto row = [&](int64_t r) { return x + r * x_stride * esize; };
  if (dynamic && granularity != kFp8PerChannel) {
    std::vector<float> amax(size_t(rows), 0.0f);
    const RowAmaxFn row_amax = kernels.row_amax[dtype];
    parallel_for(rows, threads, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) amax[r] = row_amax(row(r), cols);
    });
    if (granularity == kFp8PerToken) {
      for (int64_t r = 0; r < rows; ++r) scale[r] = scale_from_amax(amax[r]);
    } else {
      scale[0] = scale_from_amax(*std::max_element(amax.begin(), amax.end()));
    }
  } else if (dynamic) {
    // columns in chunks of 64, each chunk reduced over all rows by one thread
    const int64_t chunks = (cols + 63) / 64;
    const ColAmaxFn col_amax = kernels.col_amax[dtype];
    parallel_for(chunks, threads, [&](int64_t b, int64_t e) {
      for (int64_t ch = b; ch < e; ++ch) {
        const int64_t c0 = ch * 64, n = std::min<int64_t>(64, cols - c0);
        float m[64] = {};
        for (int64_t r = 0; r < rows; ++r) col_amax(m, row(r) + c0 * esize, n);
        for (int64_t j = 0; j < n; ++j) scale[c0 + j] = scale_from_amax(m[j]);
      }
    });
  }
  const Fp8QuantizeRowFn quantize_row = kernels.fp8_quantize_row[dtype];
  parallel_for(rows, threads, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const float* s = granularity == kFp8PerToken ? scale + r : scale;
      quantize_row(out + r * out_stride, row(r), s, granularity == kFp8PerChannel ? 1 : 0, cols);
    }
  });
}

// out[m, n0 + j] = c[m, j] * (a_scale[m] * b_scale[n]) + bias[n], rounded to T.
template <class T>
void gemm_epilogue(uintptr_t out, int64_t out_stride, const float* c, int64_t m, int64_t n0,
                   int64_t width, const float* a_scale, bool per_token, const float* b_scale,
                   bool per_channel, uintptr_t bias) {
  T* o = reinterpret_cast<T*>(out);
  const T* bias_t = reinterpret_cast<const T*>(bias);
  for (int64_t i = 0; i < m; ++i) {
    const float sa = a_scale[per_token ? i : 0];
    for (int64_t j = 0; j < width; ++j) {
      const int64_t n = n0 + j;
      float v = c[i * kGemmPanelN + j] * (sa * b_scale[per_channel ? n : 0]);
      if (bias_t != nullptr) v = v + to_float(bias_t[n]);
      store_float(o + i * out_stride + n, v);
    }
  }
}

}  // namespace

void fp8_quantize(uintptr_t out, uintptr_t x, int64_t rows, int64_t cols, int64_t out_stride,
                  int64_t x_stride, uintptr_t scale, int granularity, bool dynamic, int dtype,
                  int num_threads) {
  check_dtype(dtype, "fp8_quantize");
  check(rows >= 0 && cols >= 0, "fp8_quantize: rows and cols must be >= 0");
  check(granularity >= kFp8PerTensor && granularity <= kFp8PerChannel,
        "fp8_quantize: granularity must be 0 (tensor), 1 (token) or 2 (channel)");
  check(scale != 0, "fp8_quantize: null scale pointer");
  if (rows == 0 || cols == 0) {
    // an empty tensor still gets its dynamic per-tensor / per-channel scales
    if (dynamic && granularity == kFp8PerTensor) reinterpret_cast<float*>(scale)[0] = 1.0f;
    if (dynamic && granularity == kFp8PerChannel) {
      std::fill_n(reinterpret_cast<float*>(scale), cols, 1.0f);
    }
    return;
  }
  check(out != 0 && x != 0, "fp8_quantize: null pointer");
  const int threads = threads_for(rows * cols * (element_size(dtype) + 1), rows, num_threads);
  quantize(reinterpret_cast<uint8_t*>(out), reinterpret_cast<const char*>(x), dtype, rows, cols,
           out_stride, x_stride, reinterpret_cast<float*>(scale), granularity, dynamic, threads);
}

void fp8_gemm(uintptr_t out, int64_t out_stride, uintptr_t a, int64_t a_stride, uintptr_t b,
              int64_t b_stride, int64_t m, int64_t n, int64_t k, uintptr_t a_scale,
              bool a_per_token, uintptr_t b_scale, bool b_per_channel, uintptr_t bias,
              int out_dtype, int num_threads) {
  check_dtype(out_dtype, "fp8_gemm");
  check(m >= 0 && n >= 0 && k >= 0, "fp8_gemm: sizes must be >= 0");
  if (m == 0 || n == 0) return;
  check(out != 0 && a_scale != 0 && b_scale != 0 && (k == 0 || (a != 0 && b != 0)),
        "fp8_gemm: null pointer");
  const float* lut = e4m3_table();
  const int threads = std::max(1, num_threads);
  // A is decoded once (fp32 [m, k]); every B panel reuses it
  std::vector<float> a32(size_t(m * k));
  const auto* a8 = reinterpret_cast<const uint8_t*>(a);
  parallel_for(m, threads_for(m * k * 5, m, threads), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t j = 0; j < k; ++j) a32[r * k + j] = lut[a8[r * a_stride + j]];
    }
  });
  const Fp8GemmArgs args{a32.data(), reinterpret_cast<const uint8_t*>(b), b_stride, lut, m, n, k};
  const Fp8GemmPanelFn panel = active_kernels().fp8_gemm_panel;
  const auto* sa = reinterpret_cast<const float*>(a_scale);
  const auto* sb = reinterpret_cast<const float*>(b_scale);
  const int64_t panels = (n + kGemmPanelN - 1) / kGemmPanelN;
  parallel_for(
      panels, int(std::min<int64_t>(threads, panels)),
      [&](int64_t p0, int64_t p1) {
        std::vector<float> c(size_t(m * kGemmPanelN)), packed(size_t(kGemmBlockK * kGemmPanelN));
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t n0 = p * kGemmPanelN, width = std::min(kGemmPanelN, n - n0);
          std::fill(c.begin(), c.end(), 0.0f);
          panel(args, n0, c.data(), packed.data());
          auto epilogue = out_dtype == kFloat32    ? &gemm_epilogue<float>
                          : out_dtype == kBFloat16 ? &gemm_epilogue<bf16>
                                                   : &gemm_epilogue<fp16>;
          epilogue(out, out_stride, c.data(), m, n0, width, sa, a_per_token, sb, b_per_channel,
                   bias);
        }
      },
      panels);
}

}  // namespace reward_engine::cpu
