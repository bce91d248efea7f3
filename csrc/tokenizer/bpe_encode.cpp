// BPE encoding of one piece (tiktoken's lowest-rank-first merge rule) and decoding.
#include "tokenizer/bpe_encode.h"

#include <algorithm>
#include <cstring>
#include <queue>

#include "common/error.h"
#include "common/hash.h"

namespace fastlm::tokenizer {
namespace {

constexpr uint32_t kNone = UINT32_MAX;
constexpr size_t kSmallPiece = 64;  // pieces up to this many bytes use the O(n^2) scan (fewer allocations)

inline uint64_t hash_bytes(std::string_view s) { return hash64(s.data(), s.size(), 0x62706531); }

}  // namespace

BpeEncoder::BpeEncoder(std::vector<std::string> tokens) : tokens_(std::move(tokens)) {
  check(!tokens_.empty(), "BpeEncoder: empty vocabulary");
  check(tokens_.size() < kNone, "BpeEncoder: too many tokens");
  size_t cap = 16;
  while (cap < tokens_.size() * 2) cap <<= 1;
  table_.assign(cap, kNone);
  table_hash_.assign(cap, 0);
  mask_ = cap - 1;
  std::fill(std::begin(byte_rank_), std::end(byte_rank_), kNone);
  for (uint32_t id = 0; id < tokens_.size(); ++id) {
    const std::string& t = tokens_[id];
    check(!t.empty(), "BpeEncoder: token " + std::to_string(id) + " is empty");
    uint64_t h = hash_bytes(t);
    for (uint64_t slot = h & mask_;; slot = (slot + 1) & mask_) {
      if (table_[slot] == kNone) {
        table_[slot] = id;
        table_hash_[slot] = h;
        break;
      }
      check(!(table_hash_[slot] == h && tokens_[table_[slot]] == t),
            "BpeEncoder: duplicate token at ranks " + std::to_string(table_[slot]) + " and " + std::to_string(id));
    }
    if (t.size() == 1) byte_rank_[static_cast<unsigned char>(t[0])] = id;
  }
  for (int b = 0; b < 256; ++b)
    check(byte_rank_[b] != kNone, "BpeEncoder: vocabulary lacks the single byte " + std::to_string(b));
}

uint32_t BpeEncoder::rank(std::string_view bytes) const {
  uint64_t h = hash_bytes(bytes);
  for (uint64_t slot = h & mask_;; slot = (slot + 1) & mask_) {
    uint32_t id = table_[slot];
    if (id == kNone) return kNone;
    if (table_hash_[slot] == h && tokens_[id] == bytes) return id;
  }
}

std::vector<uint32_t> BpeEncoder::encode_piece(std::string_view piece) const {
  std::vector<uint32_t> out;
  encode_piece_into(piece, out);
  return out;
}

void BpeEncoder::encode_piece_into(std::string_view piece, std::vector<uint32_t>& out) const {
  if (piece.empty()) return;
  if (piece.size() == 1) {
    out.push_back(byte_rank_[static_cast<unsigned char>(piece[0])]);
    return;
  }
  uint32_t whole = rank(piece);
  if (whole != kNone) {
    out.push_back(whole);
    return;
  }
  if (piece.size() <= kSmallPiece)
    encode_small(piece, out);
  else
    encode_large(piece, out);
}

// tiktoken's scan: parts[i] = (start byte, rank of the pair starting there); merge the minimum each round.
void BpeEncoder::encode_small(std::string_view piece, std::vector<uint32_t>& out) const {
  struct Part {
    uint32_t start;
    uint32_t rank;
  };
  Part parts[kSmallPiece + 1];
  const size_t n = piece.size();
  size_t m = n + 1;  // parts 0..n-1 are the bytes, part n is the end sentinel
  for (size_t i = 0; i < m; ++i) parts[i] = {static_cast<uint32_t>(i), kNone};
  auto pair_rank = [&](size_t i) -> uint32_t {  // rank of parts[i] + parts[i + 1]
    if (i + 2 >= m) return kNone;
    return rank(piece.substr(parts[i].start, parts[i + 2].start - parts[i].start));
  };
  for (size_t i = 0; i + 2 < m; ++i) parts[i].rank = pair_rank(i);
  for (;;) {
    uint32_t best = kNone;
    size_t bi = 0;
    for (size_t i = 0; i + 1 < m; ++i)
      if (parts[i].rank < best) best = parts[i].rank, bi = i;
    if (best == kNone) break;
    std::memmove(&parts[bi + 1], &parts[bi + 2], (m - bi - 2) * sizeof(Part));
    --m;
    parts[bi].rank = pair_rank(bi);
    if (bi > 0) parts[bi - 1].rank = pair_rank(bi - 1);
  }
  for (size_t i = 0; i + 1 < m; ++i)
    out.push_back(rank(piece.substr(parts[i].start, parts[i + 1].start - parts[i].start)));
}

// Same rule with a doubly linked list of parts and a lazy min-heap of (rank, start, end): O(n log n).
void BpeEncoder::encode_large(std::string_view piece, std::vector<uint32_t>& out) const {
  const size_t n = piece.size();
  check(n < kNone, "BpeEncoder: piece too long");
  // Part starting at byte i (alive[i]) spans [i, next[i]); prev[i] is the previous part's start.
  std::vector<uint32_t> next(n), prev(n);
  std::vector<char> alive(n, 1);
  for (size_t i = 0; i < n; ++i) {
    next[i] = static_cast<uint32_t>(i + 1);
    prev[i] = i == 0 ? kNone : static_cast<uint32_t>(i - 1);
  }
  struct Entry {
    uint32_t rank, start, end;  // pair = part at `start` + the following part, covering [start, end)
    bool operator>(const Entry& o) const { return rank != o.rank ? rank > o.rank : start > o.start; }
  };
  std::vector<Entry> heap_storage;
  heap_storage.reserve(n);
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap(std::greater<Entry>(),
                                                                          std::move(heap_storage));
  auto push_pair = [&](uint32_t start) {
    if (start == kNone || next[start] >= n) return;
    uint32_t end = next[next[start]];
    uint32_t r = rank(piece.substr(start, end - start));
    if (r != kNone) heap.push({r, start, end});
  };
  for (uint32_t i = 0; i + 1 < n; ++i) push_pair(i);
  while (!heap.empty()) {
    Entry e = heap.top();
    heap.pop();
    // Stale unless the part at `start` is alive and it plus its right neighbour still span [start, end).
    if (!alive[e.start] || next[e.start] >= n || next[next[e.start]] != e.end) continue;
    uint32_t right = next[e.start];
    alive[right] = 0;
    next[e.start] = e.end;
    if (e.end < n) prev[e.end] = e.start;
    push_pair(e.start);
    push_pair(prev[e.start]);
  }
  for (uint32_t i = 0; i < n; i = next[i]) out.push_back(rank(piece.substr(i, next[i] - i)));
}

std::string BpeEncoder::decode(const uint32_t* ids, size_t n) const {
  size_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    check(ids[i] < tokens_.size(), "decode: token id " + std::to_string(ids[i]) + " out of range [0, " +
                                       std::to_string(tokens_.size()) + ")");
    total += tokens_[ids[i]].size();
  }
  std::string out;
  out.reserve(total);
  for (size_t i = 0; i < n; ++i) out += tokens_[ids[i]];
  return out;
}

}  // namespace fastlm::tokenizer
