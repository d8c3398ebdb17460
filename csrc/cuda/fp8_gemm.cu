// fp8_gemm through cuBLASLt (built only when cuBLASLt headers and library were
// found: REWARD_ENGINE_HAVE_CUBLASLT, see setup.py).
//
// Layout: cuBLASLt is column-major. Row-major out [M, N] is column-major
// out^T [N, M] = b [N, K] (column-major K x N, transposed) times a^T (column-
// major K x M). That is the "TN" form FP8 GEMMs require on Ada/Hopper: the
// cuBLASLt A operand is our b (with TRANSA = T), the B operand our a, so
// A_SCALE is b_scale and B_SCALE is a_scale, and cuBLASLt's bias (one value per
// row of its D) is our per-column bias.
//
// Scales and bias, in order of preference:
// 1. in cuBLASLt's own epilogue: per-tensor scales as scalars, per-token /
//    per-channel scales as outer vectors (CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F,
//    cuBLAS 12.9+ on Hopper), the bias through CUBLASLT_EPILOGUE_BIAS (bf16/fp16
//    output; an fp32 output's bias would need another bias type). One kernel,
//    the output written once;
// 2. where cuBLASLt offers no algorithm for that (Ada, older cuBLAS, mixed
//    scale kinds): an unscaled GEMM into an fp32 buffer, then
//    fp8_gemm_epilogue_kernel applies acc * (a_scale[m] * b_scale[n]) + bias[n]
//    and rounds once to out_dtype.
//
// Each distinct problem (sizes, strides, types, scale modes, pointer alignments,
// device) asks cuBLASLt's heuristic once; the answer, including "no algorithm",
// is cached for the process. The workspace is allocated once per (device,
// stream) and kept (kWorkspaceBytes each), except while a stream is being
// captured into a CUDA graph, where a stream-ordered allocation is used.
// cuBLASLt FP8 needs sm_89 or newer, K and the row strides of a and b
// multiples of 16 bytes, 16-byte aligned pointers (the Python cuda backend
// checks the shapes first).
#include <cublasLt.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>

#include "fp8_kernels.cuh"
#include "ops.h"

#if defined(CUBLAS_VERSION) && CUBLAS_VERSION >= 120900
#define REWARD_ENGINE_LT_OUTER_VEC_SCALES 1
#endif

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

int current_device() {
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  check(device >= 0 && device < 64, "fp8_gemm: device index out of range");
  return device;
}

// One cuBLASLt handle per device, created on first use.
cublasLtHandle_t handle_for(int device) {
  static std::mutex mu;
  static cublasLtHandle_t handles[64] = {};
  std::lock_guard<std::mutex> lock(mu);
  if (handles[device] == nullptr) check_lt(cublasLtCreate(&handles[device]), "cublasLtCreate");
  return handles[device];
}

// The workspace of one (device, stream), allocated on first use and kept: a
// 32 MiB cudaMalloc per call would cost more than a small GEMM.
class Workspaces {
 public:
  // Returns the workspace, or nullptr while `stream` is capturing a graph and
  // has none yet (plain cudaMalloc is not allowed then).
  void* get(int device, cudaStream_t stream) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = buffers_.find({device, stream});
    if (it != buffers_.end()) return it->second;
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    check_cuda(cudaStreamIsCapturing(stream, &capture), "cudaStreamIsCapturing");
    if (capture != cudaStreamCaptureStatusNone) return nullptr;
    void* buffer = nullptr;
    check_cuda(cudaMalloc(&buffer, kWorkspaceBytes), "workspace allocation");
    buffers_[{device, stream}] = buffer;
    return buffer;
  }

 private:
  std::mutex mu_;
  std::map<std::pair<int, cudaStream_t>, void*> buffers_;
};

Workspaces& workspaces() {
  static Workspaces* instance = new Workspaces();  // never destroyed: outlives CUDA teardown
  return *instance;
}

cudaDataType_t cuda_type(int dtype) {
  return dtype == 0 ? CUDA_R_32F : dtype == 1 ? CUDA_R_16BF : CUDA_R_16F;
}

// Largest power of two (up to 256) dividing the address: cuBLASLt's default
// preference assumes 256-byte aligned buffers, so a view's pointer must be
// declared or an algorithm may assume more alignment than it has.
uint32_t alignment_of(const void* p) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  uint32_t align = 256;
  while (align > 1 && address % align != 0) align /= 2;
  return align;
}

