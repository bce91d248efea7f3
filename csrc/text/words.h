// Python-compatible word splitting shared by the native quality statistics (str.split + strip).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace fastlm {
namespace text {

// Python's str.isspace() for one code point (the separators of str.split / str.strip).
inline bool is_py_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
         c == 0x202F || c == 0x205F || c == 0x3000;
}

// Line boundaries of Python's str.splitlines() (\r\n counts as one).
inline bool is_py_line_break(uint32_t c) {
  return c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D ||
         c == 0x1E || c == 0x85 || c == 0x2028 || c == 0x2029;
}

// A set of code points: a bitmap for the BMP, a sorted list above it.
class CharSet {
 public:
  CharSet() = default;
  explicit CharSet(const std::vector<uint32_t>& cps) : bmp_(0x10000 / 8, 0) {
    for (uint32_t c : cps) {
      if (c < 0x10000)
        bmp_[c >> 3] |= static_cast<uint8_t>(1u << (c & 7));
      else
        astral_.push_back(c);
    }
    std::sort(astral_.begin(), astral_.end());
  }
  bool contains(uint32_t c) const {
    if (c < 0x10000) return !bmp_.empty() && ((bmp_[c >> 3] >> (c & 7)) & 1u);
    return std::binary_search(astral_.begin(), astral_.end(), c);
  }

 private:
  std::vector<uint8_t> bmp_;
  std::vector<uint32_t> astral_;
};

// Calls fn(begin, end) for each word of s[0, n): whitespace-separated tokens with leading and
// trailing `strip` code points removed; tokens that are stripped to nothing are skipped
// (python/fastlm/data/quality.py::words_of).
template <typename CharT, typename Fn>
void for_each_word(const CharT* s, size_t n, const CharSet& strip, Fn&& fn) {
  for (size_t i = 0; i < n;) {
    while (i < n && is_py_space(s[i])) ++i;
    size_t b = i;
    while (i < n && !is_py_space(s[i])) ++i;
    size_t e = i;
    while (b < e && strip.contains(s[b])) ++b;
    while (e > b && strip.contains(s[e - 1])) --e;
    if (b < e) fn(b, e);
  }
}

}  // namespace text
}  // namespace fastlm
