// Parallel piece counting: one open-addressing hash table per worker, merged, then sorted by bytes.
#include "tokenizer/piece_counts.h"

#include <algorithm>
#include <cstring>
#include <deque>
#include <mutex>

#include "common/thread_pool.h"

namespace fastlm::tokenizer {
namespace {

inline uint64_t load_le(const char* p, size_t n) {  // n <= 8 bytes, zero-extended
  uint64_t v = 0;
  std::memcpy(&v, p, n);
  return v;
}

// A fast 64-bit hash for short byte strings (pieces are a few bytes on average).
inline uint64_t piece_hash(std::string_view s) {
  const uint64_t m = 0x9E3779B97F4A7C15ULL;
  uint64_t h = s.size() * m;
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    h = (h ^ load_le(s.data() + i, 8)) * 0xBF58476D1CE4E5B9ULL;
    h ^= h >> 29;
  }
  if (i < s.size()) h = (h ^ load_le(s.data() + i, s.size() - i)) * 0x94D049BB133111EBULL;
  h ^= h >> 32;
  h *= m;
  return h ^ (h >> 29);
}

// Open addressing with linear probing; keys are views into the documents.
class PieceTable {
 public:
  PieceTable() { slots_.resize(1024); }

  void add(std::string_view s, uint64_t count) { add_hashed(s, piece_hash(s), count); }

  template <typename Fn>
  void for_each(Fn&& fn) const {
    for (const Slot& sl : slots_)
      if (sl.data) fn(std::string_view(sl.data, sl.len), sl.hash, sl.count);
  }
  size_t size() const { return size_; }

  void add_hashed(std::string_view s, uint64_t h, uint64_t count) {
    size_t mask = slots_.size() - 1, i = h & mask;
    for (;;) {
      Slot& sl = slots_[i];
      if (!sl.data) break;
      if (sl.hash == h && sl.len == s.size() && std::memcmp(sl.data, s.data(), s.size()) == 0) {
        sl.count += count;
        return;
      }
      i = (i + 1) & mask;
    }
    if (2 * (size_ + 1) > slots_.size()) {
      grow();
      add_hashed(s, h, count);
      return;
    }
    // Empty pieces never occur, but a zero-length view still needs a non-null marker.
    slots_[i] = {s.data() ? s.data() : "", s.size(), h, count};
    ++size_;
  }

 private:
  struct Slot {
    const char* data = nullptr;
    size_t len = 0;
    uint64_t hash = 0;
    uint64_t count = 0;
  };

  void grow() {
    std::vector<Slot> old(slots_.size() * 2);
    old.swap(slots_);
    const size_t mask = slots_.size() - 1;
    for (const Slot& sl : old) {
      if (!sl.data) continue;
      size_t i = sl.hash & mask;
      while (slots_[i].data) i = (i + 1) & mask;
      slots_[i] = sl;
    }
  }

  std::vector<Slot> slots_;
  size_t size_ = 0;
};

}  // namespace

std::vector<std::pair<std::string_view, uint64_t>> count_pieces(const std::vector<std::string_view>& texts,
                                                                 Pattern pattern, int num_threads) {
  // One table per worker: a chunk borrows a free table and returns it when done.
  std::deque<PieceTable> tables;  // stable addresses
  std::vector<PieceTable*> free_tables;
  std::mutex mu;
  parallel_for(texts.size(), num_threads, 4, [&](size_t b, size_t e) {
    PieceTable* t = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (free_tables.empty()) {
        t = &tables.emplace_back();
      } else {
        t = free_tables.back();
        free_tables.pop_back();
      }
    }
    for (size_t i = b; i < e; ++i) {
      const std::string_view text = texts[i];
      for_each_piece(text, pattern, [&](size_t pb, size_t pe) { t->add(text.substr(pb, pe - pb), 1); });
    }
    std::lock_guard<std::mutex> lock(mu);
    free_tables.push_back(t);
  });
  std::vector<std::pair<std::string_view, uint64_t>> out;
  if (tables.empty()) return out;
  PieceTable& total = tables[0];
  for (size_t k = 1; k < tables.size(); ++k)
    tables[k].for_each([&](std::string_view s, uint64_t h, uint64_t c) { total.add_hashed(s, h, c); });
  out.reserve(total.size());
  total.for_each([&](std::string_view s, uint64_t, uint64_t c) { out.emplace_back(s, c); });
  std::sort(out.begin(), out.end());  // by bytes: char_traits<char> compares as unsigned char
  return out;
}

}  // namespace fastlm::tokenizer
