// Python bindings of the random-stream kernels.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "philox.cuh"
#include "random.h"

namespace py = pybind11;

namespace genfast {

void bind_random(py::module_& m) {
  m.def(
      "random_fill_cpu",
      [](uintptr_t out, int64_t n, int dtype, uint64_t seed, uint64_t offset, uintptr_t seed_ptr,
         uintptr_t offset_ptr, bool normal) {
        py::gil_scoped_release nogil;
        random_fill_cpu(out, n, dtype, StreamArgs{seed, offset, seed_ptr, offset_ptr}, normal);
      },
      py::arg("out"), py::arg("n"), py::arg("dtype"), py::arg("seed"), py::arg("offset"), py::arg("seed_ptr"),
      py::arg("offset_ptr"), py::arg("normal"));
  // The raw generator, for known-answer tests against the published Philox4x32-10 vectors.
  m.def(
      "philox4x32_10",
      [](std::array<uint32_t, 4> c, std::array<uint32_t, 2> k) {
        U32x4 r = philox4x32_10(U32x4{c[0], c[1], c[2], c[3]}, k[0], k[1]);
        return std::array<uint32_t, 4>{r.x, r.y, r.z, r.w};
      },
      py::arg("counter"), py::arg("key"));
#ifdef GENFAST_WITH_CUDA
  m.def(
      "random_fill_cuda",
      [](uintptr_t out, int64_t n, int dtype, uint64_t seed, uint64_t offset, uintptr_t seed_ptr,
         uintptr_t offset_ptr, bool normal, uintptr_t stream, int device) {
        random_fill_cuda(out, n, dtype, StreamArgs{seed, offset, seed_ptr, offset_ptr}, normal, stream, device);
      },
      py::arg("out"), py::arg("n"), py::arg("dtype"), py::arg("seed"), py::arg("offset"), py::arg("seed_ptr"),
      py::arg("offset_ptr"), py::arg("normal"), py::arg("stream"), py::arg("device"));
#endif
}

}  // namespace genfast
