// Hand-written matchers with the exact semantics of the gpt2 (r50k), gpt4 (cl100k) and o200k regexes.
//
// Each matcher mirrors its pattern's alternatives in order, as the `regex` module would try them at a
// position: the first alternative that matches wins, and within it quantifiers are greedy with the
// backtracking the regex would do (e.g. `\s+(?!\S)` gives a run of spaces before a word minus its
// last space). The pattern strings (tiktoken's, see tests/test_pretokenize.py):
//   gpt2:  '(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s
//   gpt4:  '(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+
//          |\s++$|\s*[\r\n]|\s+(?!\S)|\s
//   o200k: [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//          |[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//          |\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+
//
// Input bytes: well-formed UTF-8, plus encoded surrogates (ED A0..BF xx, what Python's
// "surrogatepass" writes for lone surrogates), which decode to one code point of class Cs ("other").
// Any other byte that does not start a well-formed sequence (stray continuation bytes, overlong
// forms, truncated sequences, values past U+10FFFF) is one "other" character of 1 byte: not a letter,
// number or space, so it can prefix a word (gpt4/o200k) or join a punctuation run. Pieces always cover
// the input exactly and nothing reads past its end.
#include "tokenizer/pretokenize.h"

#include <cstdint>

#include "tokenizer/unicode_tables.h"

namespace fastlm::tokenizer {
namespace {

namespace U = unicode;
constexpr size_t kNone = static_cast<size_t>(-1);

// Flags of the ASCII characters (the tables are constant-initialized, so this runs after them).
const struct AsciiFlags {
  uint8_t f[128];
  AsciiFlags() {
    for (uint32_t i = 0; i < 128; ++i) f[i] = U::char_flags(i);
  }
} kAscii;

struct Char {
  uint32_t cp;    // code point (0xFFFFFFFF for an invalid byte)
  uint32_t len;   // bytes
  uint8_t flags;  // unicode::Flag bits
};

inline bool is_cont(uint8_t b) { return (b & 0xC0) == 0x80; }

class Text {
 public:
  explicit Text(std::string_view t) : s_(reinterpret_cast<const uint8_t*>(t.data())), n_(t.size()) {}
  size_t size() const { return n_; }

  // The character at byte `pos` (< size()).
  Char at(size_t pos) const {
    const uint8_t b0 = s_[pos];
    if (b0 < 0x80) return {b0, 1, ascii_flags(b0)};
    const size_t left = n_ - pos;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      if (left >= 2 && is_cont(s_[pos + 1])) return make(((b0 & 0x1Fu) << 6) | (s_[pos + 1] & 0x3Fu), 2);
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      if (left >= 3) {
        const uint8_t b1 = s_[pos + 1], b2 = s_[pos + 2];
        const bool ok1 = b0 == 0xE0 ? (b1 >= 0xA0 && b1 <= 0xBF) : is_cont(b1);  // surrogates allowed
        if (ok1 && is_cont(b2))
          return make(((b0 & 0x0Fu) << 12) | ((b1 & 0x3Fu) << 6) | (b2 & 0x3Fu), 3);
      }
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      if (left >= 4) {
        const uint8_t b1 = s_[pos + 1], b2 = s_[pos + 2], b3 = s_[pos + 3];
        const bool ok1 = b0 == 0xF0 ? (b1 >= 0x90 && b1 <= 0xBF)
                                    : b0 == 0xF4 ? (b1 >= 0x80 && b1 <= 0x8F) : is_cont(b1);
        if (ok1 && is_cont(b2) && is_cont(b3))
          return make(((b0 & 0x07u) << 18) | ((b1 & 0x3Fu) << 12) | ((b2 & 0x3Fu) << 6) | (b3 & 0x3Fu), 4);
      }
    }
    return {0xFFFFFFFFu, 1, 0};
  }

  // End of the maximal run of characters from `pos` that have any of the `mask` flags.
  size_t run(size_t pos, uint8_t mask) const {
    while (pos < n_) {
      const Char c = at(pos);
      if (!(c.flags & mask)) break;
      pos += c.len;
    }
    return pos;
  }

  // End of the maximal run of "other" characters (not letter, number or space) from `pos`.
  size_t run_other(size_t pos) const {
    while (pos < n_) {
      const Char c = at(pos);
      if (c.flags & (U::kLetter | U::kNumber | U::kSpace)) break;
      pos += c.len;
    }
    return pos;
  }

