// MinHash LSH: per-band sort of (key, doc), bucket scan with verification, union-find clusters.
#include "dedup/lsh.h"

#include <algorithm>

#include "common/error.h"
#include "common/hash.h"
#include "common/thread_pool.h"
#include "dedup/minhash.h"
#include "dedup/simd.h"

namespace fastlm::dedup {
namespace {

// Sorts (key, doc) entries by key, stably: LSD radix sort, 8 byte passes (a pass whose byte is
// the same for all entries is skipped). Docs are pushed ascending, so the result equals
// std::sort by (key, doc); ~3x faster than std::sort at 10^4 random keys.
void sort_entries(std::vector<std::pair<uint64_t, uint32_t>>& e) {
  const size_t n = e.size();
  if (n < 64) return std::sort(e.begin(), e.end());
  std::vector<std::pair<uint64_t, uint32_t>> tmp(n);
  std::vector<uint32_t> count(8 * 256, 0);
  for (const auto& x : e) {
    for (int d = 0; d < 8; ++d) ++count[d * 256 + ((x.first >> (8 * d)) & 255)];
  }
  for (int d = 0; d < 8; ++d) {
    uint32_t* c = count.data() + d * 256;
    if (c[(e[0].first >> (8 * d)) & 255] == n) continue;
    uint32_t sum = 0;
    for (int v = 0; v < 256; ++v) {
      uint32_t c0 = c[v];
      c[v] = sum;
      sum += c0;
    }
    for (const auto& x : e) tmp[c[(x.first >> (8 * d)) & 255]++] = x;
    e.swap(tmp);
  }
}

}  // namespace

void band_keys(const uint64_t* sig, size_t n, size_t num_perm, size_t bands, size_t rows,
               uint64_t* keys, int num_threads) {
  check(bands >= 1 && rows >= 1 && bands * rows <= num_perm,
        "bands * rows must be <= num_perm (and both >= 1)");
  parallel_for(n, num_threads, 256, [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) {
      const uint64_t* s = sig + i * num_perm;
      for (size_t j = 0; j < bands; ++j) keys[i * bands + j] = hash64(s + j * rows, rows * 8, j);
    }
  });
}

ClusterStats lsh_cluster(const LshClusterArgs& a, int64_t* cluster, int64_t* duplicate_of,
                         int num_threads) {
  check(a.n < (uint64_t(1) << 32), "at most 2^32-1 documents per clustering call");
  check(a.verify == Verify::kSignature || (a.hashes && a.hashes->size() == a.n) ||
            (a.texts && a.texts->size() == a.n),
        "exact Jaccard verification needs the texts (or kept shingle hashes) of all documents");
  check(a.num_perm >= 1 && a.bands >= 1, "num_perm and bands must be >= 1");
  // Per band: (key, doc) of non-empty docs, sorted; docs ascending within a key.
  std::vector<std::vector<std::pair<uint64_t, uint32_t>>> entries(a.bands);
  parallel_for(a.bands, num_threads, 1, [&](size_t begin, size_t end) {
    for (size_t j = begin; j < end; ++j) {
      auto& e = entries[j];
      e.reserve(a.n);
      for (size_t i = 0; i < a.n; ++i) {
        if (a.counts[i] > 0) e.emplace_back(a.keys[i * a.bands + j], uint32_t(i));
      }
      sort_entries(e);
    }
  });

  auto estimate = [&](size_t i, size_t j) {
    const uint64_t* x = a.sig + i * a.num_perm;
    const uint64_t* y = a.sig + j * a.num_perm;
    return double(count_equal(x, y, a.num_perm)) / double(a.num_perm);
  };
  auto borderline = [&](double est) {
    return est > a.threshold - a.margin && est < a.threshold + a.margin;
  };

  // Shingle sets for exact checks, computed once per doc and in parallel up front: for every doc
  // in a shared bucket (kJaccard), or for the docs of borderline pairs with their bucket's first
  // doc (kAuto, a good guess of the pairs the scan will check; any other is computed lazily).
  // The guessed pairs' Jaccard tests are then run in parallel too and looked up by the scan.
  std::vector<std::vector<uint32_t>> sets;
  std::vector<char> have;
  std::vector<uint64_t> guess;  // (i << 32) | j, i < j, sorted
  std::vector<char> guess_ok;
  auto set_of = [&](size_t i) {
    return a.hashes ? shingle_set(a.hashes->hashes(i), a.hashes->count[i])
                    : shingle_set((*a.texts)[i], a.ngram);
  };
  if (a.verify != Verify::kSignature) {
    sets.resize(a.n);
    have.assign(a.n, 0);
    std::vector<std::vector<uint64_t>> band_guess(a.bands);  // per band, in parallel
    parallel_for(a.bands, num_threads, 1, [&](size_t begin, size_t end) {
      for (size_t b = begin; b < end; ++b) {
        const auto& e = entries[b];
        size_t g = 0;
        for (size_t k = 1; k < e.size(); ++k) {
          if (e[k].first != e[g].first) {
            g = k;
            continue;
          }
          if (a.verify == Verify::kJaccard || borderline(estimate(e[g].second, e[k].second))) {
            uint64_t i = std::min(e[g].second, e[k].second);
            uint64_t j = std::max(e[g].second, e[k].second);
            band_guess[b].push_back(i << 32 | j);
          }
        }
      }
    });
    for (const auto& bg : band_guess) guess.insert(guess.end(), bg.begin(), bg.end());
    std::sort(guess.begin(), guess.end());
    guess.erase(std::unique(guess.begin(), guess.end()), guess.end());
    std::vector<char> need(a.n, 0);
    for (uint64_t q : guess) need[q >> 32] = need[q & 0xFFFFFFFFu] = 1;
    parallel_for(a.n, num_threads, 16, [&](size_t begin, size_t end) {
      for (size_t i = begin; i < end; ++i) {
        if (need[i]) {
          sets[i] = set_of(i);
          have[i] = 1;
        }
      }
    });
    guess_ok.resize(guess.size());
    parallel_for(guess.size(), num_threads, 64, [&](size_t begin, size_t end) {
      for (size_t q = begin; q < end; ++q) {
        guess_ok[q] = jaccard_sorted(sets[guess[q] >> 32], sets[guess[q] & 0xFFFFFFFFu]) >=
                      a.threshold;
      }
    });
  }
  auto exact = [&](size_t i, size_t j) {
    uint64_t key = uint64_t(std::min(i, j)) << 32 | std::max(i, j);
    auto it = std::lower_bound(guess.begin(), guess.end(), key);
    if (it != guess.end() && *it == key) return guess_ok[it - guess.begin()] != 0;
    for (size_t d : {i, j}) {
      if (!have[d]) {
        sets[d] = set_of(d);
        have[d] = 1;
      }
    }
    return jaccard_sorted(sets[i], sets[j]) >= a.threshold;
  };

  ClusterStats st;
  auto verify = [&](size_t i, size_t j) {
    if (a.verify == Verify::kJaccard) {
      ++st.exact_checks;
      return exact(i, j);
    }
    double est = estimate(i, j);
    if (a.verify == Verify::kAuto && borderline(est)) {
      ++st.exact_checks;
      return exact(i, j);
    }
    return est >= a.threshold;
  };
  UnionFind uf(a.n);
  for (const auto& e : entries) scan_buckets(e, a.max_compare, uf, st, verify);
  finalize_clusters(uf, a.lengths, a.keep_longest, cluster, duplicate_of);
  return st;
}

}  // namespace fastlm::dedup
