// Launchers of the CUDA kernels. Pointers are device addresses
// (tensor.data_ptr()), strides are in elements, `dtype` is the code used by
// the CPU module (0 float32, 1 bfloat16, 2 float16), `stream` is a
// cudaStream_t passed as an integer (torch.cuda.current_stream().cuda_stream).
// No CUDA headers here, so the binding compiles with the host compiler alone.
#pragma once

#include <cstdint>

namespace reward_engine::cuda {

void rms_norm(uintptr_t out, uintptr_t x, uintptr_t weight, int64_t rows, int64_t hidden,
              int64_t out_stride, int64_t x_stride, double eps, int dtype, uintptr_t stream);

void fused_add_rms_norm(uintptr_t out, uintptr_t x, uintptr_t residual, uintptr_t weight,
                        int64_t rows, int64_t hidden, int64_t out_stride, int64_t x_stride,
                        int64_t residual_stride, double eps, int dtype, uintptr_t stream);

}  // namespace reward_engine::cuda
