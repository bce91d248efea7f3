// MinHash signatures (fast exact-modular and datasketch-compatible modes), parallel over documents.
#include "dedup/minhash.h"

#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "common/hash.h"
#include "common/thread_pool.h"
#include "dedup/simd.h"
#include "dedup/sha1.h"

namespace fastlm::dedup {
namespace {

inline uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h;
}

// Updates one signature with one shingle hash x in a datasketch mode (kFast uses the SIMD
// kernels of simd.h). One tight loop per mode; kDatasketch vectorizes (32-bit lanes).
void update(uint64_t* sig, const MinHashParams& p, uint64_t x) {
  const size_t P = p.num_perm;
  switch (p.mode) {
    case MinHashMode::kFast:
      break;
    case MinHashMode::kDatasketch: {
      uint32_t h = fmix32(uint32_t(x));
      for (size_t k = 0; k < P; ++k) {
        uint32_t v = uint32_t(p.a[k]) * h + uint32_t(p.b[k]);  // uint32 wraparound, as numpy
        sig[k] = std::min<uint64_t>(sig[k], v);
      }
      break;
    }
    case MinHashMode::kDatasketchLegacy:
      for (size_t k = 0; k < P; ++k) {
        uint64_t v = ((p.a[k] * x + p.b[k]) % kMersenne61) & 0xFFFFFFFFu;  // uint64 wraps, as numpy
        sig[k] = std::min(sig[k], v);
      }
      break;
  }
}

// hash64 (murmur3_128 low half, seed 0) for data followed by >= 16 readable bytes: the tail is
// loaded whole and masked instead of the byte switch, whose jump mispredicts on the random
// shingle lengths. Mixing an all-zero k1/k2 is a no-op (0 * c = 0, rotl 0 = 0, h ^= 0), so
// always mixing both masked halves gives exactly murmur3's result.
inline uint64_t padded_hash64(const char* key, size_t len) {
  const uint8_t* data = reinterpret_cast<const uint8_t*>(key);
  const size_t nblocks = len / 16;
  const uint64_t c1 = 0x87c37b91114253d5ULL, c2 = 0x4cf5ad432745937fULL;
  uint64_t h1 = 0, h2 = 0;
  for (size_t i = 0; i < nblocks; i++) {
    uint64_t k1, k2;
    std::memcpy(&k1, data + i * 16, 8);
    std::memcpy(&k2, data + i * 16 + 8, 8);
    k1 *= c1; k1 = rotl64(k1, 31); k1 *= c2; h1 ^= k1;
    h1 = rotl64(h1, 27); h1 += h2; h1 = h1 * 5 + 0x52dce729;
    k2 *= c2; k2 = rotl64(k2, 33); k2 *= c1; h2 ^= k2;
    h2 = rotl64(h2, 31); h2 += h1; h2 = h2 * 5 + 0x38495ab5;
  }
  size_t rem = len & 15;
  uint64_t k1, k2;
  std::memcpy(&k1, data + nblocks * 16, 8);
  std::memcpy(&k2, data + nblocks * 16 + 8, 8);
  size_t n1 = rem < 8 ? rem : 8, n2 = rem > 8 ? rem - 8 : 0;
  k1 &= n1 == 8 ? ~uint64_t(0) : (uint64_t(1) << (8 * n1)) - 1;
  k2 &= (uint64_t(1) << (8 * n2)) - 1;  // n2 <= 7
  k2 *= c2; k2 = rotl64(k2, 33); k2 *= c1; h2 ^= k2;
  k1 *= c1; k1 = rotl64(k1, 31); k1 *= c2; h1 ^= k1;
  h1 ^= len; h2 ^= len;
  h1 += h2; h2 += h1;
  h1 = fmix64(h1); h2 = fmix64(h2);
  return h1 + h2;
}

}  // namespace

void exact_hashes(const std::vector<TextView>& texts, uint64_t* out, int num_threads) {
  parallel_for(texts.size(), num_threads, 64, [&](size_t begin, size_t end) {
    Words w;
    for (size_t i = begin; i < end; ++i) {
      normalize_words(texts[i].data, texts[i].size, w);
      Hash128 h = murmur3_128(w.text(), w.length);
      out[2 * i] = h.lo;
      out[2 * i + 1] = h.hi;
    }
  });
}

void shingle_hashes(const Words& w, size_t ngram, MinHashMode mode, std::vector<uint64_t>& out) {
  check(ngram >= 1, "ngram must be >= 1");
  size_t m = num_shingles(w.size(), ngram);
  out.resize(m);
  size_t span = std::min(ngram, w.size());
  for (size_t k = 0; k < m; ++k) {
    const char* s = w.text() + w.start[k];
    size_t len = w.end[k + span - 1] - w.start[k];
    out[k] = mode == MinHashMode::kFast ? padded_hash64(s, len) : uint64_t(sha1_hash32(s, len));
  }
}

