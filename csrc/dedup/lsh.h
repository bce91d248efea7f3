// MinHash LSH: band keys from signatures, candidate buckets, verification and clustering.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "dedup/cluster.h"
#include "dedup/minhash.h"
#include "dedup/normalize.h"

namespace fastlm::dedup {

// keys[i*bands + j] = murmur3 low 64 bits (seed j) of the bytes of sig[i, j*rows : (j+1)*rows]
// (uint64 little-endian). Requires bands*rows <= num_perm.
void band_keys(const uint64_t* sig, size_t n, size_t num_perm, size_t bands, size_t rows,
               uint64_t* keys, int num_threads);

enum class Verify : int {
  kSignature = 0,  // estimate (equal slots / num_perm) >= threshold
  kJaccard = 1,    // exact Jaccard of the 32-bit shingle hash sets >= threshold
  kAuto = 2,       // estimate, but exact Jaccard when |estimate - threshold| < margin
};

struct LshClusterArgs {
  const uint64_t* keys;     // n x bands
  size_t n, bands;
  const uint64_t* sig;      // n x num_perm
  size_t num_perm;
  const uint64_t* counts;   // shingles per doc: 0 = empty, never a duplicate
  const uint64_t* lengths;  // bytes per doc (keep_longest)
  double threshold;
  Verify verify;
  double margin;
  const std::vector<TextView>* texts;  // kJaccard / kAuto need texts (re-shingled, murmur) or
  const ShingleHashes* hashes;         // the kept 32-bit hashes (preferred: no re-shingling)
  size_t ngram;
  size_t max_compare;
  bool keep_longest;
};

// Clusters documents; writes cluster ids and duplicate_of (see finalize_clusters).
ClusterStats lsh_cluster(const LshClusterArgs& a, int64_t* cluster, int64_t* duplicate_of,
                         int num_threads);

}  // namespace fastlm::dedup
