// genfast._C: pybind11 bindings. Pointers, sizes, dtype codes and CUDA streams arrive as Python ints.
// Each op binds its own functions in csrc/bind_<op>.cpp. The same file builds genfast._C_emulated (the
// CUDA kernels compiled for the host against kernels/host_emulation/): CMake sets GENFAST_MODULE_NAME
// and GENFAST_CUDA_EMULATION for it.
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
#ifdef GENFAST_CUDA_EMULATION
void bind_emulation(py::module_& m);
#endif
}  // namespace genfast

#ifndef GENFAST_MODULE_NAME
#define GENFAST_MODULE_NAME _C
#endif

PYBIND11_MODULE(GENFAST_MODULE_NAME, m) {
#ifdef GENFAST_CUDA_EMULATION
  m.doc() = "genfast's CUDA kernels (kernels/*.cu) compiled for the host against the CUDA execution layer "
            "(kernels/host_emulation/): the *_cuda functions run them on CPU memory, under its checks";
  genfast::bind_emulation(m);
#else
  m.doc() = "genfast compiled kernels (CPU always, CUDA when built with nvcc)";
#endif
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
