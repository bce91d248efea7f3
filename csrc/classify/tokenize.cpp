// Unicode-aware word tokenizer: word-character table, simple lowercasing, UTF-8 decoding.
#include "classify/tokenize.h"

namespace fastlm::classify {

namespace {
constexpr uint32_t kInvalid = 0xFFFFFFFFu;

// Non-ASCII blocks whose code points separate words: Latin-1 controls/punctuation/symbols,
// general punctuation and spaces, currency, arrows through dingbats and misc symbols,
// supplemental punctuation, CJK punctuation, vertical/small/fullwidth punctuation, specials,
// emoji and pictographs. Anything else non-ASCII is a word character.
struct Range {
  uint32_t lo, hi;
};
constexpr Range kSeparators[] = {
    {0x0080, 0x00A9}, {0x00AB, 0x00B4}, {0x00B6, 0x00B9}, {0x00BB, 0x00BF},
    {0x00D7, 0x00D7}, {0x00F7, 0x00F7}, {0x1680, 0x1680}, {0x2000, 0x206F},
    {0x20A0, 0x20CF}, {0x2190, 0x2BFF}, {0x2E00, 0x2E7F}, {0x3000, 0x303F},
    {0xFE10, 0xFE1F}, {0xFE30, 0xFE6F}, {0xFEFF, 0xFEFF}, {0xFF00, 0xFF0F},
    {0xFF1A, 0xFF20}, {0xFF3B, 0xFF40}, {0xFF5B, 0xFF65}, {0xFFF0, 0xFFFF},
    {0x1F000, 0x1FAFF},
};
}  // namespace

bool is_word_cp(uint32_t cp) {
  if (cp < 0x80) {
    return (cp >= '0' && cp <= '9') || (cp >= 'A' && cp <= 'Z') || (cp >= 'a' && cp <= 'z');
  }
  if (cp > 0x10FFFF) return false;  // invalid UTF-8
  for (const Range& r : kSeparators) {
    if (cp < r.lo) return true;  // ranges are sorted
    if (cp <= r.hi) return false;
  }
  return true;
}

uint32_t lower_cp(uint32_t cp) {
  if (cp < 0x80) return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
  if (cp >= 0x00C0 && cp <= 0x00DE && cp != 0x00D7) return cp + 32;
  if (cp >= 0x0100 && cp <= 0x017F) {
    // Latin Extended-A: pairs (upper, lower), even-first except 0x0139..0x0148 and 0x0179..0x017E.
    if (cp == 0x0178) return 0x00FF;
    if ((cp >= 0x0139 && cp <= 0x0148) || (cp >= 0x0179 && cp <= 0x017E)) return (cp & 1) ? cp + 1 : cp;
    if (cp == 0x0130 || cp == 0x0131 || cp == 0x0138 || cp == 0x0149 || cp == 0x017F) return cp;
    return (cp & 1) ? cp : cp + 1;
  }
  if (cp >= 0x0391 && cp <= 0x03A9 && cp != 0x03A2) return cp + 32;  // Greek
  if (cp >= 0x0410 && cp <= 0x042F) return cp + 32;                  // Cyrillic
  if (cp >= 0x0400 && cp <= 0x040F) return cp + 80;
  return cp;
}

uint32_t decode_utf8(std::string_view s, size_t& i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  unsigned char c = p[i];
  if (c < 0x80) {
    ++i;
    return c;
  }
  int len;
  uint32_t cp, min;
  if ((c & 0xE0) == 0xC0) {
    len = 2; cp = c & 0x1F; min = 0x80;
  } else if ((c & 0xF0) == 0xE0) {
    len = 3; cp = c & 0x0F; min = 0x800;
  } else if ((c & 0xF8) == 0xF0) {
    len = 4; cp = c & 0x07; min = 0x10000;
  } else {
    ++i;
    return kInvalid;
  }
  if (i + len > n) {
    ++i;
    return kInvalid;
  }
  for (int k = 1; k < len; ++k) {
    unsigned char cc = p[i + k];
    if ((cc & 0xC0) != 0x80) {
      ++i;
      return kInvalid;
    }
    cp = (cp << 6) | (cc & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
    ++i;
    return kInvalid;
  }
  i += len;
  return cp;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

void tokenize(std::string_view text, Words& out) {
  out.clear();
  bool in_word = false;
  size_t i = 0;
  while (i < text.size()) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) {  // ASCII fast path (inline, no table calls): most text is ASCII
      ++i;
      const unsigned char lc = c | 0x20;  // lowercases letters; digits are unchanged
      if ((lc >= 'a' && lc <= 'z') || (c >= '0' && c <= '9')) {
        if (!in_word) {
          if (!out.begin.empty()) out.buf.push_back(' ');
          out.begin.push_back(out.buf.size());
          in_word = true;
        }
        out.buf.push_back(static_cast<char>(c >= 'A' && c <= 'Z' ? lc : c));
      } else if (in_word) {
        out.end.push_back(out.buf.size());
        in_word = false;
      }
      continue;
    }
    const uint32_t cp = decode_utf8(text, i);
    if (is_word_cp(cp)) {
      if (!in_word) {
        if (!out.begin.empty()) out.buf.push_back(' ');
        out.begin.push_back(out.buf.size());
        in_word = true;
      }
      uint32_t lc = lower_cp(cp);
      if (lc < 0x80) {
        out.buf.push_back(static_cast<char>(lc));
      } else {
        append_utf8(out.buf, lc);
      }
    } else if (in_word) {
      out.end.push_back(out.buf.size());
      in_word = false;
    }
  }
  if (in_word) out.end.push_back(out.buf.size());
}

}  // namespace fastlm::classify
