// fp8_gemm through cuBLASLt (built only when cuBLASLt headers and library were
// found: REWARD_ENGINE_HAVE_CUBLASLT, see setup.py).
//
// Layout: cuBLASLt is column-major. Row-major out [M, N] is column-major
// out^T [N, M] = b [N, K] (column-major K x N, transposed) times a^T (column-
// major K x M). That is the "TN" form FP8 GEMMs require on Ada/Hopper: the
// cuBLASLt A operand is our b (with TRANSA = T), the B operand our a.
//
// Scales: per-tensor scales without bias go to cuBLASLt's scale pointers
// (A_SCALE_POINTER = b_scale, B_SCALE_POINTER = a_scale) and the output is
// written directly. Per-token / per-channel scales or a bias: an unscaled
// GEMM into an fp32 buffer, then fp8_gemm_epilogue_kernel applies
// acc * (a_scale[m] * b_scale[n]) + bias[n] and rounds once to out_dtype.
// cuBLASLt FP8 needs sm_89 or newer, K and the row strides of a and b
// multiples of 16 bytes, 16-byte aligned pointers (the Python cuda backend
// checks the shapes first).
#include <cublasLt.h>

#include <algorithm>
#include <mutex>
#include <string>

#include "fp8_kernels.cuh"
#include "ops.h"

namespace reward_engine::cuda {
namespace {

constexpr size_t kWorkspaceBytes = size_t(32) << 20;

void check_lt(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw std::runtime_error(std::string("fp8_gemm: ") + what + " failed (cublasStatus " +
                             std::to_string(int(status)) + ")");
  }
}

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("fp8_gemm: ") + what + ": " + cudaGetErrorString(err));
  }
}

// One cuBLASLt handle per device, created on first use.
cublasLtHandle_t handle_for_current_device() {
  static std::mutex mu;
  static cublasLtHandle_t handles[64] = {};
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  check(device >= 0 && device < 64, "fp8_gemm: device index out of range");
  std::lock_guard<std::mutex> lock(mu);
  if (handles[device] == nullptr) check_lt(cublasLtCreate(&handles[device]), "cublasLtCreate");
  return handles[device];
}

// RAII owners of the cuBLASLt descriptors of one call.
struct Descriptors {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~Descriptors() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

cudaDataType_t cuda_type(int dtype) {
  return dtype == 0 ? CUDA_R_32F : dtype == 1 ? CUDA_R_16BF : CUDA_R_16F;
}

// d [m rows of n] (row stride ldd, type d_type) = (a @ b^T) * scales, as above.
void lt_matmul(void* d, int64_t ldd, cudaDataType_t d_type, const void* a, int64_t lda,
               const void* b, int64_t ldb, int64_t m, int64_t n, int64_t k,
               const float* a_scale, const float* b_scale, cudaStream_t stream) {
  Descriptors desc;
  check_lt(cublasLtMatmulDescCreate(&desc.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "MatmulDescCreate");
  const cublasOperation_t trans = CUBLAS_OP_T, no_trans = CUBLAS_OP_N;
  check_lt(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_TRANSA, &trans,
                                          sizeof(trans)), "TRANSA");
  check_lt(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_TRANSB, &no_trans,
                                          sizeof(no_trans)), "TRANSB");
  if (a_scale != nullptr) {
    // cuBLASLt's A operand is our b and its B operand our a
    check_lt(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
                                            &b_scale, sizeof(b_scale)), "A_SCALE_POINTER");
    check_lt(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
                                            &a_scale, sizeof(a_scale)), "B_SCALE_POINTER");
  }
  check_lt(cublasLtMatrixLayoutCreate(&desc.a, CUDA_R_8F_E4M3, uint64_t(k), uint64_t(n), ldb),
           "layout of b");
  check_lt(cublasLtMatrixLayoutCreate(&desc.b, CUDA_R_8F_E4M3, uint64_t(k), uint64_t(m), lda),
           "layout of a");
  check_lt(cublasLtMatrixLayoutCreate(&desc.d, d_type, uint64_t(n), uint64_t(m), ldd),
           "layout of out");
  check_lt(cublasLtMatmulPreferenceCreate(&desc.pref), "PreferenceCreate");
  const uint64_t workspace_bytes = kWorkspaceBytes;
  check_lt(cublasLtMatmulPreferenceSetAttribute(desc.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                &workspace_bytes, sizeof(workspace_bytes)),
           "MAX_WORKSPACE_BYTES");
  cublasLtHandle_t handle = handle_for_current_device();
  cublasLtMatmulHeuristicResult_t heuristic = {};
  int found = 0;
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
      handle, desc.op, desc.a, desc.b, desc.d, desc.d, desc.pref, 1, &heuristic, &found);
  if (status != CUBLAS_STATUS_SUCCESS || found == 0) {
    throw std::runtime_error(
        "fp8_gemm: cuBLASLt has no FP8 algorithm for M=" + std::to_string(m) + " N=" +
        std::to_string(n) + " K=" + std::to_string(k) +
        " (FP8 needs sm_89 or newer, K and row strides multiples of 16)");
  }
  void* workspace = nullptr;
  check_cuda(cudaMallocAsync(&workspace, kWorkspaceBytes, stream), "workspace allocation");
  const float alpha = 1.0f, beta = 0.0f;
  const cublasStatus_t run = cublasLtMatmul(handle, desc.op, &alpha, b, desc.a, a, desc.b, &beta,
                                            d, desc.d, d, desc.d, &heuristic.algo, workspace,
                                            kWorkspaceBytes, stream);
  cudaFreeAsync(workspace, stream);
  check_lt(run, "cublasLtMatmul");
}

}  // namespace

