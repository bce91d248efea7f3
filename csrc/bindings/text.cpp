// Bindings for the text area: reads CPython's PEP 393 string storage without copying,
// releases the GIL for the scans, and builds result strings in canonical form.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <unordered_map>
#include <vector>

#include "common/error.h"
#include "text/clean.h"
#include "text/quality_stats.h"
#include "text/repetition.h"
#include "text/scan.h"

namespace py = pybind11;
using fastlm::text::CodeUnits;

namespace {

// Views of every str in `texts` (a list or tuple). The caller keeps `texts` alive, and str
// objects are immutable, so the views stay valid while the GIL is released.
std::vector<CodeUnits> views_of(const py::sequence& texts) {
  std::vector<CodeUnits> views;
  views.reserve(py::len(texts));
  for (size_t i = 0; i < views.capacity(); ++i) {
    py::handle h = texts[i];
    if (!PyUnicode_Check(h.ptr()))
      throw py::type_error("texts[" + std::to_string(i) + "] is " +
                           std::string(py::str(py::type::of(h).attr("__name__"))) +
                           ", expected str");
    PyObject* o = h.ptr();
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(o) != 0) throw py::error_already_set();
#endif
    CodeUnits v;
    v.data = PyUnicode_DATA(o);
    v.len = static_cast<size_t>(PyUnicode_GET_LENGTH(o));
    v.kind = static_cast<int>(PyUnicode_KIND(o));
    v.ascii = PyUnicode_IS_ASCII(o);
    views.push_back(v);
  }
  return views;
}

py::sequence as_sequence(const py::object& texts) {
  if (!py::isinstance<py::list>(texts) && !py::isinstance<py::tuple>(texts))
    throw py::type_error("texts must be a list or tuple of str");
  return texts.cast<py::sequence>();
}

py::str to_str(const fastlm::text::CleanResult& r) {
  // PyUnicode_FromKindAndData finds the maximum character, so the result has the narrowest
  // kind (CPython compares strings of different kinds as unequal).
  PyObject* o = nullptr;
  switch (r.kind) {
    case 1:
      o = PyUnicode_FromKindAndData(PyUnicode_1BYTE_KIND, r.u8.data(), r.u8.size());
      break;
    case 2:
      o = PyUnicode_FromKindAndData(PyUnicode_2BYTE_KIND, r.u16.data(), r.u16.size());
      break;
    default:
      o = PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, r.u32.data(), r.u32.size());
  }
  if (!o) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(o);
}

}  // namespace

void bind_text(py::module_& m) {
  m.def(
      "text_scan_triggers",
      [](const py::object& texts, const py::bytes& bitmap, int num_threads) {
        py::sequence seq = as_sequence(texts);
        std::string bits = bitmap;
        fastlm::text::TriggerSet set(reinterpret_cast<const uint8_t*>(bits.data()), bits.size());
        std::vector<CodeUnits> views = views_of(seq);
        std::vector<uint8_t> flags;
        {
          py::gil_scoped_release release;
          flags = fastlm::text::scan_triggers(views, set, num_threads);
        }
        py::list out(flags.size());
        for (size_t i = 0; i < flags.size(); ++i) out[i] = py::bool_(flags[i] != 0);
        return out;
      },
      py::arg("texts"), py::arg("bitmap"), py::arg("num_threads") = 0,
      "For each text: True if it holds a code point whose bit is set in `bitmap`.");
  m.def(
      "text_clean",
      [](const py::object& texts, bool remove_control, bool whitespace, bool keep_indentation,
         int max_blank_lines, int num_threads) {
        py::sequence seq = as_sequence(texts);
        if (max_blank_lines < 0) throw fastlm::ValueError("max_blank_lines must be >= 0");
        fastlm::text::CleanOptions opt;
        opt.remove_control = remove_control;
        opt.whitespace = whitespace;
        opt.keep_indentation = keep_indentation;
        opt.max_blank_lines = max_blank_lines;
        std::vector<CodeUnits> views = views_of(seq);
        std::vector<fastlm::text::CleanResult> results;
        {
          py::gil_scoped_release release;
          results = fastlm::text::clean_batch(views, opt, num_threads);
        }
        py::list out(results.size());
        for (size_t i = 0; i < results.size(); ++i) out[i] = to_str(results[i]);
        return out;
      },
      py::arg("texts"), py::kw_only(), py::arg("remove_control"), py::arg("whitespace"),
      py::arg("keep_indentation"), py::arg("max_blank_lines"), py::arg("num_threads") = 0,
      "Control-character removal and whitespace normalization of each text, one pass each.");
  m.def(
      "text_repetition_stats",
      [](const py::object& texts, const std::vector<uint32_t>& strip, const std::vector<int>& top_ns,
         const std::vector<int>& dup_ns, int num_threads) {
        py::sequence seq = as_sequence(texts);
        fastlm::text::RepetitionOptions opt{strip, top_ns, dup_ns};
        std::vector<CodeUnits> views = views_of(seq);
        std::vector<int64_t> flat;
        {
          py::gil_scoped_release release;
          flat = fastlm::text::repetition_stats_batch(views, opt, num_threads);
        }
        const size_t width = fastlm::text::kRepetitionFixed + top_ns.size() + dup_ns.size();
        py::array_t<int64_t> out({views.size(), width});
        std::copy(flat.begin(), flat.end(), out.mutable_data());
        return out;
      },
      py::arg("texts"), py::kw_only(), py::arg("strip"), py::arg("top_ns"), py::arg("dup_ns"),
      py::arg("num_threads") = 0,
      "Gopher repetition counts per text as an int64 array (layout: csrc/text/repetition.h).");
  m.def(
      "text_quality_stats",
      [](const py::object& texts, const std::vector<uint32_t>& strip, const py::bytes& alpha_bits,
         const std::unordered_map<uint32_t, std::u32string>& lower,
         const std::vector<std::u32string>& stop_words, const std::vector<std::u32string>& bullets,
         int num_threads) {
        py::sequence seq = as_sequence(texts);
        std::string bits = alpha_bits;
        fastlm::text::QualityOptions opt{strip, std::vector<uint8_t>(bits.begin(), bits.end()),
                                         lower, stop_words, bullets};
        std::vector<CodeUnits> views = views_of(seq);
        std::vector<int64_t> flat;
        {
          py::gil_scoped_release release;
          flat = fastlm::text::quality_stats_batch(views, opt, num_threads);
        }
        py::array_t<int64_t> out({views.size(), fastlm::text::kQualityColumns});
        std::copy(flat.begin(), flat.end(), out.mutable_data());
        return out;
      },
      py::arg("texts"), py::kw_only(), py::arg("strip"), py::arg("alpha_bits"), py::arg("lower"),
      py::arg("stop_words"), py::arg("bullets"), py::arg("num_threads") = 0,
      "Gopher quality counts per text as an int64 array (layout: csrc/text/quality_stats.h).");
}
