// genfast._C: pybind11 bindings. Pointers, sizes, dtype codes and CUDA streams arrive as Python ints.
// Each op binds its own functions in csrc/bind_<op>.cpp.
#include <pybind11/pybind11.h>

#include "genfast.h"

namespace py = pybind11;

namespace genfast {
void bind_random(py::module_& m);
void bind_diffusion(py::module_& m);
void bind_gradient_penalty(py::module_& m);
void bind_vae(py::module_& m);
void bind_diffusion_backward(py::module_& m);
void bind_sampler_steps(py::module_& m);
}  // namespace genfast

PYBIND11_MODULE(_C, m) {
  m.doc() = "genfast compiled kernels (CPU always, CUDA when built with nvcc)";
#ifdef GENFAST_WITH_CUDA
  m.attr("with_cuda") = true;
  m.def("cuda_runtime_version", &genfast::cuda_runtime_version);
  m.def("cuda_device_count", &genfast::cuda_device_count, "devices the compiled runtime sees (0 without a driver)");
#else
  m.attr("with_cuda") = false;
#endif
#ifdef GENFAST_OPENMP
  m.attr("with_openmp") = true;
#else
  m.attr("with_openmp") = false;
#endif
  genfast::bind_random(m);
  genfast::bind_diffusion(m);
  genfast::bind_gradient_penalty(m);
  genfast::bind_vae(m);
  genfast::bind_diffusion_backward(m);
  genfast::bind_sampler_steps(m);
}
