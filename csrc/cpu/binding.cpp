// Python module kernels._C: the list of exported CPU ops. Arguments are raw
// pointers and sizes; kernels/_native.py marshals tensors into them. The GIL
// is released while a kernel runs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "isa.h"
#include "thread_pool.h"
#include "ops.h"

namespace py = pybind11;
namespace cpu = reward_engine::cpu;

PYBIND11_MODULE(_C, m) {
  m.doc() = "reward-engine CPU kernels (raw-pointer interface; use the kernels package)";
  using release = py::call_guard<py::gil_scoped_release>;

  m.def("rms_norm", &cpu::rms_norm, release(), py::arg("out"), py::arg("x"), py::arg("weight"),
        py::arg("rows"), py::arg("hidden"), py::arg("out_stride"), py::arg("x_stride"),
        py::arg("eps"), py::arg("dtype"), py::arg("num_threads"));
  m.def("fused_add_rms_norm", &cpu::fused_add_rms_norm, release(), py::arg("out"), py::arg("x"),
        py::arg("residual"), py::arg("weight"), py::arg("rows"), py::arg("hidden"),
        py::arg("out_stride"), py::arg("x_stride"), py::arg("residual_stride"), py::arg("eps"),
        py::arg("dtype"), py::arg("num_threads"));
  m.def("rope", &cpu::rope, release(), py::arg("q"), py::arg("q_token_stride"),
        py::arg("q_head_stride"), py::arg("num_q_heads"), py::arg("k"), py::arg("k_token_stride"),
        py::arg("k_head_stride"), py::arg("num_kv_heads"), py::arg("positions"),
        py::arg("positions_int64"), py::arg("cos_sin_cache"), py::arg("max_position"),
        py::arg("num_tokens"), py::arg("head_dim"), py::arg("dtype"), py::arg("num_threads"));
  m.def("silu_mul", &cpu::silu_mul, release(), py::arg("out"), py::arg("x"), py::arg("rows"),
        py::arg("inter"), py::arg("out_stride"), py::arg("x_stride"), py::arg("dtype"),
        py::arg("num_threads"));

  m.def("rope_and_cache", &cpu::rope_and_cache, release(), py::arg("q"), py::arg("q_token_stride"),
        py::arg("q_head_stride"), py::arg("num_q_heads"), py::arg("k"), py::arg("k_token_stride"),
        py::arg("k_head_stride"), py::arg("num_kv_heads"), py::arg("v"), py::arg("v_token_stride"),
        py::arg("v_head_stride"), py::arg("positions"), py::arg("positions_int64"),
        py::arg("cos_sin_cache"), py::arg("max_position"), py::arg("key_cache"),
        py::arg("value_cache"), py::arg("num_slots"), py::arg("slot_mapping"),
        py::arg("slots_int64"), py::arg("num_tokens"), py::arg("head_dim"), py::arg("kv_fp8"),
        py::arg("k_scale"), py::arg("v_scale"), py::arg("dtype"), py::arg("num_threads"));
  m.def("paged_prefill_attention", &cpu::paged_prefill_attention, release(), py::arg("out"),
        py::arg("out_token_stride"), py::arg("out_head_stride"), py::arg("q"),
        py::arg("q_token_stride"), py::arg("q_head_stride"), py::arg("num_tokens"),
        py::arg("num_q_heads"), py::arg("key_cache"), py::arg("value_cache"),
        py::arg("num_blocks"), py::arg("block_size"), py::arg("num_kv_heads"),
        py::arg("head_dim"), py::arg("block_tables"), py::arg("num_seqs"),
        py::arg("max_blocks_per_seq"), py::arg("query_start_loc"), py::arg("context_lens"),
        py::arg("scale"), py::arg("kv_fp8"), py::arg("k_scale"), py::arg("v_scale"),
        py::arg("dtype"), py::arg("num_threads"));
  m.def("fp8_quantize", &cpu::fp8_quantize, release(), py::arg("out"), py::arg("x"),
        py::arg("rows"), py::arg("cols"), py::arg("out_stride"), py::arg("x_stride"),
        py::arg("scale"), py::arg("granularity"), py::arg("dynamic"), py::arg("dtype"),
        py::arg("num_threads"));
  m.def("fp8_gemm", &cpu::fp8_gemm, release(), py::arg("out"), py::arg("out_stride"),
        py::arg("a"), py::arg("a_stride"), py::arg("b"), py::arg("b_stride"), py::arg("m"),
        py::arg("n"), py::arg("k"), py::arg("a_scale"), py::arg("a_per_token"),
        py::arg("b_scale"), py::arg("b_per_channel"), py::arg("bias"), py::arg("out_dtype"),
        py::arg("num_threads"));
  m.def("batch_invariant_linear", &cpu::batch_invariant_linear, release(), py::arg("out"),
        py::arg("out_stride"), py::arg("a"), py::arg("a_stride"), py::arg("b"),
        py::arg("b_stride"), py::arg("bias"), py::arg("m"), py::arg("n"), py::arg("k"),
        py::arg("dtype"), py::arg("num_threads"));
  m.def("rms_norm_fp8", &cpu::rms_norm_fp8, release(), py::arg("out"), py::arg("x"),
        py::arg("weight"), py::arg("rows"), py::arg("hidden"), py::arg("out_stride"),
        py::arg("x_stride"), py::arg("eps"), py::arg("scale"), py::arg("dtype"),
        py::arg("num_threads"));
  m.def("fused_add_rms_norm_fp8", &cpu::fused_add_rms_norm_fp8, release(), py::arg("out"),
        py::arg("x"), py::arg("residual"), py::arg("weight"), py::arg("rows"), py::arg("hidden"),
        py::arg("out_stride"), py::arg("x_stride"), py::arg("residual_stride"), py::arg("eps"),
        py::arg("scale"), py::arg("dtype"), py::arg("num_threads"));
  m.def("silu_mul_fp8", &cpu::silu_mul_fp8, release(), py::arg("out"), py::arg("x"),
        py::arg("rows"), py::arg("inter"), py::arg("out_stride"), py::arg("x_stride"),
        py::arg("scale"), py::arg("dtype"), py::arg("num_threads"));

  m.def("rms_norm_quant", &cpu::rms_norm_quant, release(), py::arg("out"), py::arg("x"),
        py::arg("weight"), py::arg("rows"), py::arg("hidden"), py::arg("out_stride"),
        py::arg("x_stride"), py::arg("eps"), py::arg("scale"), py::arg("qtype"),
        py::arg("dynamic"), py::arg("dtype"), py::arg("num_threads"));
  m.def("fused_add_rms_norm_quant", &cpu::fused_add_rms_norm_quant, release(), py::arg("out"),
        py::arg("x"), py::arg("residual"), py::arg("weight"), py::arg("rows"), py::arg("hidden"),
        py::arg("out_stride"), py::arg("x_stride"), py::arg("residual_stride"), py::arg("eps"),
        py::arg("scale"), py::arg("qtype"), py::arg("dynamic"), py::arg("dtype"),
        py::arg("num_threads"));
  m.def("silu_mul_quant", &cpu::silu_mul_quant, release(), py::arg("out"), py::arg("x"),
        py::arg("rows"), py::arg("inter"), py::arg("out_stride"), py::arg("x_stride"),
        py::arg("scale"), py::arg("qtype"), py::arg("dynamic"), py::arg("dtype"),
        py::arg("num_threads"));
  m.def("int8_quantize", &cpu::int8_quantize, release(), py::arg("out"), py::arg("x"),
        py::arg("rows"), py::arg("cols"), py::arg("out_stride"), py::arg("x_stride"),
        py::arg("scale"), py::arg("granularity"), py::arg("dynamic"), py::arg("dtype"),
        py::arg("num_threads"));
  m.def("int8_pack_weight", &cpu::int8_pack_weight, release(), py::arg("packed"),
        py::arg("colsum"), py::arg("b"), py::arg("n"), py::arg("k"), py::arg("b_stride"));
  m.def("int8_gemm", &cpu::int8_gemm, release(), py::arg("out"), py::arg("out_stride"),
        py::arg("a"), py::arg("a_stride"), py::arg("b"), py::arg("colsum"), py::arg("m"),
        py::arg("n"), py::arg("k"), py::arg("a_scale"), py::arg("a_per_token"),
        py::arg("b_scale"), py::arg("b_per_channel"), py::arg("bias"), py::arg("out_dtype"),
        py::arg("num_threads"));
  m.def("int8_gemm_isa", &cpu::int8_gemm_isa,
        "The int8_gemm kernel this CPU runs (amx, avx512_vnni, avx2 or scalar)");

  m.def("use_process_openmp", &cpu::use_process_openmp,
        "Run parallel loops on the OpenMP runtime already loaded (torch's); returns its path "
        "or '' when none is loaded");
  m.def("use_thread_pool", &cpu::use_thread_pool, "Run parallel loops on the own thread pool");
  m.def("threading_runtime", &cpu::threading_runtime);
  m.def("best_isa", [] { return cpu::isa_name(cpu::best_isa()); });
  m.def("active_isa", [] { return cpu::isa_name(cpu::active_isa()); });
  m.def("supported_isas", &cpu::supported_isas);
}
