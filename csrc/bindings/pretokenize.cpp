// Bindings for the native pre-tokenizer: str (or bytes) lists in, pieces or piece counts out; GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <string_view>
#include <vector>

#include "bindings/py_text.h"
#include "common/error.h"
#include "common/thread_pool.h"
#include "tokenizer/piece_counts.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/unicode_tables.h"

namespace py = pybind11;
using fastlm::tokenizer::Pattern;

namespace {

using fastlm::bindings::Utf8Views;
using fastlm::bindings::utf8_views;


void check_threads(int num_threads) {
  fastlm::check(num_threads >= 0, "num_threads must be >= 0 (0 = all cores), got " + std::to_string(num_threads));
}

}  // namespace

void bind_pretokenize(py::module_& m) {
  m.def(
      "tok_pretokenize",
      [](const py::list& texts, int pattern, int num_threads) {
        const Pattern pat = fastlm::tokenizer::pattern_from_int(pattern);
        check_threads(num_threads);
        Utf8Views v = utf8_views(texts);
        const size_t n = v.views.size();
        std::vector<std::vector<std::pair<size_t, size_t>>> ranges(n);
        {
          py::gil_scoped_release release;
          fastlm::parallel_for(n, num_threads, 1, [&](size_t b, size_t e) {
            for (size_t i = b; i < e; ++i) ranges[i] = fastlm::tokenizer::pretokenize(v.views[i], pat);
          });
        }
        // Equal pieces share one Python object (str and bytes are immutable) through a direct-mapped
        // cache: far fewer allocations, and frequent pieces stay cached.
        constexpr size_t kCacheSize = 1 << 14;
        std::vector<std::pair<std::string_view, py::object>> cache[2];
        cache[0].resize(kCacheSize);
        cache[1].resize(kCacheSize);
        py::list out(n);
        for (size_t i = 0; i < n; ++i) {
          const std::string_view text = v.views[i];
          auto& objects = cache[v.is_bytes[i] ? 1 : 0];
          py::list pieces(ranges[i].size());
          for (size_t k = 0; k < ranges[i].size(); ++k) {
            const auto [b, e] = ranges[i][k];
            const std::string_view piece = text.substr(b, e - b);
            auto& slot = objects[fastlm::tokenizer::piece_hash(piece) & (kCacheSize - 1)];
            if (!slot.second || slot.first != piece) {
              PyObject* o = v.is_bytes[i]
                                ? PyBytes_FromStringAndSize(piece.data(), static_cast<Py_ssize_t>(piece.size()))
                                : PyUnicode_DecodeUTF8(piece.data(), static_cast<Py_ssize_t>(piece.size()), "surrogatepass");
              if (!o) throw py::error_already_set();
              slot = {piece, py::reinterpret_steal<py::object>(o)};
            }
            PyList_SET_ITEM(pieces.ptr(), static_cast<Py_ssize_t>(k), slot.second.inc_ref().ptr());
          }
          std::vector<std::pair<size_t, size_t>>().swap(ranges[i]);
          out[i] = std::move(pieces);
        }
        return out;
      },
      py::arg("texts"), py::arg("pattern"), py::arg("num_threads") = 0);

  m.def(
      "tok_count_pieces",
      [](const py::list& texts, int pattern, int num_threads) {
        const Pattern pat = fastlm::tokenizer::pattern_from_int(pattern);
        check_threads(num_threads);
        Utf8Views v = utf8_views(texts);
        std::vector<std::pair<std::string_view, uint64_t>> sorted;
        {
          py::gil_scoped_release release;
          sorted = fastlm::tokenizer::count_pieces(v.views, pat, num_threads);
        }
        py::list pieces(sorted.size());
        py::array_t<uint64_t> counts(static_cast<py::ssize_t>(sorted.size()));
        uint64_t* c = counts.mutable_data();
        for (size_t k = 0; k < sorted.size(); ++k) {
          PyObject* o = PyBytes_FromStringAndSize(sorted[k].first.data(), static_cast<Py_ssize_t>(sorted[k].first.size()));
          if (!o) throw py::error_already_set();
          PyList_SET_ITEM(pieces.ptr(), static_cast<Py_ssize_t>(k), o);
          c[k] = sorted[k].second;
        }
        return py::make_tuple(pieces, counts);
      },
      py::arg("texts"), py::arg("pattern"), py::arg("num_threads") = 0);

  m.def(
      "tok_unicode_flags",
      []() {
        std::string flags(0x110000, '\0');
        for (uint32_t cp = 0; cp < 0x110000; ++cp)
          flags[cp] = static_cast<char>(fastlm::tokenizer::unicode::char_flags(cp));
        return py::bytes(flags);
      },
      "Flag byte of every code point (bits: unicode_tables.h), for tests.");
  m.attr("TOK_UNICODE_VERSION") = fastlm::tokenizer::unicode::kUnicodeVersion;
}