  // End of up to `max` number characters from `pos`.
  size_t numbers(size_t pos, int max) const {
    for (int k = 0; k < max && pos < n_; ++k) {
      const Char c = at(pos);
      if (!(c.flags & U::kNumber)) break;
      pos += c.len;
    }
    return pos;
  }

  // Skips \r and \n bytes (and '/' if `slash`) from `pos`.
  size_t skip_bytes(size_t pos, bool slash) const {
    while (pos < n_ && (s_[pos] == '\r' || s_[pos] == '\n' || (slash && s_[pos] == '/'))) ++pos;
    return pos;
  }

  // A contraction starting with the apostrophe at `pos`: 's 't 'd 'm 'll 've 're; `fold` makes it
  // case-insensitive as (?i) does (simple case folding: S, s and U+017F LONG S all fold to s).
  // Returns its end, or kNone.
  size_t contraction(size_t pos, bool fold) const {
    if (pos >= n_ || s_[pos] != '\'') return kNone;
    const uint32_t a = letter(pos + 1, fold);
    if (a == 's' || a == 't' || a == 'd' || a == 'm') return pos + 1 + at(pos + 1).len;
    if (a == 'l' || a == 'v' || a == 'r') {
      const size_t p2 = pos + 1 + at(pos + 1).len;
      const uint32_t b = letter(p2, fold);
      if ((a == 'l' && b == 'l') || (a == 'v' && b == 'e') || (a == 'r' && b == 'e')) return p2 + 1;
    }
    return kNone;
  }

  struct SpaceRun {
    size_t end;         // end of the maximal whitespace run
    size_t last_start;  // start of its last character
    size_t nl_end;      // end of its last \r or \n, or kNone
    size_t count;       // characters in it
  };

  // The whitespace run starting at `pos` (at least one character: the caller checked).
  SpaceRun spaces(size_t pos) const {
    SpaceRun r{pos, pos, kNone, 0};
    while (pos < n_) {
      const Char c = at(pos);
      if (!(c.flags & U::kSpace)) break;
      r.last_start = pos;
      pos += c.len;
      if (c.cp == '\r' || c.cp == '\n') r.nl_end = pos;
      ++r.count;
    }
    r.end = pos;
    return r;
  }

 private:
  static uint8_t ascii_flags(uint8_t b) { return kAscii.f[b]; }
  static Char make(uint32_t cp, uint32_t len) { return {cp, len, U::char_flags(cp)}; }

  // The ASCII letter at `pos` (lowercased and U+017F folded to 's' if `fold`), else 0.
  uint32_t letter(size_t pos, bool fold) const {
    if (pos >= n_) return 0;
    const uint8_t b = s_[pos];
    if (!fold) return b < 0x80 ? b : 0;
    if (b >= 'A' && b <= 'Z') return b + 32u;
    if (b < 0x80) return b;
    return at(pos).cp == 0x17F ? 's' : 0;
  }

