// Python bindings of the gradient_penalty kernels.
#include <pybind11/pybind11.h>

#include "gradient_penalty.h"

namespace py = pybind11;

namespace genfast {

void bind_gradient_penalty(py::module_& m) {
  m.def("gp_interpolate_cpu",
        [](uintptr_t real, uintptr_t fake, uintptr_t out, uintptr_t alpha, int alpha_dtype, int64_t batch, int64_t row,
           int dtype, uint64_t seed, uint64_t offset, uintptr_t seed_ptr, uintptr_t offset_ptr) {
          py::gil_scoped_release nogil;
          gp_interpolate_cpu(real, fake, out, alpha, alpha_dtype, batch, row, dtype,
                             StreamArgs{seed, offset, seed_ptr, offset_ptr});
        });
  m.def("gp_norm_penalty_cpu", [](uintptr_t grad, uintptr_t norms, uintptr_t penalty, int64_t batch, int64_t row,
                                  int dtype, float weight, float center, int mode) {
    py::gil_scoped_release nogil;
    gp_norm_penalty_cpu(grad, norms, penalty, batch, row, dtype, weight, center, mode);
  });
  m.def("gp_norm_penalty_backward_cpu", [](uintptr_t grad_out, uintptr_t grad, uintptr_t norms, uintptr_t out,
                                           int64_t batch, int64_t row, int dtype, float weight, float center, int mode) {
    py::gil_scoped_release nogil;
    gp_norm_penalty_backward_cpu(grad_out, grad, norms, out, batch, row, dtype, weight, center, mode);
  });
#ifdef GENFAST_WITH_CUDA
  m.def("gp_interpolate_cuda",
        [](uintptr_t real, uintptr_t fake, uintptr_t out, uintptr_t alpha, int alpha_dtype, int64_t batch, int64_t row,
           int dtype, uint64_t seed, uint64_t offset, uintptr_t seed_ptr, uintptr_t offset_ptr, uintptr_t stream,
           int device) {
          gp_interpolate_cuda(real, fake, out, alpha, alpha_dtype, batch, row, dtype,
                              StreamArgs{seed, offset, seed_ptr, offset_ptr}, stream, device);
        });
  m.def("gp_norm_penalty_cuda", &gp_norm_penalty_cuda);
  m.def("gp_norm_penalty_backward_cuda", &gp_norm_penalty_backward_cuda);
#endif
}

}  // namespace genfast
