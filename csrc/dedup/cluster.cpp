// Cluster finalization: union-find sets -> cluster ids, kept documents and duplicate_of.
#include "dedup/cluster.h"

namespace fastlm::dedup {

void finalize_clusters(UnionFind& uf, const uint64_t* lengths, bool keep_longest, int64_t* cluster,
                       int64_t* duplicate_of) {
  size_t n = uf.size();
  std::vector<int64_t> kept(n, -1);  // per root: the kept document
  for (size_t i = 0; i < n; ++i) {
    size_t r = uf.find(i);
    cluster[i] = int64_t(r);
    int64_t& k = kept[r];
    if (k < 0 || (keep_longest && lengths[i] > lengths[size_t(k)])) k = int64_t(i);
  }
  for (size_t i = 0; i < n; ++i) {
    int64_t k = kept[size_t(cluster[i])];
    duplicate_of[i] = k == int64_t(i) ? -1 : k;
  }
}

}  // namespace fastlm::dedup
