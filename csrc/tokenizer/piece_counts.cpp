// Parallel piece counting: one open-addressing hash table per worker, merged, then sorted by bytes.
#include "tokenizer/piece_counts.h"

#include <algorithm>
#include <cstring>
#include <deque>
#include <mutex>

#include "common/error.h"
#include "common/thread_pool.h"

namespace fastlm::tokenizer {
namespace {

// Open addressing with linear probing; keys are views into the documents.
class PieceTable {
 public:
  PieceTable() { slots_.resize(1024); }

  void add(std::string_view s, uint64_t count) { add_hashed(s, piece_hash(s), count); }

  static constexpr size_t kMaxLen = 0xFFFFFFFFu;  // longest piece a slot holds

  template <typename Fn>
  void for_each(Fn&& fn) const {
    for (const Slot& sl : slots_)
      if (sl.data) fn(std::string_view(sl.data, sl.len), sl.count);
  }
  size_t size() const { return size_; }

  // `h`: the piece's hash; its low bits pick the slot, its high half is the slot's tag.
  void add_hashed(std::string_view s, uint64_t h, uint64_t count) {
    const uint32_t tag = static_cast<uint32_t>(h >> 32);
    const size_t mask = slots_.size() - 1;
    size_t i = h & mask;
    for (;;) {
      Slot& sl = slots_[i];
      if (!sl.data) break;
      if (sl.tag == tag && sl.len == s.size() && std::memcmp(sl.data, s.data(), s.size()) == 0) {
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
    slots_[i] = {s.data() ? s.data() : "", static_cast<uint32_t>(s.size()), tag, count};
    ++size_;
  }

 private:
  struct Slot {  // 24 bytes
    const char* data = nullptr;
    uint32_t len = 0;
    uint32_t tag = 0;  // high half of the hash
    uint64_t count = 0;
  };

  void grow() {
    std::vector<Slot> old(slots_.size() * 2);
    old.swap(slots_);
    const size_t mask = slots_.size() - 1;
    for (const Slot& sl : old) {
      if (!sl.data) continue;
      size_t i = piece_hash(std::string_view(sl.data, sl.len)) & mask;
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
  for (const std::string_view t : texts)
    check(t.size() <= PieceTable::kMaxLen, "a document is longer than 4 GiB: split it before counting");
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
    tables[k].for_each([&](std::string_view s, uint64_t c) { total.add(s, c); });
  out.reserve(total.size());
  total.for_each([&](std::string_view s, uint64_t c) { out.emplace_back(s, c); });
  std::sort(out.begin(), out.end());  // by bytes: char_traits<char> compares as unsigned char
  return out;
}

}  // namespace fastlm::tokenizer
