// Per-document "might ftfy change this?" scan over a code point trigger set (mojibake pre-scan).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace fastlm {
namespace text {

// A string as CPython stores it (PEP 393): `len` code units of `kind` bytes each (1, 2 or 4).
struct CodeUnits {
  const void* data = nullptr;
  size_t len = 0;
  int kind = 1;
  bool ascii = false;  // all code units < 0x80 (CPython knows this for free)
};

// Set of code points given as a bitmap over [0, 0x110000): bit c is set when code point c
// is a trigger. A document with no trigger is one that ftfy returns unchanged (the Python
// side derives the set from ftfy's own tables; see python/fastlm/data/normalize.py).
class TriggerSet {
 public:
  // `bits` holds (0x110000 / 8) bytes, little-endian bit order within each byte.
  TriggerSet(const uint8_t* bits, size_t nbytes);

  bool contains(uint32_t cp) const {
    return cp < kCodePoints && ((bits_[cp >> 3] >> (cp & 7)) & 1u);
  }
  bool any_ascii() const { return any_ascii_; }

  static constexpr uint32_t kCodePoints = 0x110000;

 private:
  std::vector<uint8_t> bits_;
  bool any_ascii_ = false;
};

// Index of the first trigger code point in `s`, or s.len when there is none.
size_t find_trigger(const CodeUnits& s, const TriggerSet& set);

// For each document: 1 if it contains a trigger, else 0. Threads over documents.
std::vector<uint8_t> scan_triggers(const std::vector<CodeUnits>& docs, const TriggerSet& set,
                                   int num_threads);

}  // namespace text
}  // namespace fastlm