  const uint8_t* s_;
  size_t n_;
};

constexpr uint8_t kLN = U::kLetter | U::kNumber;

inline bool is_other(const Char& c) { return !(c.flags & (kLN | U::kSpace)); }
// [^\r\n\p{L}\p{N}]
inline bool is_prefix(const Char& c) { return !(c.flags & kLN) && c.cp != '\r' && c.cp != '\n'; }

size_t next_gpt2(const Text& t, size_t i) {
  const size_t n = t.size();
  const Char c = t.at(i);
  if (c.cp == '\'') {
    const size_t e = t.contraction(i, false);
    if (e != kNone) return e;
  }
  size_t s = i;
  Char d = c;
  if (c.cp == ' ' && i + 1 < n) {
    const Char c2 = t.at(i + 1);
    if (!(c2.flags & U::kSpace)) s = i + 1, d = c2;
  }
  if (d.flags & U::kLetter) return t.run(s, U::kLetter);
  if (d.flags & U::kNumber) return t.run(s, U::kNumber);
  if (is_other(d)) return t.run_other(s);
  const Text::SpaceRun r = t.spaces(i);  // c is whitespace
  if (r.end == n) return n;               // \s++$
  if (r.count >= 2) return r.last_start;  // \s+(?!\S)
  return i + c.len;                       // \s
}

size_t next_gpt4(const Text& t, size_t i) {
  const size_t n = t.size();
  const Char c = t.at(i);
  if (c.cp == '\'') {
    const size_t e = t.contraction(i, true);
    if (e != kNone) return e;
  }
  // [^\r\n\p{L}\p{N}]?+\p{L}++
  if (c.flags & U::kLetter) return t.run(i, U::kLetter);
  if (is_prefix(c) && i + c.len < n && (t.at(i + c.len).flags & U::kLetter)) return t.run(i + c.len, U::kLetter);
  if (c.flags & U::kNumber) return t.numbers(i, 3);  // \p{N}{1,3}+
  // ' ?[^\s\p{L}\p{N}]++[\r\n]*+'
  if (c.cp == ' ' && i + 1 < n && is_other(t.at(i + 1))) return t.skip_bytes(t.run_other(i + 1), false);
  if (is_other(c)) return t.skip_bytes(t.run_other(i), false);
  const Text::SpaceRun r = t.spaces(i);
  if (r.end == n) return n;                  // \s++$
  if (r.nl_end != kNone) return r.nl_end;    // \s*[\r\n]
  if (r.count >= 2) return r.last_start;     // \s+(?!\S)
  return i + c.len;                          // \s
}

// o200k's word alternatives at `i`: `upper_first` selects the second one
// ([^\r\n\p{L}\p{N}]?[Upper]+[Lower]*(?i:contraction)?) instead of the first
// ([^\r\n\p{L}\p{N}]?[Upper]*[Lower]+(?i:contraction)?). Returns kNone if it does not match.
size_t o200k_word(const Text& t, size_t i, const Char& c, bool upper_first) {
  const size_t n = t.size();
  const bool prefix = is_prefix(c);
  for (int p = prefix ? 1 : 0; p >= 0; --p) {  // the optional prefix is tried taken first
    const size_t s = p ? i + c.len : i;
    size_t end = kNone;
    if (!upper_first) {
      // [Upper]* greedy, then [Lower]+: backtracking gives the last start in the Upper run (or just
      // after it) that holds a Lower character.
      size_t pos = s, last_lower = kNone;
      while (pos < n) {
        const Char d = t.at(pos);
        if (!(d.flags & U::kUpper)) {
          if (d.flags & U::kLower) last_lower = pos;
          break;
        }
        if (d.flags & U::kLower) last_lower = pos;
        pos += d.len;
      }
      if (last_lower != kNone) end = t.run(last_lower, U::kLower);
    } else {
      const size_t e = t.run(s, U::kUpper);
      if (e > s) end = t.run(e, U::kLower);
    }
    if (end != kNone) {
      const size_t e = t.contraction(end, true);
      return e != kNone ? e : end;
    }
  }
  return kNone;
}

size_t next_o200k(const Text& t, size_t i) {
  const size_t n = t.size();
  const Char c = t.at(i);
  size_t e = o200k_word(t, i, c, false);
  if (e != kNone) return e;
  e = o200k_word(t, i, c, true);
  if (e != kNone) return e;
  if (c.flags & U::kNumber) return t.numbers(i, 3);  // \p{N}{1,3}
  // ' ?[^\s\p{L}\p{N}]+[\r\n/]*'
  if (c.cp == ' ' && i + 1 < n && is_other(t.at(i + 1))) return t.skip_bytes(t.run_other(i + 1), true);
  if (is_other(c)) return t.skip_bytes(t.run_other(i), true);
  const Text::SpaceRun r = t.spaces(i);
  if (r.nl_end != kNone) return r.nl_end;  // \s*[\r\n]+
  if (r.end == n) return n;                // \s+(?!\S) at the end
  if (r.count >= 2) return r.last_start;   // \s+(?!\S) before a non-space
  return r.end;                            // \s+
}

}  // namespace

size_t next_piece_end(std::string_view utf8, size_t pos, Pattern pattern) {
  const Text t(utf8);
  switch (pattern) {
    case Pattern::kGpt2: return next_gpt2(t, pos);
    case Pattern::kGpt4: return next_gpt4(t, pos);
    case Pattern::kO200k: return next_o200k(t, pos);
  }
  return pos + 1;
}

std::vector<std::pair<size_t, size_t>> pretokenize(std::string_view utf8, Pattern pattern) {
  std::vector<std::pair<size_t, size_t>> out;
  for_each_piece(utf8, pattern, [&](size_t b, size_t e) { out.emplace_back(b, e); });
  return out;
}

}  // namespace fastlm::tokenizer
