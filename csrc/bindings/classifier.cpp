// Bindings for the classifier area: tokenizer, hashed features, linear model, lexicon matcher.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <string_view>
#include <vector>

#include "classify/features.h"
#include "classify/lexicon.h"
#include "classify/linear.h"
#include "classify/tokenize.h"
#include "common/error.h"
#include "common/thread_pool.h"

namespace py = pybind11;
using namespace fastlm::classify;

namespace {

// UTF-8 views of a sequence of str. The views point into the str objects' cached UTF-8 buffers;
// `keep` holds references so they stay valid while the GIL is released.
struct Texts {
  std::vector<py::object> keep;
  std::vector<std::string_view> views;
};

Texts utf8_texts(const py::sequence& seq) {
  if (py::isinstance<py::str>(seq)) throw py::type_error("texts must be a sequence of str, not a str");
  Texts t;
  const size_t n = py::len(seq);
  t.keep.reserve(n);
  t.views.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    py::object item = seq[i];
    if (!PyUnicode_Check(item.ptr())) {
      throw py::type_error("texts[" + std::to_string(i) + "] must be str, not " +
                           std::string(py::str(py::type::of(item).attr("__name__"))));
    }
    Py_ssize_t len = 0;
    const char* data = PyUnicode_AsUTF8AndSize(item.ptr(), &len);
    if (data == nullptr) {
      PyErr_Clear();
      throw fastlm::ValueError("texts[" + std::to_string(i) + "] cannot be encoded as UTF-8 (lone surrogate?)");
    }
    t.views.emplace_back(data, static_cast<size_t>(len));
    t.keep.push_back(std::move(item));
  }
  return t;
}

FeatureConfig feature_config(uint64_t buckets, int word_ngrams, int char_min, int char_max) {
  FeatureConfig cfg{buckets, word_ngrams, char_min, char_max};
  validate(cfg);
  return cfg;
}

using F32Array = py::array_t<float, py::array::c_style | py::array::forcecast>;

}  // namespace

