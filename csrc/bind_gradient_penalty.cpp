// Python bindings of the gradient_penalty kernels.
#include <pybind11/pybind11.h>

#include "genfast.h"

namespace py = pybind11;

namespace genfast {

void bind_gradient_penalty(py::module_& m) { (void)m; }

}  // namespace genfast
