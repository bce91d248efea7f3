// Trigger-set scan over PEP 393 code units: the native half of the skip-ftfy fast path.
#include "text/scan.h"

#include "common/error.h"
#include "common/thread_pool.h"

namespace fastlm {
namespace text {

TriggerSet::TriggerSet(const uint8_t* bits, size_t nbytes) {
  check(nbytes == kCodePoints / 8, "trigger bitmap must hold 0x110000/8 = 139264 bytes");
  bits_.assign(bits, bits + nbytes);
  for (size_t i = 0; i < 128 / 8; ++i) any_ascii_ = any_ascii_ || bits_[i] != 0;
}

namespace {

// Code units below `first` cannot be triggers; the loop only looks up the rest. For 1-byte
// strings without ASCII triggers this is a compare per byte, which the compiler vectorizes
// poorly but still runs at several GB/s (memory bound on typical documents).
template <typename CharT>
size_t find_impl(const CharT* s, size_t n, const TriggerSet& set) {
  const uint32_t first = set.any_ascii() ? 0u : 0x80u;
  for (size_t i = 0; i < n; ++i) {
    uint32_t c = s[i];
    if (c >= first && set.contains(c)) return i;
  }
  return n;
}

}  // namespace

size_t find_trigger(const CodeUnits& s, const TriggerSet& set) {
  if (s.ascii && !set.any_ascii()) return s.len;
  switch (s.kind) {
    case 1:
      return find_impl(static_cast<const uint8_t*>(s.data), s.len, set);
    case 2:
      return find_impl(static_cast<const uint16_t*>(s.data), s.len, set);
    case 4:
      return find_impl(static_cast<const uint32_t*>(s.data), s.len, set);
    default:
      throw ValueError("string kind must be 1, 2 or 4");
  }
}

std::vector<uint8_t> scan_triggers(const std::vector<CodeUnits>& docs, const TriggerSet& set,
                                   int num_threads) {
  std::vector<uint8_t> flags(docs.size(), 0);
  parallel_for(docs.size(), num_threads, 64, [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) flags[i] = find_trigger(docs[i], set) < docs[i].len;
  });
  return flags;
}

}  // namespace text
}  // namespace fastlm

// Performance notes: on the clean benchmark corpus (pydoc + Shakespeare, mostly ASCII) the scan
// is a small part of the default normalization (~130 MB/s end to end, vs ~4 MB/s for ftfy on
// every document): ASCII strings are decided from CPython's ascii flag without reading them
// unless the trigger set holds ASCII characters (it does only when ftfy's control-character,
// line-break or terminal-escape fixers are switched on).
