// Counting pre-tokenized pieces over many documents in parallel (the BPE trainer's input).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenizer/pretokenize.h"

namespace fastlm::tokenizer {

namespace detail {
inline uint64_t load8(const char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

inline uint64_t load_tail(const char* p, size_t n) {  // 0 < n < 8 bytes, zero-extended
  const auto* u = reinterpret_cast<const uint8_t*>(p);
  uint64_t v = 0;
  if (n >= 4) {
    uint32_t a, b;
    std::memcpy(&a, p, 4);
    std::memcpy(&b, p + n - 4, 4);
    return a | (static_cast<uint64_t>(b) << 32);  // overlapping halves: still a function of the bytes and n
  }
  v = u[0] | (static_cast<uint64_t>(u[n >> 1]) << 8) | (static_cast<uint64_t>(u[n - 1]) << 16);
  return v;
}
}  // namespace detail

// A fast 64-bit hash for short byte strings (pieces are a few bytes on average).
inline uint64_t piece_hash(std::string_view s) {
  const uint64_t m = 0x9E3779B97F4A7C15ULL;
  uint64_t h = s.size() * m;
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    h = (h ^ detail::load8(s.data() + i)) * 0xBF58476D1CE4E5B9ULL;
    h ^= h >> 29;
  }
  if (i < s.size()) h = (h ^ detail::load_tail(s.data() + i, s.size() - i)) * 0x94D049BB133111EBULL;
  h ^= h >> 32;
  h *= m;
  return h ^ (h >> 29);
}

// Hash functor for maps keyed by pieces.
struct PieceHash {
  size_t operator()(std::string_view s) const { return static_cast<size_t>(piece_hash(s)); }
};

// Distinct pieces of all `texts` with their counts, sorted by bytes (unsigned). The views point
// into `texts`, which must outlive the result. Threads run over documents (0 = all cores); the
// result does not depend on the thread count.
std::vector<std::pair<std::string_view, uint64_t>> count_pieces(const std::vector<std::string_view>& texts,
                                                                 Pattern pattern, int num_threads);

}  // namespace fastlm::tokenizer
