// Native pre-tokenization with the exact semantics of the GPT-2, cl100k (gpt4) and o200k regexes.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/error.h"

namespace fastlm::tokenizer {

enum class Pattern { kGpt2 = 0, kGpt4 = 1, kO200k = 2 };

// The Pattern of a Python-side id; throws ValueError for anything else.
inline Pattern pattern_from_int(int id) {
  check(id >= 0 && id <= 2, "pattern must be 0 (gpt2), 1 (gpt4) or 2 (o200k), got " + std::to_string(id));
  return static_cast<Pattern>(id);
}

// Byte ranges [begin, end) of the pieces of a UTF-8 text, in order, covering it exactly.
// Invalid UTF-8 bytes are treated as described in pretokenize.cpp (never a crash).
std::vector<std::pair<size_t, size_t>> pretokenize(std::string_view utf8, Pattern pattern);

// End of the piece that starts at byte `pos` (< utf8.size()); always > pos.
size_t next_piece_end(std::string_view utf8, size_t pos, Pattern pattern);

// Calls fn(begin, end) for each piece in order, without building a vector.
template <typename Fn>
void for_each_piece(std::string_view utf8, Pattern pattern, Fn&& fn) {
  size_t pos = 0;
  while (pos < utf8.size()) {
    const size_t end = next_piece_end(utf8, pos, pattern);
    fn(pos, end);
    pos = end;
  }
}

}  // namespace fastlm::tokenizer
