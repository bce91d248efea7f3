// Lexicon matcher: one pass over a text's words with a phrase/prefix hash table.
#include "classify/lexicon.h"

#include <algorithm>
#include <map>

#include "common/error.h"
#include "common/thread_pool.h"

namespace fastlm::classify {

Lexicon::Lexicon(const std::vector<std::string_view>& phrases) {
  // Collect normalized phrases and prefixes first: table_ holds views into storage_, which
  // must not move after the table is built.
  std::map<std::string, uint8_t> flags;
  Words w;
  for (size_t p = 0; p < phrases.size(); ++p) {
    tokenize(phrases[p], w);
    check(w.size() > 0, "lexicon entry " + std::to_string(p) + " has no word characters");
    max_words_ = std::max(max_words_, w.size());
    for (size_t n = 1; n < w.size(); ++n) flags[std::string(w.run(0, n))] |= kPrefix;
    flags[std::string(w.run(0, w.size()))] |= kPhrase;
  }
  storage_.reserve(flags.size());
  for (const auto& [key, flag] : flags) {
    storage_.push_back(key);
    if (flag & kPhrase) ++num_phrases_;
  }
  table_.reserve(flags.size());
  size_t i = 0;
  for (const auto& [key, flag] : flags) table_.emplace(std::string_view(storage_[i++]), flag);
}

void Lexicon::count(std::string_view text, Words& w, int64_t& hits, int64_t& words) const {
  tokenize(text, w);
  const size_t nw = w.size();
  hits = 0;
  words = static_cast<int64_t>(nw);
  if (table_.empty()) return;
  for (size_t k = 0; k < nw; ++k) {
    const size_t longest = std::min(max_words_, nw - k);
    for (size_t n = 1; n <= longest; ++n) {
      auto it = table_.find(w.run(k, n));
      if (it == table_.end()) break;
      if (it->second & kPhrase) ++hits;
      if (!(it->second & kPrefix)) break;
    }
  }
}

void Lexicon::count_batch(const std::vector<std::string_view>& texts, int64_t* hits, int64_t* words,
                          int num_threads) const {
  parallel_for(texts.size(), num_threads, 64, [&](size_t begin, size_t end) {
    Words w;
    for (size_t i = begin; i < end; ++i) count(texts[i], w, hits[i], words[i]);
  });
}

}  // namespace fastlm::classify

// Performance notes (4 MB of pydoc + Shakespeare paragraphs, 1 thread, shared 2-core VM, so
// +-30% between runs; benchmarks/bench_classifier.py):
// - Tokenize once + one hash lookup per word (more only while a run is a phrase prefix):
//   ~100-120 MB/s with 1, 18 or 20,000 entries alike (the table size barely matters), vs ~33 MB/s
//   for one Python `re` alternation with \b (which also misses overlapping matches) and ~7 MB/s
//   for Python tokenize + set lookups. Kept.
// - Aho-Corasick over the lowercased word buffer was considered, not built: the tokenizer pass
//   (needed anyway for Unicode boundaries and lowercasing) is about half of the time, so it could
//   at most roughly double the speed, at the cost of an automaton and boundary re-checks.
