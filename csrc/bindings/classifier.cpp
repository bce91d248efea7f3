// Bindings for the classifier area (filled in by its feature work).
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_classifier(py::module_& m) { (void)m; }
