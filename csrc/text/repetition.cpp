// Gopher repetition statistics in one native pass per document; the Python definitions in
// python/fastlm/data/quality.py are the reference (tests/test_quality.py compares them).
#include "text/repetition.h"

#include <algorithm>
#include <unordered_map>
#include <unordered_set>

#include "common/error.h"
#include "common/thread_pool.h"

namespace fastlm {
namespace text {

namespace {

// A [begin, end) range of code units in the document; equality compares contents exactly
// (no hash-only comparisons, so the counts match Python's set/Counter semantics).
struct Span {
  size_t begin, end;
};

template <typename CharT>
struct SpanOps {
  const CharT* s;
  size_t operator()(const Span& x) const {  // FNV-1a over code units
    uint64_t h = 1469598103934665603ull;
    for (size_t i = x.begin; i < x.end; ++i) h = (h ^ s[i]) * 1099511628211ull;
    return static_cast<size_t>(h);
  }
  bool operator()(const Span& a, const Span& b) const {
    return a.end - a.begin == b.end - b.begin && std::equal(s + a.begin, s + a.end, s + b.begin);
  }
};

// Count items already seen, and their total length (Python: _duplicates).
template <typename CharT>
void duplicates(const CharT* s, const std::vector<Span>& items, int64_t& count, int64_t& chars) {
  SpanOps<CharT> ops{s};
  std::unordered_set<Span, SpanOps<CharT>, SpanOps<CharT>> seen(items.size() * 2 + 1, ops, ops);
  count = chars = 0;
  for (const Span& x : items) {
    if (!seen.insert(x).second) {
      ++count;
      chars += static_cast<int64_t>(x.end - x.begin);
    }
  }
}

// Open-addressing set of word n-grams, keyed by their first start index. Hashes are
// polynomial rolling hashes of the word ids (O(1) per n-gram from prefix hashes); equal hashes
// are confirmed by comparing the n ids, so results are exact.
class GramTable {
 public:
  GramTable(const std::vector<uint32_t>& ids, const std::vector<uint64_t>& prefix,
            const std::vector<uint64_t>& powers, int n)
      : ids_(ids), prefix_(prefix), pow_n_(powers[n]), n_(n) {
    size_t grams = ids.size() + 1 - static_cast<size_t>(n);
    size_t cap = 16;
    while (cap < grams * 2) cap <<= 1;
    mask_ = cap - 1;
    start_.assign(cap, kEmpty);
    hash_.assign(cap, 0);
    count_.assign(cap, 0);
  }

  // Adds the n-gram starting at word i; returns its slot (count_[slot] is its count so far).
  size_t add(size_t i) {
    uint64_t h = fmix(prefix_[i + n_] - prefix_[i] * pow_n_);
    for (size_t slot = h & mask_;; slot = (slot + 1) & mask_) {
      if (start_[slot] == kEmpty) {
        start_[slot] = i;
        hash_[slot] = h;
        count_[slot] = 1;
        return slot;
      }
      if (hash_[slot] == h &&
          std::equal(ids_.begin() + i, ids_.begin() + i + n_, ids_.begin() + start_[slot])) {
        ++count_[slot];
        return slot;
      }
    }
  }
  int64_t count(size_t slot) const { return count_[slot]; }
  size_t start(size_t slot) const { return start_[slot]; }
  size_t capacity() const { return start_.size(); }

