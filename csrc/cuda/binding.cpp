// Python module kernels._C_cuda: the list of exported CUDA ops (raw device
// pointers plus a stream handle; kernels/_native.py marshals tensors).
#include <pybind11/pybind11.h>

#include "ops.h"

namespace py = pybind11;
namespace cuda = reward_engine::cuda;

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "reward-engine CUDA kernels (raw-pointer interface; use the kernels package)";
  using release = py::call_guard<py::gil_scoped_release>;

  m.def("rms_norm", &cuda::rms_norm, release(), py::arg("out"), py::arg("x"), py::arg("weight"),
        py::arg("rows"), py::arg("hidden"), py::arg("out_stride"), py::arg("x_stride"),
        py::arg("eps"), py::arg("dtype"), py::arg("stream"));
  m.def("fused_add_rms_norm", &cuda::fused_add_rms_norm, release(), py::arg("out"), py::arg("x"),
        py::arg("residual"), py::arg("weight"), py::arg("rows"), py::arg("hidden"),
        py::arg("out_stride"), py::arg("x_stride"), py::arg("residual_stride"), py::arg("eps"),
        py::arg("dtype"), py::arg("stream"));

  m.def("rms_norm_fp8", &cuda::rms_norm_fp8, release(), py::arg("out"), py::arg("x"),
        py::arg("weight"), py::arg("rows"), py::arg("hidden"), py::arg("out_stride"),
        py::arg("x_stride"), py::arg("eps"), py::arg("scale"), py::arg("dtype"),
        py::arg("stream"));
  m.def("fused_add_rms_norm_fp8", &cuda::fused_add_rms_norm_fp8, release(), py::arg("out"),
        py::arg("x"), py::arg("residual"), py::arg("weight"), py::arg("rows"), py::arg("hidden"),
        py::arg("out_stride"), py::arg("x_stride"), py::arg("residual_stride"), py::arg("eps"),
        py::arg("scale"), py::arg("dtype"), py::arg("stream"));
  m.def("silu_mul", &cuda::silu_mul, release(), py::arg("out"), py::arg("x"), py::arg("rows"),
        py::arg("inter"), py::arg("out_stride"), py::arg("x_stride"), py::arg("dtype"),
        py::arg("stream"));
  m.def("silu_mul_fp8", &cuda::silu_mul_fp8, release(), py::arg("out"), py::arg("x"),
        py::arg("rows"), py::arg("inter"), py::arg("out_stride"), py::arg("x_stride"),
        py::arg("scale"), py::arg("dtype"), py::arg("stream"));
  m.def("rope", &cuda::rope, release(), py::arg("q"), py::arg("q_token_stride"),
        py::arg("q_head_stride"), py::arg("num_q_heads"), py::arg("k"), py::arg("k_token_stride"),
        py::arg("k_head_stride"), py::arg("num_kv_heads"), py::arg("positions"),
        py::arg("positions_int64"), py::arg("cos_sin_cache"), py::arg("max_position"),
        py::arg("num_tokens"), py::arg("head_dim"), py::arg("dtype"), py::arg("stream"));
  m.def("rope_and_cache", &cuda::rope_and_cache, release(), py::arg("q"),
        py::arg("q_token_stride"), py::arg("q_head_stride"), py::arg("num_q_heads"), py::arg("k"),
        py::arg("k_token_stride"), py::arg("k_head_stride"), py::arg("num_kv_heads"),
        py::arg("v"), py::arg("v_token_stride"), py::arg("v_head_stride"), py::arg("positions"),
        py::arg("positions_int64"), py::arg("cos_sin_cache"), py::arg("max_position"),
        py::arg("key_cache"), py::arg("value_cache"), py::arg("num_slots"),
        py::arg("slot_mapping"), py::arg("slots_int64"), py::arg("num_tokens"),
        py::arg("head_dim"), py::arg("kv_fp8"), py::arg("k_scale"), py::arg("v_scale"),
        py::arg("dtype"), py::arg("stream"));
  m.def("paged_prefill_attention", &cuda::paged_prefill_attention, release(), py::arg("out"),
        py::arg("out_token_stride"), py::arg("out_head_stride"), py::arg("q"),
        py::arg("q_token_stride"), py::arg("q_head_stride"), py::arg("num_tokens"),
        py::arg("num_q_heads"), py::arg("key_cache"), py::arg("value_cache"),
        py::arg("num_blocks"), py::arg("block_size"), py::arg("num_kv_heads"),
        py::arg("head_dim"), py::arg("block_tables"), py::arg("num_seqs"),
        py::arg("max_blocks_per_seq"), py::arg("query_start_loc"), py::arg("context_lens"),
        py::arg("scale"), py::arg("kv_fp8"), py::arg("k_scale"), py::arg("v_scale"),
        py::arg("dtype"), py::arg("stream"));
  m.def("fp8_quantize", &cuda::fp8_quantize, release(), py::arg("out"), py::arg("x"),
        py::arg("rows"), py::arg("cols"), py::arg("out_stride"), py::arg("x_stride"),
        py::arg("scale"), py::arg("granularity"), py::arg("dynamic"), py::arg("dtype"),
        py::arg("stream"));
#ifdef REWARD_ENGINE_HAVE_CUBLASLT
  m.def("fp8_gemm", &cuda::fp8_gemm, release(), py::arg("out"), py::arg("out_stride"),
        py::arg("a"), py::arg("a_stride"), py::arg("b"), py::arg("b_stride"), py::arg("m"),
        py::arg("n"), py::arg("k"), py::arg("a_scale"), py::arg("a_per_token"),
        py::arg("b_scale"), py::arg("b_per_channel"), py::arg("bias"), py::arg("out_dtype"),
        py::arg("stream"));
  m.attr("has_cublaslt") = true;
#else
  m.attr("has_cublaslt") = false;
#endif
}
