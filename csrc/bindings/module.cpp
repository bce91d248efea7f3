// fastlm._C: the CPU native module. Each area binds itself; errors map to Python here.
#include <pybind11/pybind11.h>

#include "common/error.h"
#include "common/version.h"

namespace py = pybind11;

void bind_dedup(py::module_& m);
void bind_text(py::module_& m);
void bind_classifier(py::module_& m);
void bind_kernels(py::module_& m);
void bind_pretokenize(py::module_& m);
void bind_bpe(py::module_& m);

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastlm native core (private: use the fastlm package API)";
  py::register_exception<fastlm::ValueError>(m, "NativeValueError", PyExc_ValueError);
  py::register_exception<fastlm::KeyError>(m, "NativeKeyError", PyExc_KeyError);
  m.attr("__version__") = fastlm::native_version();
  bind_dedup(m);
  bind_text(m);
  bind_classifier(m);
  bind_kernels(m);
  bind_pretokenize(m);
  bind_bpe(m);
}
