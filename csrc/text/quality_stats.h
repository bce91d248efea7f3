// Gopher quality statistics (words, mean length, symbols, bullet/ellipsis lines, alphabetic and
// stop words) in one native pass per document.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "text/scan.h"

namespace fastlm {
namespace text {

// Unicode facts come from Python so that the counts match str.isalpha()/str.lower() exactly.
struct QualityOptions {
  std::vector<uint32_t> strip;                    // punctuation stripped from word ends
  std::vector<uint8_t> alpha_bits;                // bit c set iff chr(c).isalpha(); 0x110000/8 B
  std::unordered_map<uint32_t, std::u32string> lower;  // chr(c).lower() where it differs
  std::vector<std::u32string> stop_words;         // compared with each word's lower()
  std::vector<std::u32string> bullets;            // prefixes of lstrip()'d bullet lines
};

// Row layout, per document: [0] words [1] total word length [2] count of "#"
// [3] count of "..." (non-overlapping, as str.count) plus "…" [4] lines (str.splitlines(), at
// least 1) [5] bullet lines [6] lines ending (after rstrip) in "..." or "…" [7] words with an
// alphabetic character [8] stop words.
constexpr size_t kQualityColumns = 9;

// Row-major [docs, kQualityColumns].
std::vector<int64_t> quality_stats_batch(const std::vector<CodeUnits>& docs,
                                         const QualityOptions& opt, int num_threads);

}  // namespace text
}  // namespace fastlm
