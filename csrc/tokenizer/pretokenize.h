// Native pre-tokenization with the exact semantics of the GPT-2, cl100k (gpt4) and o200k regexes.
#pragma once
#include <cstddef>
#include <string_view>
#include <utility>
#include <vector>

namespace fastlm::tokenizer {

enum class Pattern { kGpt2 = 0, kGpt4 = 1, kO200k = 2 };

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
