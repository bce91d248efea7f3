// Borrowed UTF-8 views of a Python list of str/bytes, valid while the GIL is released.
#pragma once
#include <pybind11/pybind11.h>

#include <string>
#include <string_view>
#include <vector>

namespace fastlm::bindings {

// A str's UTF-8 is CPython's cached copy (no copy made). A str holding lone surrogates is either
// encoded with "surrogatepass" (its surrogates then read as invalid UTF-8), or, with
// `replace_surrogates`, has each lone surrogate replaced by U+FFFD first (what tiktoken does).
// Every object is referenced from `keep`, so the views stay valid even if the caller's list is
// changed by another thread while the GIL is released.
struct Utf8Views {
  std::vector<std::string_view> views;
  std::vector<char> is_bytes;  // 1 where the item was bytes
  std::vector<pybind11::object> keep;
};

// UTF-8 of a str with lone surrogates: surrogatepass bytes, or a U+FFFD-replaced copy's UTF-8.
// Returns the object that owns the bytes (bytes or str) and sets data/len.
inline pybind11::object utf8_of_surrogates(PyObject* str, bool replace, const char** data, Py_ssize_t* len) {
  namespace py = pybind11;
  if (!replace) {
    py::object b = py::reinterpret_steal<py::object>(PyUnicode_AsEncodedString(str, "utf-8", "surrogatepass"));
    if (!b) throw py::error_already_set();
    *data = PyBytes_AS_STRING(b.ptr());
    *len = PyBytes_GET_SIZE(b.ptr());
    return b;
  }
  py::object u16 = py::reinterpret_steal<py::object>(PyUnicode_AsEncodedString(str, "utf-16-le", "surrogatepass"));
  if (!u16) throw py::error_already_set();
  py::object fixed = py::reinterpret_steal<py::object>(
      PyUnicode_DecodeUTF16(PyBytes_AS_STRING(u16.ptr()), PyBytes_GET_SIZE(u16.ptr()), "replace", nullptr));
  if (!fixed) throw py::error_already_set();
  *data = PyUnicode_AsUTF8AndSize(fixed.ptr(), len);
  if (!*data) throw py::error_already_set();
  return fixed;
}

inline Utf8Views utf8_views(const pybind11::sequence& texts, const char* what = "texts",
                            bool replace_surrogates = false) {
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
        o = utf8_of_surrogates(o.ptr(), replace_surrogates, &p, &len);
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
