// Gopher repetition statistics (duplicate paragraphs/lines, top and duplicate word n-grams).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "text/scan.h"
#include "text/words.h"

namespace fastlm {
namespace text {

// Which statistics to compute. Word boundaries follow Python's str.split(); each token is
// stripped of leading/trailing code points in `strip` and dropped if nothing is left
// (python/fastlm/data/quality.py::words_of).
struct RepetitionOptions {
  std::vector<uint32_t> strip;  // punctuation stripped from word ends
  std::vector<int> top_ns;      // n for "top n-gram character fraction"
  std::vector<int> dup_ns;      // n for "duplicate n-gram character fraction"
};

// Row layout of the result, per document (all counts in code points / items):
// [0] len(text)  [1] paragraphs  [2] duplicate paragraphs  [3] their characters
// [4] non-empty lines  [5] duplicate lines  [6] their characters
// [7 + i] characters of the top top_ns[i]-gram  [7 + |top| + j] duplicate dup_ns[j]-gram chars
constexpr size_t kRepetitionFixed = 7;

std::vector<int64_t> repetition_stats(const CodeUnits& s, const RepetitionOptions& opt);

// Rows for every document, row-major, (kRepetitionFixed + |top_ns| + |dup_ns|) per document.
std::vector<int64_t> repetition_stats_batch(const std::vector<CodeUnits>& docs,
                                            const RepetitionOptions& opt, int num_threads);

}  // namespace text
}  // namespace fastlm
