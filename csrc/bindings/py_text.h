// Borrowed UTF-8 views of a Python list of str/bytes, valid while the GIL is released.
#pragma once
#include <pybind11/pybind11.h>

#include <string>
#include <string_view>
#include <vector>

namespace fastlm::bindings {

// A str's UTF-8 is CPython's cached copy (no copy made); a str holding lone surrogates is encoded
// with "surrogatepass" into a bytes object kept in `keep` (its surrogates then read as invalid
// UTF-8). Every object is referenced from `keep`, so the views stay valid even if the caller's
// list is changed by another thread while the GIL is released.
struct Utf8Views {
  std::vector<std::string_view> views;
  std::vector<char> is_bytes;  // 1 where the item was bytes
  std::vector<pybind11::object> keep;
};

inline Utf8Views utf8_views(const pybind11::sequence& texts, const char* what = "texts") {
  namespace py = pybind11;
  if (py::isinstance<py::str>(texts) || py::isinstance<py::bytes>(texts))
    throw py::type_error(std::string(what) + " must be a sequence of documents, not a single str/bytes");
  Utf8Views out;
  const size_t n = py::len(texts);
  out.views.reserve(n);
  out.is_bytes.reserve(n);
  out.keep.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    py::object o = texts[i];
    const char* p = nullptr;
    Py_ssize_t len = 0;
    if (PyUnicode_Check(o.ptr())) {
      p = PyUnicode_AsUTF8AndSize(o.ptr(), &len);
      if (!p) {  // lone surrogates
        PyErr_Clear();
        o = py::reinterpret_steal<py::object>(PyUnicode_AsEncodedString(o.ptr(), "utf-8", "surrogatepass"));
        if (!o) throw py::error_already_set();
        p = PyBytes_AS_STRING(o.ptr());
        len = PyBytes_GET_SIZE(o.ptr());
      }
      out.is_bytes.push_back(0);
    } else if (PyBytes_Check(o.ptr())) {
      p = PyBytes_AS_STRING(o.ptr());
      len = PyBytes_GET_SIZE(o.ptr());
      out.is_bytes.push_back(1);
    } else {
      throw py::type_error(std::string(what) + "[" + std::to_string(i) + "] is " +
                           std::string(py::str(py::type::of(o).attr("__name__"))) + ", expected str or bytes");
    }
    out.views.emplace_back(p, static_cast<size_t>(len));
    out.keep.push_back(std::move(o));
  }
  return out;
}

}  // namespace fastlm::bindings