 private:
  static constexpr size_t kEmpty = ~size_t{0};
  static uint64_t fmix(uint64_t k) {  // MurmurHash3 finalizer: spreads the low bits we mask
    k ^= k >> 33;
    k *= 0xFF51AFD7ED558CCDull;
    k ^= k >> 33;
    k *= 0xC4CEB9FE1A85EC53ull;
    return k ^ (k >> 33);
  }
  const std::vector<uint32_t>& ids_;
  const std::vector<uint64_t>& prefix_;
  uint64_t pow_n_;
  size_t n_;
  size_t mask_ = 0;
  std::vector<size_t> start_;
  std::vector<uint64_t> hash_;
  std::vector<int64_t> count_;
};

template <typename CharT>
std::vector<int64_t> stats_impl(const CharT* s, size_t n, const RepetitionOptions& opt) {
  std::vector<int64_t> row(kRepetitionFixed + opt.top_ns.size() + opt.dup_ns.size(), 0);
  row[0] = static_cast<int64_t>(n);
  const CharSet strip(opt.strip);

  // Paragraphs: text.strip() split on runs of two or more "\n".
  size_t b = 0, e = n;
  while (b < e && is_py_space(s[b])) ++b;
  while (e > b && is_py_space(s[e - 1])) --e;
  std::vector<Span> paras;
  size_t start = b;
  for (size_t i = b; i < e;) {
    if (s[i] == '\n' && i + 1 < e && s[i + 1] == '\n') {
      paras.push_back({start, i});
      while (i < e && s[i] == '\n') ++i;
      start = i;
    } else {
      ++i;
    }
  }
  paras.push_back({start, e});
  row[1] = static_cast<int64_t>(paras.size());
  duplicates(s, paras, row[2], row[3]);

  // Lines: str.splitlines(), keeping those with a non-space character.
  std::vector<Span> lines;
  start = 0;
  bool content = false;
  for (size_t i = 0; i < n; ++i) {
    uint32_t c = s[i];
    if (is_py_line_break(c)) {
      if (content) lines.push_back({start, i});
      if (c == '\r' && i + 1 < n && s[i + 1] == '\n') ++i;
      start = i + 1;
      content = false;
    } else if (!is_py_space(c)) {
      content = true;
    }
  }
  if (content) lines.push_back({start, n});
  row[4] = static_cast<int64_t>(lines.size());
  duplicates(s, lines, row[5], row[6]);

  // Words -> ids (exact content equality), and their lengths.
  SpanOps<CharT> ops{s};
  std::unordered_map<Span, uint32_t, SpanOps<CharT>, SpanOps<CharT>> vocab(64, ops, ops);
  std::vector<uint32_t> ids;
  std::vector<int64_t> lens;
  for_each_word(s, n, strip, [&](size_t wb, size_t we) {
    auto it = vocab.emplace(Span{wb, we}, static_cast<uint32_t>(vocab.size())).first;
    ids.push_back(it->second);
    lens.push_back(static_cast<int64_t>(we - wb));
  });
  std::vector<int64_t> prefix(lens.size() + 1, 0);  // prefix sums of word lengths
  for (size_t i = 0; i < lens.size(); ++i) prefix[i + 1] = prefix[i] + lens[i];
  auto gram_chars = [&](size_t at, int g) { return prefix[at + g] - prefix[at] + (g - 1); };

  // Rolling-hash prefixes over word ids: H[i+1] = H[i] * P + (id + 1).
  constexpr uint64_t kP = 0x100000001B3ull;
  std::vector<uint64_t> hprefix(ids.size() + 1, 0), powers(ids.size() + 1, 1);
  for (size_t i = 0; i < ids.size(); ++i) {
    hprefix[i + 1] = hprefix[i] * kP + ids[i] + 1;
    powers[i + 1] = powers[i] * kP;
  }

  for (size_t t = 0; t < opt.top_ns.size(); ++t) {
    int g = opt.top_ns[t];
    if (g <= 0 || ids.size() < static_cast<size_t>(g)) continue;
    GramTable table(ids, hprefix, powers, g);
    for (size_t i = 0; i + g <= ids.size(); ++i) table.add(i);
    // Counter.most_common(1) returns, among the most frequent, the first inserted n-gram, i.e.
    // the one that occurs earliest; each slot keeps its n-gram's first start.
    int64_t best_count = 0;
    size_t first_best = 0;
    for (size_t slot = 0; slot < table.capacity(); ++slot) {
      int64_t c = table.count(slot);
      if (c > best_count || (c == best_count && c > 0 && table.start(slot) < first_best)) {
        best_count = c;
        first_best = table.start(slot);
      }
    }
    row[kRepetitionFixed + t] = gram_chars(first_best, g) * best_count;
  }
  for (size_t t = 0; t < opt.dup_ns.size(); ++t) {
    int g = opt.dup_ns[t];
    if (g <= 0 || ids.size() < static_cast<size_t>(g)) continue;
    GramTable table(ids, hprefix, powers, g);
    int64_t chars = 0;
    for (size_t i = 0; i + g <= ids.size();) {
      if (table.count(table.add(i)) > 1) {  // seen before: a repeat
        chars += gram_chars(i, g);
        i += g;
      } else {
        ++i;
      }
    }
    row[kRepetitionFixed + opt.top_ns.size() + t] = chars;
  }
  return row;
}

}  // namespace

std::vector<int64_t> repetition_stats(const CodeUnits& s, const RepetitionOptions& opt) {
  switch (s.kind) {
    case 1:
      return stats_impl(static_cast<const uint8_t*>(s.data), s.len, opt);
    case 2:
      return stats_impl(static_cast<const uint16_t*>(s.data), s.len, opt);
    case 4:
      return stats_impl(static_cast<const uint32_t*>(s.data), s.len, opt);
    default:
      throw ValueError("string kind must be 1, 2 or 4");
  }
}

std::vector<int64_t> repetition_stats_batch(const std::vector<CodeUnits>& docs,
                                            const RepetitionOptions& opt, int num_threads) {
  for (int g : opt.top_ns) check(g > 0, "n-gram sizes must be > 0");
  for (int g : opt.dup_ns) check(g > 0, "n-gram sizes must be > 0");
  const size_t width = kRepetitionFixed + opt.top_ns.size() + opt.dup_ns.size();
  std::vector<int64_t> out(docs.size() * width, 0);
  parallel_for(docs.size(), num_threads, 8, [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) {
      std::vector<int64_t> row = repetition_stats(docs[i], opt);
      std::copy(row.begin(), row.end(), out.begin() + i * width);
    }
  });
  return out;
}

}  // namespace text
}  // namespace fastlm

// Performance notes (10 MB of pydoc + Shakespeare paragraphs, 66k documents; whole filter incl.
// the Python decision per row, 2 threads on the shared 2-core dev machine):
// - Python GopherRepetitionFilter (tuples in sets/Counter per n): ~2.9 MB/s.
// - v1, std::unordered_map/set keyed by n-gram start for every n: ~11 MB/s.
// - v2, open addressing + rolling hashes for the 9 n-gram passes: ~19 MB/s (the n-gram passes
//   became ~5% of the time; the strip-character test was a linear scan per token end).
// - v3 (this file), CharSet bitmap for the strip set (text/words.h): ~34 MB/s. What remains is
//   per-document setup on these short documents (paragraph/line sets, the vocabulary map, small
//   vectors: malloc/free lead the perf profile); per-thread scratch buffers would be next.
