// Python bindings of the vae kernels.
#include <pybind11/pybind11.h>

#include "genfast.h"

namespace py = pybind11;

namespace genfast {

void bind_vae(py::module_& m) { (void)m; }

}  // namespace genfast
