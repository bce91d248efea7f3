// SimHash: 64-bit fingerprints from weighted word n-grams, and the permuted-blocks index.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "dedup/cluster.h"
#include "dedup/normalize.h"

namespace fastlm::dedup {

// Features of a document: its word n-gram shingles (same ranges as MinHash), hashed with murmur3
// low 64 bits; weight = number of occurrences (summing +-1 per occurrence is the same thing).
// Bit b of the fingerprint is 1 iff sum over occurrences of (bit b of hash ? +1 : -1) > 0.
// counts[i] = number of feature occurrences (0 = empty doc: fingerprint 0, never a duplicate).
void simhash_fingerprints(const std::vector<TextView>& texts, size_t ngram, uint64_t* out,
                          uint64_t* counts, int num_threads);

// Block b of k+1 blocks over the 64 bits: the first 64 % (k+1) blocks are one bit wider.
// Writes offsets (k+2 entries, last = 64).
std::vector<int> simhash_block_offsets(int k);

// Clusters fingerprints within Hamming distance k: for each of the k+1 blocks, sort (block bits,
// doc) and verify docs sharing the block value (pigeonhole: a pair within distance k agrees on at
// least one block), never all pairs.
ClusterStats simhash_cluster(const uint64_t* fps, const uint64_t* counts, const uint64_t* lengths,
                             size_t n, int k, size_t max_compare, bool keep_longest,
                             int64_t* cluster, int64_t* duplicate_of, int num_threads);

}  // namespace fastlm::dedup
