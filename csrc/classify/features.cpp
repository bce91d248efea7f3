// Hashed word and character n-gram features (see features.h for the exact definition).
#include "classify/features.h"

#include "common/error.h"
#include "common/hash.h"

namespace fastlm::classify {

void validate(const FeatureConfig& cfg) {
  check(cfg.buckets >= 1 && cfg.buckets <= (uint64_t{1} << 32), "buckets must be in [1, 2**32]");
  check(cfg.word_ngrams >= 0 && cfg.word_ngrams <= 16, "word_ngrams must be in [0, 16]");
  check(cfg.char_min >= 0 && cfg.char_max <= 32, "char n-gram lengths must be in [0, 32]");
  check(cfg.char_min == 0 || (cfg.char_min >= 1 && cfg.char_max >= cfg.char_min),
        "char n-grams need 1 <= min <= max (or min = 0 to disable them)");
  check(cfg.word_ngrams > 0 || cfg.char_min > 0, "no features: enable word or char n-grams");
}

void featurize(std::string_view text, const FeatureConfig& cfg, FeatureScratch& s,
               std::vector<uint32_t>& ids) {
  ids.clear();
  tokenize(text, s.words);
  const Words& w = s.words;
  const size_t nw = w.size();
  const uint64_t buckets = cfg.buckets;
  auto emit = [&](std::string_view bytes, uint64_t seed) {
    ids.push_back(static_cast<uint32_t>(hash64(bytes.data(), bytes.size(), seed) % buckets));
  };

  for (size_t n = 1; n <= static_cast<size_t>(cfg.word_ngrams) && n <= nw; ++n) {
    for (size_t k = 0; k + n <= nw; ++k) emit(w.run(k, n), 1);
  }
  if (cfg.char_min == 0) return;

  for (size_t k = 0; k < nw; ++k) {
    // "<word>" and the byte offset of each code point (plus the end) to cut n-grams.
    s.wrapped.assign("<");
    s.wrapped.append(w.word(k));
    s.wrapped.push_back('>');
    std::string_view wrapped(s.wrapped);
    bool ascii = true;
    for (char ch : wrapped) ascii &= static_cast<unsigned char>(ch) < 0x80;
    if (ascii) {  // fast path: code points are bytes
      const size_t len = wrapped.size();
      for (size_t n = cfg.char_min; n <= static_cast<size_t>(cfg.char_max) && n <= len; ++n) {
        for (size_t i = 0; i + n <= len; ++i) emit(wrapped.substr(i, n), 2);
      }
      continue;
    }
    s.cp_offsets.clear();
    for (size_t i = 0; i < s.wrapped.size(); ++i) {
      if ((static_cast<unsigned char>(s.wrapped[i]) & 0xC0) != 0x80) s.cp_offsets.push_back(i);
    }
    const size_t ncp = s.cp_offsets.size();
    s.cp_offsets.push_back(s.wrapped.size());
    for (size_t n = cfg.char_min; n <= static_cast<size_t>(cfg.char_max) && n <= ncp; ++n) {
      for (size_t i = 0; i + n <= ncp; ++i) {
        emit(wrapped.substr(s.cp_offsets[i], s.cp_offsets[i + n] - s.cp_offsets[i]), 2);
      }
    }
  }
}

}  // namespace fastlm::classify

// Performance notes (4 MB of pydoc + Shakespeare, 1 thread, 2-core VM; benchmarks/bench_classifier.py):
// - featurize ~31 MB/s at first. Hashing dominates: ~14 murmur3 calls per 6-byte word (uni/bigram
//   + char 3..5-grams), ~30 cycles each; the hash is fixed by the spec (hash.h), so it stays.
// - ASCII fast paths (tokenizer: inline class/lowercase test instead of the Unicode table calls;
//   here: byte offsets instead of a code-point offset table): 31 -> 37 MB/s. Kept.
// - h & (buckets - 1) instead of h % buckets for power-of-two buckets: no measurable change
//   (37.8 vs 37.0 MB/s, within noise). Dropped: one code path.
