// Bindings for csrc/dedup: text lists and numpy arrays in, numpy arrays out; GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>
#include <string>
#include <vector>

#include "bindings/py_text.h"
#include "common/error.h"
#include "dedup/lsh.h"
#include "dedup/minhash.h"
#include "dedup/simd.h"
#include "dedup/normalize.h"
#include "dedup/simhash.h"

namespace py = pybind11;
namespace dd = fastlm::dedup;
using fastlm::check;

namespace {

using U64 = py::array_t<uint64_t, py::array::c_style | py::array::forcecast>;
using I64 = py::array_t<int64_t>;

// Views of a list of str/bytes (see bindings/py_text.h), as the dedup core's TextView.
struct Texts {
  std::vector<dd::TextView> views;
  fastlm::bindings::Utf8Views src;  // owns the references that keep the views valid
};

Texts to_texts(const py::sequence& seq) {
  Texts t;
  t.src = fastlm::bindings::utf8_views(seq, "document");
  t.views.reserve(t.src.views.size());
  for (std::string_view v : t.src.views) t.views.push_back({v.data(), v.size()});
  return t;
}

U64 new_u64(std::vector<py::ssize_t> shape) { return U64(shape); }

dd::MinHashMode to_mode(int mode) {
  check(mode >= 0 && mode <= 2, "unknown MinHash mode " + std::to_string(mode));
  return static_cast<dd::MinHashMode>(mode);
}

py::dict stats_dict(const dd::ClusterStats& s) {
  py::dict d;
  d["buckets"] = s.buckets;
  d["compared"] = s.compared;
  d["skipped"] = s.skipped;
  d["capped"] = s.capped;
  d["merged"] = s.merged;
  d["exact_checks"] = s.exact_checks;
  return d;
}

void check_vec(const U64& a, size_t n, const char* name) {
  check(a.ndim() == 1 && size_t(a.shape(0)) == n,
        std::string(name) + " must have shape (" + std::to_string(n) + ",)");
}

}  // namespace

