// Launchers for int8_quantize, int8_pack_weight and int8_gemm (kernels in
// int8_kernels.h and int8_gemm_<isa>.cpp), and the choice of GEMM kernel.
#include <cpuid.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "check.h"
#include "int8_gemm.h"
#include "int8_kernels.h"
#include "isa.h"
#include "ops.h"
#include "thread_pool.h"

namespace reward_engine::cpu {
namespace {

constexpr Int8Isa kAllInt8Isas[] = {Int8Isa::kScalar, Int8Isa::kAvx2, Int8Isa::kAvx512Vnni,
                                    Int8Isa::kAmx};

#if !defined(REWARD_ENGINE_SCALAR_ONLY) && (defined(__x86_64__) || defined(__i386__))
uint64_t xcr0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}
#endif

Int8Isa detect() {
  Int8Isa best = Int8Isa::kScalar;
#if !defined(REWARD_ENGINE_SCALAR_ONLY) && (defined(__x86_64__) || defined(__i386__))
  const Isa vector = best_isa();
  if (vector >= Isa::kAvx2) best = Int8Isa::kAvx2;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (vector >= Isa::kAvx512 && __get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    // Each level includes the ones below (REWARD_ENGINE_INT8_GEMM may pick any of
    // them), so AMX counts only beside AVX512-VNNI, as on every CPU that has it.
    if (c & (1u << 11)) {  // AVX512_VNNI
      best = Int8Isa::kAvx512Vnni;
      const bool amx = (d & (1u << 24)) && (d & (1u << 25));  // AMX-TILE, AMX-INT8
      // the OS must save the tile state (XCR0 bits 17-18) and grant its use
      if (amx && (xcr0() & (3u << 17)) == (3u << 17) && amx_request_permission()) {
        best = Int8Isa::kAmx;
      }
    }
  }
#endif
  return best;
}

void check_gemm(bool ok, const std::string& what) { check(ok, "int8_gemm: " + what); }

// Outputs larger than one core's L2 go out with non-temporal stores (kernels that
// have them: AMX): the next op could not find them in L2 anyway, and ordinary stores
// would first read every line in. On the AMX Xeon of bench/results this halves the
// epilogue of a [3785, 16384] output and is no slower down to [32, 16384].
bool stream_output(int64_t bytes) {
  static const int64_t l2 = [] {
    const long size = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return size > 0 ? int64_t(size) : int64_t(1) << 20;
  }();
  return bytes > l2;
}

}  // namespace

Int8Isa int8_best_isa() {
  static const Int8Isa best = detect();
  return best;
}

const char* int8_isa_name(Int8Isa isa) {
  switch (isa) {
    case Int8Isa::kAmx:
      return "amx";
    case Int8Isa::kAvx512Vnni:
      return "avx512_vnni";
    case Int8Isa::kAvx2:
      return "avx2";
    default:
      return "scalar";
  }
}

Int8Isa int8_active_isa() {
  Int8Isa isa = int8_best_isa();
  // the vector ISA cap applies too: avx2 or scalar code only
  const Isa vector = active_isa();
  if (vector == Isa::kScalar) isa = Int8Isa::kScalar;
  if (vector == Isa::kAvx2 && isa > Int8Isa::kAvx2) isa = Int8Isa::kAvx2;
  const char* forced = std::getenv("REWARD_ENGINE_INT8_GEMM");
  if (forced == nullptr || forced[0] == '\0') return isa;
  for (Int8Isa level : kAllInt8Isas) {
    if (std::strcmp(forced, int8_isa_name(level)) == 0) return level < isa ? level : isa;
  }
  throw std::invalid_argument(std::string("REWARD_ENGINE_INT8_GEMM='") + forced +
                              "' is not one of scalar, avx2, avx512_vnni, amx");
}

Int8GemmFn int8_gemm_kernel(Int8Isa isa) {
  switch (isa) {
#if !defined(REWARD_ENGINE_SCALAR_ONLY)
    case Int8Isa::kAmx:
      return &int8_gemm_amx;
    case Int8Isa::kAvx512Vnni:
      return &int8_gemm_avx512_vnni;
    case Int8Isa::kAvx2:
      return &int8_gemm_avx2;
#endif
    default:
      return &int8_gemm_scalar;
  }
}

std::string int8_gemm_isa() { return int8_isa_name(int8_active_isa()); }

