// Dedup text normalization (rules in normalize.h): a single pass over UTF-8 bytes.
#include "dedup/normalize.h"

namespace fastlm::dedup {
namespace {

// Decodes one strict UTF-8 code point at p (n bytes left). Returns its length, or 0 if the
// byte at p does not start a valid sequence.
inline size_t decode_utf8(const unsigned char* p, size_t n, uint32_t& cp) {
  unsigned char c = p[0];
  if (c < 0x80) { cp = c; return 1; }
  if (c < 0xC2) return 0;  // continuation byte or overlong 2-byte lead
  if (c < 0xE0) {
    if (n < 2 || (p[1] & 0xC0) != 0x80) return 0;
    cp = (uint32_t(c & 0x1F) << 6) | (p[1] & 0x3F);
    return 2;
  }
  if (c < 0xF0) {
    if (n < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return 0;
    cp = (uint32_t(c & 0x0F) << 12) | (uint32_t(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
    if (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;  // overlong or surrogate
    return 3;
  }
  if (c < 0xF5) {
    if (n < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80) return 0;
    cp = (uint32_t(c & 0x07) << 18) | (uint32_t(p[1] & 0x3F) << 12) | (uint32_t(p[2] & 0x3F) << 6) |
         (p[3] & 0x3F);
    if (cp < 0x10000 || cp > 0x10FFFF) return 0;
    return 4;
  }
  return 0;
}

inline bool is_separator(uint32_t cp) {
  if (cp < 0x80) {
    return !((cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z'));
  }
  if (cp < 0x2000) return cp <= 0xBF || cp == 0xD7 || cp == 0xF7 || cp == 0x1680;
  if (cp <= 0x206F) return true;
  if (cp >= 0x2E00 && cp <= 0x2E7F) return true;
  if (cp >= 0x3000 && cp <= 0x303F) return true;
  if (cp == 0xFEFF) return true;
  if (cp >= 0xFF01 && cp <= 0xFF65) {
    return cp <= 0xFF0F || (cp >= 0xFF1A && cp <= 0xFF20) || (cp >= 0xFF3B && cp <= 0xFF40) ||
           cp >= 0xFF5B;
  }
  return false;
}

inline uint32_t to_lower(uint32_t cp) {
  if (cp < 0x80) return (cp >= 'A' && cp <= 'Z') ? cp + 0x20 : cp;
  if (cp >= 0xC0 && cp <= 0xDE && cp != 0xD7) return cp + 0x20;
  if (cp >= 0x391 && cp <= 0x3A9 && cp != 0x3A2) return cp + 0x20;
  if (cp >= 0x410 && cp <= 0x42F) return cp + 0x20;
  if (cp >= 0x400 && cp <= 0x40F) return cp + 0x50;
  return cp;
}

inline void append_utf8(std::string& s, uint32_t cp) {
  if (cp < 0x80) {
    s.push_back(char(cp));
  } else if (cp < 0x800) {
    s.push_back(char(0xC0 | (cp >> 6)));
    s.push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    s.push_back(char(0xE0 | (cp >> 12)));
    s.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    s.push_back(char(0x80 | (cp & 0x3F)));
  } else {
    s.push_back(char(0xF0 | (cp >> 18)));
    s.push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    s.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    s.push_back(char(0x80 | (cp & 0x3F)));
  }
}

// ASCII class table: 0 = separator, 1 = word byte (lowercased through kLower).
struct AsciiTables {
  bool word[128];
  char lower[128];
  AsciiTables() {
    for (int c = 0; c < 128; ++c) {
      word[c] = !is_separator(uint32_t(c));
      lower[c] = char(to_lower(uint32_t(c)));
    }
  }
};
const AsciiTables kAscii;

}  // namespace

void normalize_words(const char* data, size_t len, Words& out) {
  out.text.clear();
  out.start.clear();
  out.end.clear();
  out.text.reserve(len);
  const unsigned char* p = reinterpret_cast<const unsigned char*>(data);
  bool in_word = false;
  size_t i = 0;
  while (i < len) {
    unsigned char c = p[i];
    bool word_char;
    uint32_t cp = 0;
    size_t step;
    bool invalid = false;
    if (c < 0x80) {  // fast path: ASCII
      word_char = kAscii.word[c];
      step = 1;
      cp = c;
    } else {
      step = decode_utf8(p + i, len - i, cp);
      if (step == 0) {  // invalid byte: a word character kept verbatim
        invalid = true;
        step = 1;
        word_char = true;
      } else {
        word_char = !is_separator(cp);
      }
    }
    if (word_char) {
      if (!in_word) {
        if (!out.start.empty()) out.text.push_back(' ');
        out.start.push_back(out.text.size());
        in_word = true;
      }
      if (invalid) {
        out.text.push_back(char(c));
      } else if (c < 0x80) {
        out.text.push_back(kAscii.lower[c]);
      } else {
        append_utf8(out.text, to_lower(cp));
      }
    } else if (in_word) {
      out.end.push_back(out.text.size());
      in_word = false;
    }
    i += step;
  }
  if (in_word) out.end.push_back(out.text.size());
}

}  // namespace fastlm::dedup