void fp8_gemm(uintptr_t out, int64_t out_stride, uintptr_t a, int64_t a_stride, uintptr_t b,
              int64_t b_stride, int64_t m, int64_t n, int64_t k, uintptr_t a_scale,
              bool a_per_token, uintptr_t b_scale, bool b_per_channel, uintptr_t bias,
              int out_dtype, uintptr_t stream) {
  check_dtype(out_dtype, "fp8_gemm");
  check(m >= 0 && n >= 0 && k >= 0 && m < (int64_t(1) << 40), "fp8_gemm: bad sizes");
  if (m == 0 || n == 0) return;
  check(k > 0, "fp8_gemm: the cuda backend needs K > 0");
  check(out && a && b && a_scale && b_scale, "fp8_gemm: null pointer");
  auto s = reinterpret_cast<cudaStream_t>(stream);
  const auto* sa = reinterpret_cast<const float*>(a_scale);
  const auto* sb = reinterpret_cast<const float*>(b_scale);
  if (!a_per_token && !b_per_channel && bias == 0) {
    lt_matmul(reinterpret_cast<void*>(out), out_stride, cuda_type(out_dtype),
              reinterpret_cast<const void*>(a), a_stride, reinterpret_cast<const void*>(b),
              b_stride, m, n, k, sa, sb, s);
    return;
  }
  float* acc = nullptr;
  check_cuda(cudaMallocAsync(reinterpret_cast<void**>(&acc), sizeof(float) * size_t(m * n), s),
             "fp32 accumulator allocation");
  try {
    lt_matmul(acc, n, CUDA_R_32F, reinterpret_cast<const void*>(a), a_stride,
              reinterpret_cast<const void*>(b), b_stride, m, n, k, nullptr, nullptr, s);
  } catch (...) {
    cudaFreeAsync(acc, s);
    throw;
  }
  const dim3 grid(unsigned((n + 255) / 256), unsigned(std::min<int64_t>(m, 65535)));
  dispatch_dtype(out_dtype, [&](auto tag) {
    using T = decltype(tag);
    fp8_gemm_epilogue_kernel<T><<<grid, 256, 0, s>>>(
        reinterpret_cast<T*>(out), out_stride, acc, m, n, sa, a_per_token, sb, b_per_channel,
        reinterpret_cast<const T*>(bias));
  });
  cudaFreeAsync(acc, s);
  check_launch("fp8_gemm epilogue");
}

}  // namespace reward_engine::cuda
