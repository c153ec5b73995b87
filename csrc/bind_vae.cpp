// Python bindings of the VAE reparameterization + KL kernels.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <utility>

#include "vae.h"

namespace py = pybind11;

namespace genfast {

void bind_vae(py::module_& m) {
  m.def(
      "vae_forward_cpu",
      [](uintptr_t mu, uintptr_t logvar, uintptr_t noise, uintptr_t z, uintptr_t kl_rows, uintptr_t kl_cols, int64_t B,
         int64_t D, int dtype, uint64_t seed, uint64_t offset, uintptr_t seed_ptr, uintptr_t offset_ptr, bool clamp,
         float lo, float hi) {
        py::gil_scoped_release nogil;
        vae_forward_cpu(mu, logvar, noise, z, kl_rows, kl_cols, B, D, dtype, StreamArgs{seed, offset, seed_ptr, offset_ptr},
                        VaeClampArgs{clamp, lo, hi});
      });
  m.def(
      "vae_backward_cpu",
      [](uintptr_t grad_z, uintptr_t grad_rows, uintptr_t grad_cols, uintptr_t mu, uintptr_t logvar, uintptr_t noise,
         uintptr_t grad_mu, uintptr_t grad_logvar, int64_t B, int64_t D, int dtype, uint64_t seed, uint64_t offset,
         uintptr_t seed_ptr, uintptr_t offset_ptr, bool clamp, float lo, float hi) {
        py::gil_scoped_release nogil;
        vae_backward_cpu(grad_z, grad_rows, grad_cols, mu, logvar, noise, grad_mu, grad_logvar, B, D, dtype,
                         StreamArgs{seed, offset, seed_ptr, offset_ptr}, VaeClampArgs{clamp, lo, hi});
      });
#ifdef GENFAST_WITH_CUDA
  m.def("vae_partials_shape_cuda", [](int64_t B, int64_t D, int dtype, bool col_sums) {
    int64_t chunks = 0, groups = 0;
    vae_partials_shape_cuda(B, D, dtype, col_sums, chunks, groups);
    return std::make_pair(chunks, groups);
  });
  m.def(
      "vae_forward_cuda",
      [](uintptr_t mu, uintptr_t logvar, uintptr_t noise, uintptr_t z, uintptr_t row_part, uintptr_t col_part, int64_t B,
         int64_t D, int dtype, uint64_t seed, uint64_t offset, uintptr_t seed_ptr, uintptr_t offset_ptr, bool clamp,
         float lo, float hi, bool col_sums, uintptr_t stream, int device) {
        vae_forward_cuda(mu, logvar, noise, z, row_part, col_part, B, D, dtype, StreamArgs{seed, offset, seed_ptr, offset_ptr},
                         VaeClampArgs{clamp, lo, hi}, col_sums, stream, device);
      });
  m.def(
      "vae_backward_cuda",
      [](uintptr_t grad_z, uintptr_t grad_rows, uintptr_t grad_cols, uintptr_t mu, uintptr_t logvar, uintptr_t noise,
         uintptr_t grad_mu, uintptr_t grad_logvar, int64_t B, int64_t D, int dtype, uint64_t seed, uint64_t offset,
         uintptr_t seed_ptr, uintptr_t offset_ptr, bool clamp, float lo, float hi, uintptr_t stream, int device) {
        vae_backward_cuda(grad_z, grad_rows, grad_cols, mu, logvar, noise, grad_mu, grad_logvar, B, D, dtype,
                          StreamArgs{seed, offset, seed_ptr, offset_ptr}, VaeClampArgs{clamp, lo, hi}, stream, device);
      });
#endif
}

}  // namespace genfast
