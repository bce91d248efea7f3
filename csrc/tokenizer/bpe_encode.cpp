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

constexpr uint64_t kNoKey = UINT64_MAX;  // (UINT32_MAX, UINT32_MAX) is never a pair of ids
inline uint64_t pair_key(uint32_t a, uint32_t b) { return (uint64_t(a) << 32) | b; }
inline uint64_t mix_key(uint64_t k) { return fmix64(k); }

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

  // Every way of writing a token as two tokens (a, b): encode_small then merges by integer pairs.
  std::vector<std::pair<uint64_t, uint32_t>> pairs;
  for (uint32_t id = 0; id < tokens_.size(); ++id) {
    const std::string_view t = tokens_[id];
    if (t.size() > kSmallPiece) continue;  // only encode_small uses the table: pieces <= kSmallPiece bytes
    for (size_t k = 1; k < t.size(); ++k) {
      const uint32_t a = rank(t.substr(0, k));
      if (a == kNone) continue;
      const uint32_t b = rank(t.substr(k));
      if (b != kNone) pairs.push_back({pair_key(a, b), id});
    }
  }
  size_t pcap = 16;
  while (pcap < pairs.size() * 2) pcap <<= 1;
  pair_keys_.assign(pcap, kNoKey);
  pair_ids_.assign(pcap, kNone);
  pair_mask_ = pcap - 1;
  for (const auto& [key, id] : pairs) {  // keys are distinct: bytes(a) + bytes(b) is one string
    uint64_t slot = mix_key(key) & pair_mask_;
    while (pair_keys_[slot] != kNoKey) slot = (slot + 1) & pair_mask_;
    pair_keys_[slot] = key;
    pair_ids_[slot] = id;
  }
}

uint32_t BpeEncoder::pair_id(uint32_t a, uint32_t b) const {
  const uint64_t key = pair_key(a, b);
  for (uint64_t slot = mix_key(key) & pair_mask_;; slot = (slot + 1) & pair_mask_) {
    if (pair_keys_[slot] == key) return pair_ids_[slot];
    if (pair_keys_[slot] == kNoKey) return kNone;
  }
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

// tiktoken's scan over parts holding token ids: each round merges the adjacent pair whose merged
// token has the lowest rank (= id). pair_id(a, b) answers "is bytes(a) + bytes(b) a token" with one
// integer lookup, where tiktoken hashes the byte string (measured: see the notes at the end).
void BpeEncoder::encode_small(std::string_view piece, std::vector<uint32_t>& out) const {
  uint32_t ids[kSmallPiece];    // token of each part
  uint32_t ranks[kSmallPiece];  // ranks[i]: id of ids[i] + ids[i + 1] merged, or kNone
  size_t m = piece.size();
  for (size_t i = 0; i < m; ++i) ids[i] = byte_rank_[static_cast<unsigned char>(piece[i])];
  for (size_t i = 0; i + 1 < m; ++i) ranks[i] = pair_id(ids[i], ids[i + 1]);
  ranks[m - 1] = kNone;
  for (;;) {
    uint32_t best = kNone;
    size_t bi = 0;
    for (size_t i = 0; i + 1 < m; ++i)
      if (ranks[i] < best) best = ranks[i], bi = i;  // strict <: the leftmost of equal ranks, as tiktoken
    if (best == kNone) break;
    ids[bi] = best;
    std::memmove(&ids[bi + 1], &ids[bi + 2], (m - bi - 2) * sizeof(uint32_t));
    std::memmove(&ranks[bi + 1], &ranks[bi + 2], (m - bi - 2) * sizeof(uint32_t));
    --m;
    ranks[bi] = bi + 1 < m ? pair_id(ids[bi], ids[bi + 1]) : kNone;
    if (bi > 0) ranks[bi - 1] = pair_id(ids[bi - 1], ids[bi]);
  }
  out.insert(out.end(), ids, ids + m);
}

// Same rule with a doubly linked list of parts and a lazy min-heap of (rank, start, end): O(n log n).
// Each part keeps its token id, so a candidate pair is one integer lookup (pair_id) when the merged
// token would be short enough to be in the pair table, and a byte-string lookup otherwise.
void BpeEncoder::encode_large(std::string_view piece, std::vector<uint32_t>& out) const {
  const size_t n = piece.size();
  check(n < kNone, "BpeEncoder: piece too long");
  // Part starting at byte i (alive[i]) spans [i, next[i]) and is token tok[i]; prev[i] is the
  // previous part's start.
  std::vector<uint32_t> next(n), prev(n), tok(n);
  std::vector<char> alive(n, 1);
  for (size_t i = 0; i < n; ++i) {
    next[i] = static_cast<uint32_t>(i + 1);
    prev[i] = i == 0 ? kNone : static_cast<uint32_t>(i - 1);
    tok[i] = byte_rank_[static_cast<unsigned char>(piece[i])];
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
    const uint32_t mid = next[start];
    const uint32_t end = next[mid];
    const uint32_t r = end - start <= kSmallPiece ? pair_id(tok[start], tok[mid])
                                                  : rank(piece.substr(start, end - start));
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
    tok[e.start] = e.rank;  // the merged token's id is its rank
    if (e.end < n) prev[e.end] = e.start;
    push_pair(e.start);
    push_pair(prev[e.start]);
  }
  for (uint32_t i = 0; i < n; i = next[i]) out.push_back(tok[i]);
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

// Performance notes (2-core dev box, Shakespeare 9.56 MB in 66,895 paragraphs, gpt2 pattern, one
// thread through BpeEncoder.encode_ordinary_batch returning arrays; medians of 5):
// - encode_small looking up each candidate pair's concatenated bytes (murmur hash + compare, as
//   tiktoken does): 42 MB/s for the whole pre-tokenize + BPE chain at vocab 8192.
// - integer pair table (every split of every token of <= 64 bytes into two tokens, built once):
//   48.8 MB/s at 8192, 60.6 MB/s at 32768. Building it over all tokens (no length cap) made a
//   vocabulary holding a 1 MB token quadratic to load: capped at kSmallPiece.
// - in the binding: lists of shared cached ints instead of new ints, and the cyclic GC paused while
//   they are built: Tokenizer.encode_ordinary per paragraph 25.9 -> 36.0 MB/s.
// - encode_large with token ids per part and pair_id for short merged tokens (bench_tokenizer's 1 MB
//   inputs, vocab 8192): one repeated character 0.029 -> 0.017 s, no spaces 0.102 -> 0.090 s
//   (tiktoken: 0.038 s and 0.143 s). Still ~3x the time of 1 MB of ordinary text: the heap's pops
//   dominate; a bucket queue over ranks would need merged ranks to grow monotonically, which
//   general (not merge-trained) vocabularies do not promise.
