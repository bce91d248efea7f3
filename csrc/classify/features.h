// Hashed n-gram features of the linear text classifier (fastText-style, no vocabulary).
//
// Features of a document, in this order (duplicates kept: they count):
//   1. word n-grams for n = 1..word_ngrams: for each n, each run of n consecutive words,
//      hashed as the words joined by single spaces with hash64(seed = 1);
//   2. character n-grams for each word in order: the word wrapped as "<word>", every run of
//      n code points for n = char_min..char_max (n outer, start inner), hashed as UTF-8 with
//      hash64(seed = 2). char_min = 0 disables them.
// Feature id = hash % buckets. Reference: tests/reference_classifier.py (bit for bit).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "classify/tokenize.h"

namespace fastlm::classify {

struct FeatureConfig {
  uint64_t buckets = 1u << 20;
  int word_ngrams = 2;
  int char_min = 3;
  int char_max = 5;
};

// Throws ValueError on an invalid configuration.
void validate(const FeatureConfig& cfg);

// Scratch buffers reused across documents by one thread.
struct FeatureScratch {
  Words words;
  std::string wrapped;
  std::vector<size_t> cp_offsets;
};

// Appends the feature ids of `text` to `ids` (cleared first).
void featurize(std::string_view text, const FeatureConfig& cfg, FeatureScratch& scratch,
               std::vector<uint32_t>& ids);

}  // namespace fastlm::classify
