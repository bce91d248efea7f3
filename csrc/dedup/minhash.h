// Exact-duplicate hashes, shingle hashes and MinHash signatures over normalized documents.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "dedup/normalize.h"

namespace fastlm::dedup {

// How shingles are hashed and permuted (see python/fastlm/data/dedup.py for the contract).
enum class MinHashMode : int {
  kFast = 0,           // x = murmur3 low 32 bits; h_i = (a_i*x + b_i) mod (2^61-1), exact
  kDatasketch = 1,     // datasketch>=2 "affine32": x = fmix32(sha1_hash32); h_i = a_i*x + b_i mod 2^32
  kDatasketchLegacy = 2,  // datasketch<2 "legacy": ((a_i*x + b_i) mod 2^64) mod (2^61-1), low 32 bits
};

constexpr uint64_t kMersenne61 = (uint64_t(1) << 61) - 1;

// Value of an empty signature slot: nothing hashed yet.
inline uint64_t empty_slot(MinHashMode mode) {
  return mode == MinHashMode::kFast ? ~uint64_t(0) : uint64_t(0xFFFFFFFFu);
}

struct MinHashParams {
  size_t num_perm;
  size_t ngram;
  MinHashMode mode;
  const uint64_t* a;  // num_perm permutation multipliers
  const uint64_t* b;  // num_perm permutation offsets
};

// out[2*i], out[2*i+1] = (lo, hi) of murmur3_128 of the normalized text of document i.
void exact_hashes(const std::vector<TextView>& texts, uint64_t* out, int num_threads);

// Hashes of the shingles of one normalized document, in order (duplicates kept): murmur 64-bit
// for kFast, sha1_hash32 (before any mixing) for the datasketch modes.
void shingle_hashes(const Words& words, size_t ngram, MinHashMode mode, std::vector<uint64_t>& out);

// 32-bit shingle hashes of each document, in order (duplicates kept): the x that MinHash used
// (murmur low 32 bits in kFast, sha1_hash32 in the datasketch modes). Kept for exact checks.
// One flat buffer: document i's hashes at data[offset[i]], count[i] of them. Each slot range is
// sized by the bound (bytes + 1) / 2 on words (a word and a separator take >= 2 bytes), allocated
// uninitialized, so only the pages written are ever touched.
struct ShingleHashes {
  std::unique_ptr<uint32_t[]> data;
  std::vector<size_t> offset, count;
  size_t size() const { return count.size(); }
  const uint32_t* hashes(size_t i) const { return data.get() + offset[i]; }
};

// sig[i*num_perm + k] = min over shingles of permutation k; counts[i] = number of shingles.
// When keep is non-null it is refilled with every document's hashes.
void minhash_signatures(const std::vector<TextView>& texts, const MinHashParams& p, uint64_t* sig,
                        uint64_t* counts, int num_threads, ShingleHashes* keep = nullptr);

// Sorted distinct 32-bit shingle hashes (murmur low 32 bits, as kFast) of one document.
std::vector<uint32_t> shingle_set(const TextView& text, size_t ngram);

// Sorted distinct values of m kept 32-bit shingle hashes (see ShingleHashes).
std::vector<uint32_t> shingle_set(const uint32_t* hashes, size_t m);

// |A & B| / |A | B| of two sorted distinct sets; 0 when both are empty.
double jaccard_sorted(const std::vector<uint32_t>& a, const std::vector<uint32_t>& b);

}  // namespace fastlm::dedup