void int8_quantize(uintptr_t out, uintptr_t x, int64_t rows, int64_t cols, int64_t out_stride,
                   int64_t x_stride, uintptr_t scale, int granularity, bool dynamic, int dtype,
                   int num_threads) {
  check_dtype(dtype, "int8_quantize");
  check(rows >= 0 && cols >= 0, "int8_quantize: rows and cols must be >= 0");
  check(granularity == 0 || granularity == 1,
        "int8_quantize: granularity must be 0 (tensor) or 1 (token)");
  check(scale != 0 || (rows == 0 && granularity == 1), "int8_quantize: null scale pointer");
  float* s = reinterpret_cast<float*>(scale);
  auto from_amax = [](float amax) {
    return std::max(amax > 0 ? amax / 127.0f : 1.0f, 1.17549435e-38f);
  };
  if (rows == 0 || cols == 0) {
    if (dynamic && granularity == 0) s[0] = 1.0f;
    if (dynamic && granularity == 1) std::fill_n(s, rows, 1.0f);
    return;
  }
  check(out != 0 && x != 0, "int8_quantize: null pointer");
  const KernelTable& kernels = active_kernels();
  const int64_t esize = element_size(dtype);
  const char* xb = reinterpret_cast<const char*>(x);
  auto row = [&](int64_t r) { return xb + r * x_stride * esize; };
  const int threads = threads_for(rows * cols * (esize + 1), rows, num_threads);
  if (dynamic) {
    std::vector<float> amax(size_t(rows), 0.0f);
    const RowAmaxFn row_amax = kernels.row_amax[dtype];
    parallel_for(rows, threads, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) amax[r] = row_amax(row(r), cols);
    });
    if (granularity == 1) {
      for (int64_t r = 0; r < rows; ++r) s[r] = from_amax(amax[r]);
    } else {
      s[0] = from_amax(*std::max_element(amax.begin(), amax.end()));
    }
  }
  const Int8QuantizeRowFn quantize_row = kernels.int8_quantize_row[dtype];
  auto* o = reinterpret_cast<int8_t*>(out);
  parallel_for(rows, threads, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      quantize_row(o + r * out_stride, row(r), granularity == 1 ? s + r : s, 0, cols);
    }
  });
}

void int8_pack_weight(uintptr_t packed, uintptr_t colsum, uintptr_t b, int64_t n, int64_t k,
                      int64_t b_stride) {
  check(n >= 0 && k >= 0, "int8_pack_weight: sizes must be >= 0");
  check(packed != 0 && colsum != 0 && (n == 0 || k == 0 || b != 0),
        "int8_pack_weight: null pointer");
  const int64_t k_pad = int8_k_pad(std::max<int64_t>(k, 1)), n_pad = int8_n_pad(n);
  auto* dst = reinterpret_cast<int8_t*>(packed);
  auto* sums = reinterpret_cast<int32_t*>(colsum);
  const auto* src = reinterpret_cast<const int8_t*>(b);
  std::memset(dst, 0, size_t(n_pad * k_pad));
  for (int64_t col = 0; col < n_pad; ++col) {
    int32_t sum = 0;
    if (col < n) {
      const int64_t grp = col / kInt8PackN, c = col % kInt8PackN;
      for (int64_t j = 0; j < k; ++j) {
        const int8_t v = src[col * b_stride + j];
        dst[int8_packed_offset(grp, j / 4, k_pad) + 4 * c + j % 4] = v;
        sum += v;
      }
    }
    sums[col] = sum;
  }
}

void int8_gemm(uintptr_t out, int64_t out_stride, uintptr_t a, int64_t a_stride, uintptr_t b,
               uintptr_t colsum, int64_t m, int64_t n, int64_t k, uintptr_t a_scale,
               bool a_per_token, uintptr_t b_scale, bool b_per_channel, uintptr_t bias,
               int out_dtype, int num_threads) {
  check_dtype(out_dtype, "int8_gemm");
  check_gemm(m >= 0 && n >= 0 && k >= 0, "sizes must be >= 0");
  check_gemm(k <= 133000, "k must be at most 133000 (int32 sums)");
  if (m == 0 || n == 0) return;
  check_gemm(out != 0 && a_scale != 0 && b_scale != 0 && b != 0 && colsum != 0 &&
                 (k == 0 || a != 0),
             "null pointer");
  const int64_t k_pad = int8_k_pad(std::max<int64_t>(k, 1));
  // Kernels read whole 64-byte k blocks of A: pad a copy when k is not a multiple.
  std::vector<int8_t> a_padded;
  const int8_t* a_rows = reinterpret_cast<const int8_t*>(a);
  int64_t lda = a_stride;
  if (k != k_pad) {
    a_padded.assign(size_t(m * k_pad), 0);
    for (int64_t r = 0; r < m; ++r) {
      if (k) std::memcpy(&a_padded[r * k_pad], a_rows + r * a_stride, size_t(k));
    }
    a_rows = a_padded.data();
    lda = k_pad;
  }
  const Int8GemmArgs args{a_rows, lda, reinterpret_cast<const int8_t*>(b),
                          reinterpret_cast<const int32_t*>(colsum), m, n, k, k_pad,
                          reinterpret_cast<const float*>(a_scale), a_per_token,
                          reinterpret_cast<const float*>(b_scale), b_per_channel,
                          reinterpret_cast<const void*>(bias), reinterpret_cast<void*>(out),
                          out_stride, out_dtype, stream_output(m * n * element_size(out_dtype))};
  const Int8GemmFn kernel = int8_gemm_kernel(int8_active_isa());
  const int64_t groups = int8_n_pad(n) / kInt8PackN;
  const int threads = int(std::max<int64_t>(
      1, std::min<int64_t>(num_threads, (m * n * k) / (int64_t(1) << 18) + 1)));
  if (groups >= 2 * threads) {
    // columns split in even runs of groups (the AMX kernel pairs them)
    const int64_t pairs = (groups + 1) / 2;
    parallel_for(pairs, threads, [&](int64_t p0, int64_t p1) {
      kernel(args, 0, m, 2 * p0, std::min(groups, 2 * p1));
    });
  } else {
    const int64_t row_blocks = (m + 31) / 32;
    parallel_for(row_blocks, threads, [&](int64_t r0, int64_t r1) {
      kernel(args, 32 * r0, std::min(m, 32 * r1), 0, groups);
    });
  }
}

}  // namespace reward_engine::cpu