void bind_dedup(py::module_& m) {
  m.attr("DEDUP_NORMALIZATION_VERSION") = dd::kNormalizationVersion;

  m.def("dedup_set_simd", &dd::set_dedup_simd, "Test hook: enable/disable SIMD; returns previous");
  m.def("dedup_kernel", &dd::dedup_kernel_name);

  m.def("dedup_normalize", [](const py::object& text) {
    Texts t = to_texts(py::make_tuple(text));
    dd::Words w;
    dd::normalize_words(t.views[0].data, t.views[0].size, w);
    return py::bytes(w.text(), w.length);
  });

  m.def("dedup_shingle_hashes", [](const py::object& text, size_t ngram, int mode) {
    Texts t = to_texts(py::make_tuple(text));
    dd::Words w;
    std::vector<uint64_t> h;
    dd::normalize_words(t.views[0].data, t.views[0].size, w);
    dd::shingle_hashes(w, ngram, to_mode(mode), h);
    U64 out = new_u64({py::ssize_t(h.size())});
    std::copy(h.begin(), h.end(), out.mutable_data());
    return out;
  });

  m.def("dedup_exact_hashes", [](const py::sequence& texts, int num_threads) {
    Texts t = to_texts(texts);
    U64 out = new_u64({py::ssize_t(t.views.size()), 2});
    uint64_t* o = out.mutable_data();
    {
      py::gil_scoped_release release;
      dd::exact_hashes(t.views, o, num_threads);
    }
    return out;
  });

  // Opaque holder of the 32-bit shingle hashes kept by dedup_minhash(keep=True) for exact checks.
  py::class_<dd::ShingleHashes>(m, "DedupShingleHashes")
      .def("__len__", [](const dd::ShingleHashes& h) { return h.size(); });

  m.def("dedup_minhash", [](const py::sequence& texts, const U64& a, const U64& b, size_t ngram,
                            int mode, int num_threads, bool keep) {
    check(a.ndim() == 1 && a.shape(0) >= 1, "permutation array a must be 1-d and non-empty");
    size_t P = a.shape(0);
    check_vec(b, P, "b");
    check(ngram >= 1, "ngram must be >= 1");
    Texts t = to_texts(texts);
    size_t n = t.views.size();
    U64 sig = new_u64({py::ssize_t(n), py::ssize_t(P)});
    U64 counts = new_u64({py::ssize_t(n)});
    dd::MinHashParams p{P, ngram, to_mode(mode), a.data(), b.data()};
    uint64_t* s = sig.mutable_data();
    uint64_t* c = counts.mutable_data();
    auto kept = keep ? std::make_unique<dd::ShingleHashes>() : nullptr;
    {
      py::gil_scoped_release release;
      dd::minhash_signatures(t.views, p, s, c, num_threads, kept.get());
    }
    if (!keep) return py::tuple(py::make_tuple(sig, counts));
    return py::tuple(py::make_tuple(sig, counts, py::cast(std::move(kept))));
  }, py::arg("texts"), py::arg("a"), py::arg("b"), py::arg("ngram"), py::arg("mode"),
     py::arg("num_threads"), py::arg("keep") = false);

  m.def("dedup_band_keys", [](const U64& sig, size_t bands, size_t rows, int num_threads) {
    check(sig.ndim() == 2, "signatures must be a 2-d array");
    size_t n = sig.shape(0), P = sig.shape(1);
    check(bands >= 1 && rows >= 1 && bands * rows <= P, "bands * rows must be <= num_perm");
    U64 keys = new_u64({py::ssize_t(n), py::ssize_t(bands)});
    uint64_t* k = keys.mutable_data();
    const uint64_t* s = sig.data();
    {
      py::gil_scoped_release release;
      dd::band_keys(s, n, P, bands, rows, k, num_threads);
    }
    return keys;
  });

  m.def("dedup_lsh_cluster",
        [](const U64& keys, const U64& sig, const U64& counts, const U64& lengths, double threshold,
           int verify, double margin, const py::object& texts, size_t ngram, size_t max_compare,
           bool keep_longest, int num_threads) {
          check(keys.ndim() == 2 && sig.ndim() == 2 && keys.shape(0) == sig.shape(0),
                "keys (n, bands) and signatures (n, num_perm) must have the same n");
          size_t n = keys.shape(0);
          check_vec(counts, n, "counts");
          check_vec(lengths, n, "lengths");
          check(verify >= 0 && verify <= 2, "unknown verify mode");
          check(max_compare >= 1, "max_compare must be >= 1");
          // texts: None, a list of documents, or the DedupShingleHashes of dedup_minhash.
          Texts t;
          const dd::ShingleHashes* kept = nullptr;
          if (py::isinstance<dd::ShingleHashes>(texts)) {
            kept = &texts.cast<const dd::ShingleHashes&>();
          } else if (!texts.is_none()) {
            t = to_texts(texts);
          }
          dd::LshClusterArgs args{keys.data(), n, size_t(keys.shape(1)), sig.data(),
                                  size_t(sig.shape(1)), counts.data(), lengths.data(), threshold,
                                  static_cast<dd::Verify>(verify), margin,
                                  texts.is_none() || kept ? nullptr : &t.views, kept, ngram,
                                  max_compare, keep_longest};
          I64 cluster(n), dup(n);
          int64_t* c = cluster.mutable_data();
          int64_t* d = dup.mutable_data();
          dd::ClusterStats st;
          {
            py::gil_scoped_release release;
            st = dd::lsh_cluster(args, c, d, num_threads);
          }
          return py::make_tuple(cluster, dup, stats_dict(st));
        });

  m.def("dedup_simhash", [](const py::sequence& texts, size_t ngram, int num_threads) {
    check(ngram >= 1, "ngram must be >= 1");
    Texts t = to_texts(texts);
    size_t n = t.views.size();
    U64 fps = new_u64({py::ssize_t(n)});
    U64 counts = new_u64({py::ssize_t(n)});
    uint64_t* f = fps.mutable_data();
    uint64_t* c = counts.mutable_data();
    {
      py::gil_scoped_release release;
      dd::simhash_fingerprints(t.views, ngram, f, c, num_threads);
    }
    return py::make_tuple(fps, counts);
  });

  m.def("dedup_simhash_cluster", [](const U64& fps, const U64& counts, const U64& lengths, int k,
                                    size_t max_compare, bool keep_longest, int num_threads) {
    check(fps.ndim() == 1, "fingerprints must be 1-d");
    size_t n = fps.shape(0);
    check_vec(counts, n, "counts");
    check_vec(lengths, n, "lengths");
    check(k >= 0 && k < 64, "k must be in [0, 63]");
    check(max_compare >= 1, "max_compare must be >= 1");
    I64 cluster(n), dup(n);
    int64_t* c = cluster.mutable_data();
    int64_t* d = dup.mutable_data();
    dd::ClusterStats st;
    {
      py::gil_scoped_release release;
      st = dd::simhash_cluster(fps.data(), counts.data(), lengths.data(), n, k, max_compare,
                               keep_longest, c, d, num_threads);
    }
    return py::make_tuple(cluster, dup, stats_dict(st));
  });
}
