// int8_gemm for any CPU: plain loops over the packed weight (int8_kernels.h).
#include "int8_gemm.h"
#include "int8_kernels.h"
#include "vec_scalar.h"

namespace reward_engine::cpu {

void int8_gemm_scalar(const Int8GemmArgs& g, int64_t m0, int64_t m1, int64_t g0, int64_t g1) {
  const int64_t k4 = g.k_pad / 4;
  for (int64_t m = m0; m < m1; ++m) {
    const int8_t* a = g.a + m * g.a_stride;
    for (int64_t grp = g0; grp < g1; ++grp) {
      int32_t acc[kInt8PackN] = {};
      const int8_t* b = g.b + int8_packed_offset(grp, 0, g.k_pad);
      for (int64_t r = 0; r < k4; ++r, b += 64) {
        const int8_t* ar = a + 4 * r;  // A is readable up to k_pad (the launcher pads it)
        for (int64_t c = 0; c < kInt8PackN; ++c) {
          const int8_t* bc = b + 4 * c;
          acc[c] += int32_t(ar[0]) * bc[0] + int32_t(ar[1]) * bc[1] + int32_t(ar[2]) * bc[2] +
                    int32_t(ar[3]) * bc[3];
        }
      }
      const int64_t n0 = grp * kInt8PackN;
      const int64_t count = g.n - n0 < kInt8PackN ? g.n - n0 : kInt8PackN;
      int8_store_tile<VecScalar>(g, acc, kInt8PackN, m, 1, n0, count);
    }
  }
}

}  // namespace reward_engine::cpu
