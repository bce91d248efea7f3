// BPE encoder/decoder over a general byte-string vocabulary (tiktoken's mergeable_ranks rule).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace fastlm::tokenizer {

// A vocabulary tokens[rank] (must hold all 256 single bytes, no duplicates or empty tokens) and
// tiktoken's encoding rule within one piece: a piece in the vocab is one token; otherwise start from its
// bytes and repeatedly merge the adjacent pair whose concatenation has the lowest rank (ties: leftmost)
// until no adjacent concatenation is in the vocab. Long pieces use a linked list + min-heap: O(n log n),
// no recursion. Thread-safe for concurrent const use.
class BpeEncoder {
 public:
  explicit BpeEncoder(std::vector<std::string> tokens);  // throws ValueError on a bad vocabulary

  size_t num_tokens() const { return tokens_.size(); }
  const std::string& token(uint32_t id) const { return tokens_[id]; }

  std::vector<uint32_t> encode_piece(std::string_view piece) const;
  // Appends the ids of `piece` to `out`.
  void encode_piece_into(std::string_view piece, std::vector<uint32_t>& out) const;

  // Concatenated bytes; throws ValueError naming the first id >= num_tokens().
  std::string decode(const uint32_t* ids, size_t n) const;

  // Rank of a byte string, or UINT32_MAX when it is not a token.
  uint32_t rank(std::string_view bytes) const;

 private:
  void encode_small(std::string_view piece, std::vector<uint32_t>& out) const;
  // Id of the token whose bytes are token a + token b, or UINT32_MAX.
  uint32_t pair_id(uint32_t a, uint32_t b) const;
  void encode_large(std::string_view piece, std::vector<uint32_t>& out) const;

  std::vector<std::string> tokens_;
  // Open-addressing table of token ids keyed by their bytes (power-of-two size, UINT32_MAX = empty).
  std::vector<uint32_t> table_;
  std::vector<uint64_t> table_hash_;
  uint64_t mask_ = 0;
  uint32_t byte_rank_[256];
  // (a << 32 | b) -> id of bytes(a) + bytes(b), for every split of every token into two tokens:
  // the same answer as looking up the concatenated bytes, with one integer hash instead.
  std::vector<uint64_t> pair_keys_;
  std::vector<uint32_t> pair_ids_;
  uint64_t pair_mask_ = 0;
};

}  // namespace fastlm::tokenizer
