// Bindings for the tokenizer's bpe area (filled in by its feature work).
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_bpe(py::module_& m) { (void)m; }