void minhash_signatures(const std::vector<TextView>& texts, const MinHashParams& p, uint64_t* sig,
                        uint64_t* counts, int num_threads, ShingleHashes* keep) {
  check(p.num_perm >= 1 && p.ngram >= 1, "num_perm and ngram must be >= 1");
  if (p.mode == MinHashMode::kFast) {
    for (size_t k = 0; k < p.num_perm; ++k) {
      check(p.a[k] < kMersenne61 && p.b[k] < kMersenne61, "fast-mode permutations must be < 2^61-1");
    }
  }
  const uint64_t init = empty_slot(p.mode);
  if (keep) {
    keep->offset.resize(texts.size());
    keep->count.assign(texts.size(), 0);
    size_t total = 0;
    for (size_t i = 0; i < texts.size(); ++i) {
      keep->offset[i] = total;
      total += (texts[i].size + 1) / 2;
    }
    keep->data.reset(new uint32_t[std::max<size_t>(total, 1)]);  // uninitialized on purpose
  }
  parallel_for(texts.size(), num_threads, 16, [&](size_t begin, size_t end) {
    Words w;
    std::vector<uint64_t> hashes;
    std::vector<uint32_t> local;
    for (size_t i = begin; i < end; ++i) {
      normalize_words(texts[i].data, texts[i].size, w);
      uint64_t* s = sig + i * p.num_perm;
      std::fill(s, s + p.num_perm, init);
      if (p.mode == MinHashMode::kFast) {
        // 32-bit shingle hashes (murmur low half) written straight into the kept list if any.
        size_t m = num_shingles(w.size(), p.ngram), span = std::min(p.ngram, w.size());
        check(m <= (texts[i].size + 1) / 2, "internal: shingles over the word bound");
        if (!keep) local.resize(m);
        uint32_t* xs = keep ? keep->data.get() + keep->offset[i] : local.data();
        for (size_t k = 0; k < m; ++k) {
          xs[k] = uint32_t(padded_hash64(w.text() + w.start[k], w.end[k + span - 1] - w.start[k]));
        }
        fast_minhash_block(xs, m, p.a, p.b, s, p.num_perm);
        counts[i] = m;
        if (keep) keep->count[i] = m;
      } else {
        shingle_hashes(w, p.ngram, p.mode, hashes);
        for (uint64_t x : hashes) update(s, p, x);
        counts[i] = hashes.size();
        if (keep) {
          check(hashes.size() <= (texts[i].size + 1) / 2, "internal: shingles over the word bound");
          std::copy(hashes.begin(), hashes.end(), keep->data.get() + keep->offset[i]);  // < 2^32
          keep->count[i] = hashes.size();
        }
      }
    }
  });
}

namespace {

// The m values at `in`, sorted, without repeats. Up to 1024 values (a typical doc): one pass by
// the top byte (~1 value per bucket) straight from `in`, then an insertion sort of the nearly
// sorted result; larger: LSD radix sort, 4 byte passes (a pass whose byte is the same for every
// value is skipped). Both ~3x std::sort here.
std::vector<uint32_t> sort_distinct(const uint32_t* in, size_t m) {
  std::vector<uint32_t> x(m);
  if (m <= 1024) {
    uint32_t start[257] = {};
    for (size_t i = 0; i < m; ++i) ++start[(in[i] >> 24) + 1];
    for (int b = 0; b < 256; ++b) start[b + 1] += start[b];
    for (size_t i = 0; i < m; ++i) x[start[in[i] >> 24]++] = in[i];
    for (size_t i = 1; i < m; ++i) {
      uint32_t v = x[i];
      size_t j = i;
      for (; j > 0 && x[j - 1] > v; --j) x[j] = x[j - 1];
      x[j] = v;
    }
  } else {
    std::copy(in, in + m, x.begin());
    std::vector<uint32_t> tmp(m), count(4 * 256, 0);
    for (uint32_t v : x) {
      for (int d = 0; d < 4; ++d) ++count[d * 256 + ((v >> (8 * d)) & 255)];
    }
    for (int d = 0; d < 4; ++d) {
      uint32_t* c = count.data() + d * 256;
      if (c[(x[0] >> (8 * d)) & 255] == m) continue;
      uint32_t sum = 0;
      for (int b = 0; b < 256; ++b) {
        uint32_t c0 = c[b];
        c[b] = sum;
        sum += c0;
      }
      for (uint32_t v : x) tmp[c[(v >> (8 * d)) & 255]++] = v;
      x.swap(tmp);
    }
  }
  x.erase(std::unique(x.begin(), x.end()), x.end());
  return x;
}

}  // namespace

std::vector<uint32_t> shingle_set(const TextView& text, size_t ngram) {
  Words w;
  normalize_words(text.data, text.size, w);
  std::vector<uint64_t> h;
  shingle_hashes(w, ngram, MinHashMode::kFast, h);
  std::vector<uint32_t> x(h.begin(), h.end());  // low 32 bits
  return sort_distinct(x.data(), x.size());
}

std::vector<uint32_t> shingle_set(const uint32_t* hashes, size_t m) {
  return sort_distinct(hashes, m);
}

double jaccard_sorted(const std::vector<uint32_t>& a, const std::vector<uint32_t>& b) {
  size_t i = 0, j = 0, inter = 0;
  while (i < a.size() && j < b.size()) {  // branch-free steps (the order is data-random)
    uint32_t x = a[i], y = b[j];
    inter += x == y;
    i += x <= y;
    j += y <= x;
  }
  size_t uni = a.size() + b.size() - inter;
  return uni == 0 ? 0.0 : double(inter) / double(uni);
}

}  // namespace fastlm::dedup