// One GEMM as cuBLASLt sees it: d [m rows of n] (row stride ldd) = (a @ b^T)
// scaled and biased as asked. Null scales: unscaled.
struct Problem {
  void* d;
  int64_t ldd;
  cudaDataType_t d_type;
  const void* a;
  int64_t lda;
  const void* b;
  int64_t ldb;
  int64_t m, n, k;
  const float* a_scale;  // m values when a_vector, else 1
  const float* b_scale;  // n values when b_vector, else 1
  bool a_vector, b_vector;
  const void* bias;  // n values of d_type, or nullptr
};

using PlanKey = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int,
                           int, int, int, uint32_t, uint32_t, uint32_t>;

PlanKey key_of(int device, const Problem& p) {
  return {device,
          p.m,
          p.n,
          p.k,
          p.lda,
          p.ldb,
          p.ldd,
          int(p.d_type),
          p.a_scale != nullptr,
          int(p.a_vector),
          int(p.b_vector),
          p.bias != nullptr,
          alignment_of(p.a),
          alignment_of(p.b),
          alignment_of(p.d)};
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

template <class V>
cublasStatus_t set(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const V& v) {
  return cublasLtMatmulDescSetAttribute(desc, attr, &v, sizeof(v));
}

template <class V>
cublasStatus_t set(cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr,
                   const V& v) {
  return cublasLtMatmulPreferenceSetAttribute(pref, attr, &v, sizeof(v));
}

// Fills `desc` for `p`. False when this cuBLASLt cannot express the problem
// (vector scales before cuBLAS 12.9); other failures throw.
bool describe(const Problem& p, Descriptors& desc) {
  check_lt(cublasLtMatmulDescCreate(&desc.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "MatmulDescCreate");
  check_lt(set(desc.op, CUBLASLT_MATMUL_DESC_TRANSA, CUBLAS_OP_T), "TRANSA");
  check_lt(set(desc.op, CUBLASLT_MATMUL_DESC_TRANSB, CUBLAS_OP_N), "TRANSB");
  if (p.a_scale != nullptr) {
    check_lt(set(desc.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, p.b_scale), "A_SCALE_POINTER");
    check_lt(set(desc.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, p.a_scale), "B_SCALE_POINTER");
  }
  if (p.a_vector || p.b_vector) {
#ifdef REWARD_ENGINE_LT_OUTER_VEC_SCALES
    const int32_t outer = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
    const int32_t scalar = CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F;
    if (set(desc.op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, p.b_vector ? outer : scalar) !=
            CUBLAS_STATUS_SUCCESS ||
        set(desc.op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, p.a_vector ? outer : scalar) !=
            CUBLAS_STATUS_SUCCESS) {
      return false;
    }
#else
    return false;
#endif
  }
  if (p.bias != nullptr) {
    check_lt(set(desc.op, CUBLASLT_MATMUL_DESC_EPILOGUE, CUBLASLT_EPILOGUE_BIAS), "EPILOGUE");
    check_lt(set(desc.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, p.bias), "BIAS_POINTER");
    check_lt(set(desc.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, int32_t(p.d_type)),
             "BIAS_DATA_TYPE");
  }
  check_lt(cublasLtMatrixLayoutCreate(&desc.a, CUDA_R_8F_E4M3, uint64_t(p.k), uint64_t(p.n), p.ldb),
           "layout of b");
  check_lt(cublasLtMatrixLayoutCreate(&desc.b, CUDA_R_8F_E4M3, uint64_t(p.k), uint64_t(p.m), p.lda),
           "layout of a");
  check_lt(cublasLtMatrixLayoutCreate(&desc.d, p.d_type, uint64_t(p.n), uint64_t(p.m), p.ldd),
           "layout of out");
  check_lt(cublasLtMatmulPreferenceCreate(&desc.pref), "PreferenceCreate");
  check_lt(set(desc.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, uint64_t(kWorkspaceBytes)),
           "MAX_WORKSPACE_BYTES");
  check_lt(set(desc.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, alignment_of(p.b)),
           "MIN_ALIGNMENT_A_BYTES");
  check_lt(set(desc.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, alignment_of(p.a)),
           "MIN_ALIGNMENT_B_BYTES");
  check_lt(set(desc.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, alignment_of(p.d)),
           "MIN_ALIGNMENT_C_BYTES");
  check_lt(set(desc.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, alignment_of(p.d)),
           "MIN_ALIGNMENT_D_BYTES");
  return true;
}

// The heuristic's first algorithm per problem, or "none" (found == false).
struct Plan {
  bool found = false;
  cublasLtMatmulAlgo_t algo = {};
};

class PlanCache {
 public:
  Plan get(int device, const Problem& p, const Descriptors& desc) {
    const PlanKey key = key_of(device, p);
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = plans_.find(key);
      if (it != plans_.end()) return it->second;
    }
    cublasLtMatmulHeuristicResult_t result = {};
    int count = 0;
    const cublasStatus_t status =
        cublasLtMatmulAlgoGetHeuristic(handle_for(device), desc.op, desc.a, desc.b, desc.d,
                                       desc.d, desc.pref, 1, &result, &count);
    Plan plan;
    plan.found = status == CUBLAS_STATUS_SUCCESS && count > 0;
    if (plan.found) plan.algo = result.algo;
    std::lock_guard<std::mutex> lock(mu_);
    plans_.emplace(key, plan);
    return plan;
  }

 private:
  std::mutex mu_;
  std::map<PlanKey, Plan> plans_;
};

PlanCache& plans() {
  static PlanCache* instance = new PlanCache();
  return *instance;
}

// Runs `p` through cuBLASLt. False (nothing launched) when cuBLASLt has no
// algorithm for it.
bool lt_matmul(const Problem& p, cudaStream_t stream) {
  Descriptors desc;
  if (!describe(p, desc)) return false;
  const int device = current_device();
  const Plan plan = plans().get(device, p, desc);
  if (!plan.found) return false;
  void* workspace = workspaces().get(device, stream);
  const bool own_workspace = workspace == nullptr;  // graph capture: stream-ordered
  if (own_workspace) {
    check_cuda(cudaMallocAsync(&workspace, kWorkspaceBytes, stream), "workspace allocation");
  }
  const float alpha = 1.0f, beta = 0.0f;
  // cuBLASLt's A is our b and its B our a (file comment)
  const cublasStatus_t run =
      cublasLtMatmul(handle_for(device), desc.op, &alpha, p.b, desc.a, p.a, desc.b, &beta, p.d,
                     desc.d, p.d, desc.d, &plan.algo, workspace, kWorkspaceBytes, stream);
  if (own_workspace) cudaFreeAsync(workspace, stream);
  check_lt(run, "cublasLtMatmul");
  return true;
}

std::string no_algorithm(int64_t m, int64_t n, int64_t k) {
  return "fp8_gemm: cuBLASLt has no FP8 algorithm for M=" + std::to_string(m) +
         " N=" + std::to_string(n) + " K=" + std::to_string(k) +
         " (FP8 needs sm_89 or newer, K and row strides multiples of 16)";
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
  const auto* a_ptr = reinterpret_cast<const void*>(a);
  const auto* b_ptr = reinterpret_cast<const void*>(b);
  const auto* bias_ptr = reinterpret_cast<const void*>(bias);
  const bool fused_bias = bias == 0 || out_dtype != 0;
  if (fused_bias) {
    const Problem fused{reinterpret_cast<void*>(out), out_stride, cuda_type(out_dtype),
                        a_ptr, a_stride, b_ptr, b_stride, m, n, k, sa, sb, a_per_token,
                        b_per_channel, bias_ptr};
    if (lt_matmul(fused, s)) return;
    if (!a_per_token && !b_per_channel && bias == 0) throw std::runtime_error(no_algorithm(m, n, k));
  }
  // Path 2: an unscaled GEMM into fp32, then the epilogue kernel.
  float* acc = nullptr;
  check_cuda(cudaMallocAsync(reinterpret_cast<void**>(&acc), sizeof(float) * size_t(m * n), s),
             "fp32 accumulator allocation");
  try {
    const Problem plain{acc, n, CUDA_R_32F, a_ptr, a_stride, b_ptr, b_stride, m, n, k,
                        nullptr, nullptr, false, false, nullptr};
    if (!lt_matmul(plain, s)) throw std::runtime_error(no_algorithm(m, n, k));
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