void bind_classifier(py::module_& m) {
  m.def("classify_tokenize", [](const std::string& text) {
    Words w;
    tokenize(text, w);
    py::list out;
    for (size_t k = 0; k < w.size(); ++k) out.append(py::str(std::string(w.word(k))));
    return out;
  }, py::arg("text"), "Lowercased words of a text (Unicode-aware word boundaries).");

  m.def("classify_featurize", [](const py::sequence& texts, uint64_t buckets, int word_ngrams,
                                 int char_min, int char_max, int num_threads) {
    FeatureConfig cfg = feature_config(buckets, word_ngrams, char_min, char_max);
    Texts t = utf8_texts(texts);
    const size_t n = t.views.size();
    std::vector<std::vector<uint32_t>> per_doc(n);
    {
      py::gil_scoped_release release;
      fastlm::parallel_for(n, num_threads, 32, [&](size_t begin, size_t end) {
        FeatureScratch scratch;
        for (size_t i = begin; i < end; ++i) featurize(t.views[i], cfg, scratch, per_doc[i]);
      });
    }
    py::array_t<uint64_t> offsets(n + 1);
    auto off = offsets.mutable_unchecked<1>();
    off(0) = 0;
    for (size_t i = 0; i < n; ++i) off(i + 1) = off(i) + per_doc[i].size();
    py::array_t<uint32_t> ids(static_cast<py::ssize_t>(off(n)));
    uint32_t* dst = ids.mutable_data();
    for (size_t i = 0; i < n; ++i) dst = std::copy(per_doc[i].begin(), per_doc[i].end(), dst);
    return py::make_tuple(offsets, ids);
  }, py::arg("texts"), py::arg("buckets"), py::arg("word_ngrams"), py::arg("char_min"),
     py::arg("char_max"), py::arg("num_threads") = 0,
     "Feature ids of each text as CSR (offsets[n+1] uint64, ids uint32).");

  m.def("classify_train", [](const py::sequence& texts, py::array_t<int32_t, py::array::c_style | py::array::forcecast> labels,
                             int num_classes, uint64_t buckets, int word_ngrams, int char_min, int char_max,
                             int epochs, float lr, float l2, uint64_t seed, int num_threads) {
    FeatureConfig cfg = feature_config(buckets, word_ngrams, char_min, char_max);
    Texts t = utf8_texts(texts);
    if (labels.ndim() != 1 || static_cast<size_t>(labels.shape(0)) != t.views.size()) {
      throw fastlm::ValueError("labels must be a 1-D array with one label per text");
    }
    fastlm::check(num_classes >= 2, "need at least 2 classes");
    py::array_t<float> weights({static_cast<py::ssize_t>(buckets), static_cast<py::ssize_t>(num_classes)});
    py::array_t<float> bias(num_classes);
    std::fill(weights.mutable_data(), weights.mutable_data() + weights.size(), 0.0f);
    std::fill(bias.mutable_data(), bias.mutable_data() + bias.size(), 0.0f);
    TrainConfig tcfg{epochs, lr, l2, seed, num_threads};
    std::vector<double> losses;
    {
      float* w = weights.mutable_data();
      float* b = bias.mutable_data();
      const int32_t* y = labels.data();
      py::gil_scoped_release release;
      losses = train(t.views, y, num_classes, cfg, tcfg, w, b);
    }
    return py::make_tuple(weights, bias, losses);
  }, py::arg("texts"), py::arg("labels"), py::arg("num_classes"), py::arg("buckets"),
     py::arg("word_ngrams"), py::arg("char_min"), py::arg("char_max"), py::arg("epochs"),
     py::arg("lr"), py::arg("l2"), py::arg("seed"), py::arg("num_threads") = 1,
     "Trains a linear softmax classifier; returns (weights[buckets, k], bias[k], epoch losses).");

  m.def("classify_predict_proba", [](const py::sequence& texts, F32Array weights, F32Array bias,
                                     int word_ngrams, int char_min, int char_max, int num_threads) {
    if (weights.ndim() != 2 || bias.ndim() != 1 || weights.shape(1) != bias.shape(0)) {
      throw fastlm::ValueError("weights must be [buckets, k] and bias [k]");
    }
    const int k = static_cast<int>(bias.shape(0));
    FeatureConfig cfg = feature_config(static_cast<uint64_t>(weights.shape(0)), word_ngrams, char_min, char_max);
    fastlm::check(k >= 2, "need at least 2 classes");
    Texts t = utf8_texts(texts);
    py::array_t<float> out({static_cast<py::ssize_t>(t.views.size()), static_cast<py::ssize_t>(k)});
    {
      const float* w = weights.data();
      const float* b = bias.data();
      float* o = out.mutable_data();
      py::gil_scoped_release release;
      predict_proba(t.views, cfg, w, b, k, o, num_threads);
    }
    return out;
  }, py::arg("texts"), py::arg("weights"), py::arg("bias"), py::arg("word_ngrams"),
     py::arg("char_min"), py::arg("char_max"), py::arg("num_threads") = 0,
     "Class probabilities [n, k] of each text.");

  py::class_<Lexicon>(m, "Lexicon", "Word/phrase lexicon matched on Unicode word boundaries.")
      .def(py::init([](const py::sequence& phrases) {
             Texts t = utf8_texts(phrases);
             return new Lexicon(t.views);
           }), py::arg("phrases"))
      .def_property_readonly("size", &Lexicon::size)
      .def_property_readonly("max_words", &Lexicon::max_words)
      .def("count", [](const Lexicon& lex, const py::sequence& texts, int num_threads) {
        Texts t = utf8_texts(texts);
        const size_t n = t.views.size();
        py::array_t<int64_t> hits(n), words(n);
        {
          int64_t* h = hits.mutable_data();
          int64_t* w = words.mutable_data();
          py::gil_scoped_release release;
          lex.count_batch(t.views, h, w, num_threads);
        }
        return py::make_tuple(hits, words);
      }, py::arg("texts"), py::arg("num_threads") = 0, "(hits[n], words[n]) int64 arrays.");
}
