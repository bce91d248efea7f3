// Unicode-aware word tokenizer shared by the lexicon filter and the linear text classifier.
//
// A word is a maximal run of "word" code points; everything else separates words. Word code
// points are ASCII letters and digits and every non-ASCII code point outside the punctuation,
// space, symbol and control blocks listed in tokenize.cpp (so letters with diacritics,
// combining marks and CJK ideographs are word characters: "naïve" is one word and "ass" does
// not match inside "class" or "assé"). Words are lowercased with a simple one-to-one mapping
// (ASCII, Latin-1, Latin Extended-A, basic Greek and Cyrillic; other scripts are kept as is).
// Invalid UTF-8 bytes are separators. Reference: tests/reference_classifier.py (bit for bit).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace fastlm::classify {

bool is_word_cp(uint32_t cp);
uint32_t lower_cp(uint32_t cp);

// Decodes one UTF-8 code point at s[i]; advances i. Invalid or truncated sequences yield
// 0xFFFFFFFF and advance by one byte.
uint32_t decode_utf8(std::string_view s, size_t& i);
void append_utf8(std::string& out, uint32_t cp);

// The lowercased words of a text, stored as "w1 w2 w3" (single spaces: a space is never a word
// character) so that any run of consecutive words is one substring of `buf`.
struct Words {
  std::string buf;
  std::vector<size_t> begin, end;  // byte offsets of word k in buf: [begin[k], end[k])
  size_t size() const { return begin.size(); }
  std::string_view word(size_t k) const { return std::string_view(buf).substr(begin[k], end[k] - begin[k]); }
  // Words k .. k+n-1 joined by single spaces.
  std::string_view run(size_t k, size_t n) const {
    return std::string_view(buf).substr(begin[k], end[k + n - 1] - begin[k]);
  }
  void clear() { buf.clear(); begin.clear(); end.clear(); }
};

// Fills `out` (cleared first) with the words of `text`.
void tokenize(std::string_view text, Words& out);

}  // namespace fastlm::classify
