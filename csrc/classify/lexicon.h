// Lexicon matcher: counts occurrences of words and multi-word phrases on word boundaries.
//
// Phrases and texts go through the same tokenizer (tokenize.h: Unicode-aware word boundaries,
// lowercased), so matching is case-insensitive and never matches inside a word. One pass over
// the words: at each position, runs of 1..max_len words are looked up in a hash table of the
// phrases and of their proper prefixes, stopping as soon as a run is neither.
// Hits = number of (position, phrase) matches; a position can match several phrases
// ("bad" and "bad word"). Reference: tests/reference_classifier.py.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "classify/tokenize.h"

namespace fastlm::classify {

class Lexicon {
 public:
  // Throws ValueError naming the phrase's index when a phrase has no word characters.
  explicit Lexicon(const std::vector<std::string_view>& phrases);

  size_t size() const { return num_phrases_; }
  size_t max_words() const { return max_words_; }

  // Hits and word count of one text; `scratch` is reused between calls by one thread.
  void count(std::string_view text, Words& scratch, int64_t& hits, int64_t& words) const;

  // Batch over texts in parallel: hits[i], words[i].
  void count_batch(const std::vector<std::string_view>& texts, int64_t* hits, int64_t* words,
                   int num_threads) const;

 private:
  static constexpr uint8_t kPhrase = 1, kPrefix = 2;
  std::vector<std::string> storage_;                    // normalized phrases and prefixes
  std::unordered_map<std::string_view, uint8_t> table_;  // views into storage_ -> kPhrase|kPrefix
  size_t num_phrases_ = 0;
  size_t max_words_ = 0;
};

}  // namespace fastlm::classify
