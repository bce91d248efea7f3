// SimHash fingerprints (parallel over documents) and permuted-blocks clustering.
#include "dedup/simhash.h"

#include <algorithm>

#include "common/error.h"
#include "common/hash.h"
#include "common/thread_pool.h"
#include "dedup/minhash.h"
#include "dedup/simd.h"

namespace fastlm::dedup {

void simhash_fingerprints(const std::vector<TextView>& texts, size_t ngram, uint64_t* out,
                          uint64_t* counts, int num_threads) {
  check(ngram >= 1, "ngram must be >= 1");
  parallel_for(texts.size(), num_threads, 16, [&](size_t begin, size_t end) {
    Words w;
    std::vector<uint64_t> hashes;
    for (size_t i = begin; i < end; ++i) {
      normalize_words(texts[i].data, texts[i].size, w);
      shingle_hashes(w, ngram, MinHashMode::kFast, hashes);
      // v[b] = sum of +-1 = 2 * ones[b] - total; bit b is set iff v[b] > 0.
      uint64_t ones[64] = {0};
      count_bits(hashes.data(), hashes.size(), ones);
      uint64_t fp = 0;
      for (int b = 0; b < 64; ++b) fp |= uint64_t(2 * ones[b] > hashes.size()) << b;
      out[i] = fp;
      counts[i] = hashes.size();
    }
  });
}

std::vector<int> simhash_block_offsets(int k) {
  check(k >= 0 && k < 64, "k must be in [0, 63]");
  int blocks = k + 1, base = 64 / blocks, extra = 64 % blocks;
  std::vector<int> off(1, 0);
  for (int b = 0; b < blocks; ++b) off.push_back(off.back() + base + (b < extra ? 1 : 0));
  return off;
}

ClusterStats simhash_cluster(const uint64_t* fps, const uint64_t* counts, const uint64_t* lengths,
                             size_t n, int k, size_t max_compare, bool keep_longest,
                             int64_t* cluster, int64_t* duplicate_of, int num_threads) {
  check(n < (uint64_t(1) << 32), "at most 2^32-1 documents per clustering call");
  std::vector<int> off = simhash_block_offsets(k);
  size_t blocks = off.size() - 1;
  std::vector<std::vector<std::pair<uint64_t, uint32_t>>> entries(blocks);
  parallel_for(blocks, num_threads, 1, [&](size_t begin, size_t end) {
    for (size_t b = begin; b < end; ++b) {
      int width = off[b + 1] - off[b];
      uint64_t mask = width == 64 ? ~uint64_t(0) : ((uint64_t(1) << width) - 1);
      auto& e = entries[b];
      e.reserve(n);
      for (size_t i = 0; i < n; ++i) {
        if (counts[i] > 0) e.emplace_back((fps[i] >> off[b]) & mask, uint32_t(i));
      }
      std::sort(e.begin(), e.end());
    }
  });
  ClusterStats st;
  UnionFind uf(n);
  auto verify = [&](size_t i, size_t j) { return __builtin_popcountll(fps[i] ^ fps[j]) <= k; };
  for (const auto& e : entries) scan_buckets(e, max_compare, uf, st, verify);
  finalize_clusters(uf, lengths, keep_longest, cluster, duplicate_of);
  return st;
}

}  // namespace fastlm::dedup
