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
}
