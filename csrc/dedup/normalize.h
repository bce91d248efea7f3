// Dedup text normalization: UTF-8 bytes -> lowercase words joined by single spaces (version 1).
//
// The rules (mirrored exactly by tests/reference_dedup.py; bump kNormalizationVersion on change):
// - Input is decoded as strict UTF-8 (no overlongs, no surrogates, <= U+10FFFF). A byte that does
//   not start a valid sequence is kept verbatim as a one-byte word character, so invalid input
//   never fails and never merges with valid text by accident.
// - Separators: every ASCII byte except [0-9A-Za-z]; U+0080-U+00BF (C1 controls, NBSP, Latin-1
//   punctuation and symbols), U+00D7, U+00F7; U+1680; U+2000-U+206F (general punctuation, Unicode
//   spaces, dashes, quotes); U+2E00-U+2E7F; U+3000-U+303F (CJK punctuation); U+FEFF; U+FF01-U+FF0F,
//   U+FF1A-U+FF20, U+FF3B-U+FF40, U+FF5B-U+FF65 (fullwidth punctuation).
// - Words are maximal runs of non-separators. Lowercasing: A-Z; U+00C0-U+00DE except U+00D7
//   (+0x20); Greek U+0391-U+03A9 except U+03A2 (+0x20); Cyrillic U+0410-U+042F (+0x20) and
//   U+0400-U+040F (+0x50). Everything else is kept as is (CJK runs stay one word).
// - The normalized text is the words joined by one space: shingle k of n words is then the
//   contiguous byte range text[start[k], end[k+n-1]).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace fastlm::dedup {

constexpr int kNormalizationVersion = 1;

// One input document: bytes owned by the caller (Python objects kept alive by the binding).
struct TextView {
  const char* data;
  size_t size;
};

// Normalized words of one document; reused across documents to avoid reallocation. start/end
// are sized for the worst case of the largest document seen (only the first size() are valid).
struct Words {
  std::vector<char> buf;      // words joined by ' ' (first `length` bytes), then >= 16 readable
  size_t length = 0;          //   padding bytes so hashes may load 16-byte tails unconditionally
  std::vector<size_t> start;  // byte offset of word i in text
  std::vector<size_t> end;    // one past its last byte
  size_t count = 0;           // number of words
  size_t size() const { return count; }
  const char* text() const { return buf.data(); }
};

// Fills `out` (cleared first) with the normalized words of data[0, len).
void normalize_words(const char* data, size_t len, Words& out);

// Number of n-word shingles of a document with `num_words` words: one shingle of all words
// when 0 < num_words < n, none for an empty document.
inline size_t num_shingles(size_t num_words, size_t n) {
  if (num_words == 0) return 0;
  return num_words < n ? 1 : num_words - n + 1;
}

}  // namespace fastlm::dedup
