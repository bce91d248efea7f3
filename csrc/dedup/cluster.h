// Union-find over document indices and the bucket scan shared by MinHash-LSH and SimHash.
#pragma once
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace fastlm::dedup {

// Union-find whose root is always the smallest index of its set (so results do not depend on
// union order), with path halving.
class UnionFind {
 public:
  explicit UnionFind(size_t n) : parent_(n) {
    for (size_t i = 0; i < n; ++i) parent_[i] = i;
  }
  size_t find(size_t x) {
    while (parent_[x] != x) {
      parent_[x] = parent_[parent_[x]];
      x = parent_[x];
    }
    return x;
  }
  // Returns true if x and y were in different sets.
  bool unite(size_t x, size_t y) {
    x = find(x);
    y = find(y);
    if (x == y) return false;
    if (y < x) std::swap(x, y);
    parent_[y] = x;
    return true;
  }
  size_t size() const { return parent_.size(); }

 private:
  std::vector<size_t> parent_;
};

// Counters reported back to Python.
struct ClusterStats {
  uint64_t buckets = 0;     // groups of >= 2 documents sharing a key
  uint64_t compared = 0;    // candidate pairs verified
  uint64_t skipped = 0;     // candidate pairs already in one set (not verified)
  uint64_t capped = 0;      // docs not made representatives because of max_compare
  uint64_t merged = 0;      // verified pairs that joined two sets
  uint64_t exact_checks = 0;  // pairs verified by exact Jaccard
};

// Scans key-sorted (key, doc) entries. Within each run of equal keys (docs ascending), the run
// keeps a list of representatives: the first `max_compare` docs that did not join an earlier
// representative. Each doc is verified against the representatives in order, skipping those
// already in its set (the union-find shortcut); verify(rep, doc) true -> unite. A doc that joined
// none becomes a representative (while the list is short). Work per run is at most
// size * max_compare, so a huge bucket (many exact copies or many unrelated docs sharing a key)
// stays linear; the cost is recall on pairs that only match a non-representative member, which
// other bands usually recover. Deterministic for a given entry order.
template <typename Verify>
void scan_buckets(const std::vector<std::pair<uint64_t, uint32_t>>& entries, size_t max_compare,
                  UnionFind& uf, ClusterStats& st, Verify&& verify) {
  size_t n = entries.size();
  size_t g = 0;
  std::vector<size_t> reps;
  while (g < n) {
    size_t e = g + 1;
    while (e < n && entries[e].first == entries[g].first) ++e;
    if (e - g >= 2) {
      ++st.buckets;
      reps.assign(1, entries[g].second);
      for (size_t j = g + 1; j < e; ++j) {
        size_t dj = entries[j].second;
        bool joined = false;
        for (size_t rep : reps) {
          if (uf.find(rep) == uf.find(dj)) {
            ++st.skipped;
            joined = true;
            continue;
          }
          ++st.compared;
          if (verify(rep, dj)) {
            if (uf.unite(rep, dj)) ++st.merged;
            joined = true;
          }
        }
        if (!joined) {
          if (reps.size() < max_compare) {
            reps.push_back(dj);
          } else {
            ++st.capped;
          }
        }
      }
    }
    g = e;
  }
}

// cluster[i] = smallest index in i's set; duplicate_of[i] = kept doc of the set, or -1 if i is
// kept. Kept: the smallest index, or with keep_longest the longest (ties: smallest index).
void finalize_clusters(UnionFind& uf, const uint64_t* lengths, bool keep_longest, int64_t* cluster,
                       int64_t* duplicate_of);

}  // namespace fastlm::dedup
