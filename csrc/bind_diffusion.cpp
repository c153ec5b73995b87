// Python bindings of the diffusion kernels.
#include <pybind11/pybind11.h>

#include "genfast.h"

namespace py = pybind11;

namespace genfast {

void bind_diffusion(py::module_& m) { (void)m; }

}  // namespace genfast
