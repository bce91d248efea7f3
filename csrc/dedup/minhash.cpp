// MinHash signatures (fast exact-modular and datasketch-compatible modes), parallel over documents.
#include "dedup/minhash.h"

#include <algorithm>

#include "common/error.h"
#include "common/hash.h"
#include "common/thread_pool.h"
#include "dedup/minhash_simd.h"
#include "dedup/sha1.h"

namespace fastlm::dedup {
namespace {

// (a*x + b) mod (2^61-1) for a, b < 2^61 and any 64-bit x, without overflow: the product fits
// in 125 bits, and 2^61 == 1 (mod p) lets us fold the high part onto the low 61 bits twice.
inline uint64_t mulmod61(uint64_t a, uint64_t x, uint64_t b) {
  unsigned __int128 v = (unsigned __int128)a * x + b;
  unsigned __int128 f = (v & kMersenne61) + (v >> 61);  // < 2^61 + 2^64
  uint64_t r = uint64_t(f & kMersenne61) + uint64_t(f >> 61);  // < 2^61 + 8
  return r >= kMersenne61 ? r - kMersenne61 : r;
}

inline uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h;
}

// Updates one signature with one shingle hash x. Kept as three tight loops (one per mode) so
// the compiler can unroll them; kDatasketch vectorizes (32-bit lanes).
void update(uint64_t* sig, const MinHashParams& p, uint64_t x) {
  const size_t P = p.num_perm;
  switch (p.mode) {
    case MinHashMode::kFast:
      for (size_t k = 0; k < P; ++k) sig[k] = std::min(sig[k], mulmod61(p.a[k], x, p.b[k]));
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

}  // namespace

void exact_hashes(const std::vector<TextView>& texts, uint64_t* out, int num_threads) {
  parallel_for(texts.size(), num_threads, 64, [&](size_t begin, size_t end) {
    Words w;
    for (size_t i = begin; i < end; ++i) {
      normalize_words(texts[i].data, texts[i].size, w);
      Hash128 h = murmur3_128(w.text.data(), w.text.size());
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
    const char* s = w.text.data() + w.start[k];
    size_t len = w.end[k + span - 1] - w.start[k];
    out[k] = mode == MinHashMode::kFast ? hash64(s, len) : uint64_t(sha1_hash32(s, len));
  }
}

void minhash_signatures(const std::vector<TextView>& texts, const MinHashParams& p, uint64_t* sig,
                        uint64_t* counts, int num_threads) {
  check(p.num_perm >= 1 && p.ngram >= 1, "num_perm and ngram must be >= 1");
  if (p.mode == MinHashMode::kFast) {
    for (size_t k = 0; k < p.num_perm; ++k) {
      check(p.a[k] < kMersenne61 && p.b[k] < kMersenne61, "fast-mode permutations must be < 2^61-1");
    }
  }
  const uint64_t init = empty_slot(p.mode);
  parallel_for(texts.size(), num_threads, 16, [&](size_t begin, size_t end) {
    Words w;
    std::vector<uint64_t> hashes;
    for (size_t i = begin; i < end; ++i) {
      normalize_words(texts[i].data, texts[i].size, w);
      shingle_hashes(w, p.ngram, p.mode, hashes);
      uint64_t* s = sig + i * p.num_perm;
      std::fill(s, s + p.num_perm, init);
      if (p.mode == MinHashMode::kFast) {
        // a*x == a*(x mod p) (mod p): reduce once per shingle, then the SIMD kernel.
        for (uint64_t& x : hashes) {
          x = (x & kMersenne61) + (x >> 61);
          if (x >= kMersenne61) x -= kMersenne61;
        }
        fast_minhash_block(hashes.data(), hashes.size(), p.a, p.b, s, p.num_perm);
      } else {
        for (uint64_t x : hashes) update(s, p, x);
      }
      counts[i] = hashes.size();
    }
  });
}

std::vector<uint64_t> shingle_set(const TextView& text, size_t ngram) {
  Words w;
  normalize_words(text.data, text.size, w);
  std::vector<uint64_t> h;
  shingle_hashes(w, ngram, MinHashMode::kFast, h);
  std::sort(h.begin(), h.end());
  h.erase(std::unique(h.begin(), h.end()), h.end());
  return h;
}

double jaccard_sorted(const std::vector<uint64_t>& a, const std::vector<uint64_t>& b) {
  size_t i = 0, j = 0, inter = 0;
  while (i < a.size() && j < b.size()) {
    if (a[i] < b[j]) {
      ++i;
    } else if (b[j] < a[i]) {
      ++j;
    } else {
      ++inter;
      ++i;
      ++j;
    }
  }
  size_t uni = a.size() + b.size() - inter;
  return uni == 0 ? 0.0 : double(inter) / double(uni);
}

}  // namespace fastlm::dedup
