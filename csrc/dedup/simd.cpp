// Dedup kernels: fast MinHash (scalar, AVX2, AVX-512, IFMA), SimHash bit counts, slot compares.
//
// Performance notes (this 2-core AVX-512 Xeon, shared with other jobs; one thread, 7.2 MB of
// ~1.3 KB real documents, 128 perms, 5-grams; /tmp scripts timing MinHasher.signatures):
// - scalar u128 mulmod, shingle-outer loop: 22 MB/s for signatures (~2 ns per perm per shingle).
// - AVX-512, 16 perms per pass (signature block, a, b in registers, shingles inner): 55-58 MB/s.
// - 32 perms per pass, limbs precomputed, no masks (mul_epu32 reads the low half): +10%.
// - then branch-free ASCII normalization and a branch-free murmur tail (normalize.cpp,
//   minhash.cpp): 78 MB/s. The kernel alone is ~105 MB/s: 21 vector ops per 8 (perm, shingle)
//   pairs, 4 of them vpmuludq, near the two-port limit; the remaining time is shingle hashing.
// - considered, not tried: restricting a_k < 2^32 (2 products instead of 4) would save ~20% by
//   op count but shrinks the hash family; kept the full-range a_k of the documented generator.
// - 32-bit shingle hashes x (dedup file format 2), full-range a_k kept: a = a1*2^29 + a0 makes
//   a0*x < 2^61 need no fold, so 14 ops per 8 pairs, 2 vpmuludq (was 21 / 4). Predicted ~1.5x on
//   the kernel; measured (13 MB bench corpus, 1 thread, median of 7, load ~0.7) signatures
//   167 -> 126 ms (78 -> 104 MB/s), end to end auto 58 -> 71 MB/s.
// - AVX-512 IFMA (vpmadd52luq/huq), run-time dispatched (level 3): split a at bit 9 instead, so
//   ah*x's two 52-bit halves fold with one shift and the low-half IFMA adds b for free: 11 ops
//   per 8 pairs. Predicted ~20% on the kernel; measured signatures 120.8 -> 104.3 ms (levels 2 vs
//   3 alternated in one process, 1 thread, median of 9).
// - verify "auto" (lsh.cpp, minhash.cpp; 1 thread, clustering step alone, median of 9):
//   exact checks re-normalized and re-hashed each borderline doc: 51 ms (signature-only 13 ms).
//   Keeping the 32-bit hashes of the signature pass (4 bytes per shingle) and only sorting them:
//   37 ms. AVX-512 slot compares (count_equal) for the estimates: signature-only 13.2 -> 12.7.
//   LSD radix sorts (band entries by key; the kept hashes per doc) and a branch-free Jaccard
//   merge: signature-only 12.4 -> 4.8 ms, auto 24.4 -> 16.7 ms. Guessed exact-check pairs run
//   in parallel up front, the scan looks them up: 16.7 -> 15.2 (1 thread; 2 threads gain more).
// - exact-check sets as sorted uint32 (no widening), sorted by one top-byte bucket pass plus an
//   insertion sort (LSD radix above 1024 values): auto clustering 15.5 -> 13.0 ms (1 thread).
// - kept hashes in one flat, uninitialized buffer (slots sized by the word bound) instead of a
//   vector per doc: the keep overhead of the signature pass 3 ms -> <1 ms (1 thread).
// - kernel on uint32 shingle hashes, hashed straight into the kept list (no copy) and broadcast
//   from memory (vpbroadcastd m32 uses a load port, not the ALU port 5): signatures 125 -> 121 ms.
// - AVX2 (4 lanes, no unsigned 64-bit min: signatures kept sign-flipped for signed compares)
//   for CPUs without AVX-512: 54 MB/s here (forced with dedup_set_simd(1)).
// - end to end (benchmarks/bench_dedup.py, 13 MB, load ~1.3, before/after runs alternated):
//   minhash_dedup auto 104 -> 189 MB/s, signature 131 -> 207 MB/s with 2 threads; 57 -> 101
//   and 69 -> 110 MB/s with 1 (datasketch 3.2 MB/s). Left, of 118 ms at 1 thread (signature):
//   the kernel ~65 ms (128 vs 8 perms), normalization ~18, murmur shingle hashing ~22, the rest
//   (band keys, LSH, Python) ~10.
// - SimHash: int64 +-1 per bit (auto-vectorized SSE2) 112 MB/s -> AVX-512 mask adds of 16-bit
//   hash slices into uint32 counters 334 MB/s (fingerprints, one thread).
#include "dedup/simd.h"

#include <algorithm>
#include <atomic>
#include <cstdint>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized inside _mm512_set1_epi64 (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#define FASTLM_DEDUP_X86 1
#endif

namespace fastlm::dedup {
namespace {

constexpr uint64_t kP = (uint64_t(1) << 61) - 1;

// Highest kernel level allowed (test hook): 0 scalar, 1 AVX2, 2 AVX-512, 3 AVX-512 IFMA.
std::atomic<int> g_level{3};

// x < 2^32, a < p, b < p: a*x + b < 2^94 so one fold gives < 2^62, a second < p + 2.
inline uint64_t mulmod61_reduced(uint64_t a, uint64_t x, uint64_t b) {
  unsigned __int128 v = (unsigned __int128)a * x + b;
  uint64_t r = (uint64_t(v) & kP) + uint64_t(v >> 61);
  r = (r & kP) + (r >> 61);
  return r >= kP ? r - kP : r;
}

void block_scalar(const uint32_t* xs, size_t m, const uint64_t* a, const uint64_t* b, uint64_t* sig,
                  size_t P) {
  for (size_t k = 0; k < P; ++k) {
    uint64_t s = sig[k];
    for (size_t i = 0; i < m; ++i) s = std::min(s, mulmod61_reduced(a[k], xs[i], b[k]));
    sig[k] = s;
  }
}

#ifdef FASTLM_DEDUP_X86
// One lane, x < 2^32: a = a1*2^29 + a0 (a0 < 2^29, a1 < 2^32). With 2^61 == 1 (mod p):
//   a*x == a0*x + (u >> 32) + (u mod 2^32) * 2^29,  u = a1*x < 2^64,
// so s = a0*x + b + (u >> 32) + ((u << 29) & p) < 3*2^61 + 2^32 needs one fold to < p + 3 and a
// conditional subtract. _mm512_mul_epu32 reads only the low 32 bits of each lane; a0 and a1 are
// precomputed per block of perms. 14 ops per 8 (perm, shingle) pairs, 2 of them vpmuludq.
struct Lanes {
  __m512i a0, a1, b, sig;
};

__attribute__((target("avx512f"))) inline Lanes load_lanes(const uint64_t* a, const uint64_t* b,
                                                           const uint64_t* sig) {
  Lanes l;
  __m512i av = _mm512_loadu_si512(a);
  l.a0 = _mm512_and_si512(av, _mm512_set1_epi64((int64_t(1) << 29) - 1));
  l.a1 = _mm512_srli_epi64(av, 29);
  l.b = _mm512_loadu_si512(b);
  l.sig = _mm512_loadu_si512(sig);
  return l;
}

__attribute__((target("avx512f"))) inline void update_lanes(Lanes& l, __m512i x) {
  const __m512i p = _mm512_set1_epi64(int64_t(kP));
  __m512i lo = _mm512_mul_epu32(l.a0, x);  // < 2^61
  __m512i u = _mm512_mul_epu32(l.a1, x);   // < 2^64
  __m512i s = _mm512_add_epi64(_mm512_add_epi64(lo, l.b), _mm512_srli_epi64(u, 32));
  s = _mm512_add_epi64(s, _mm512_and_si512(_mm512_slli_epi64(u, 29), p));  // < 2^63
  s = _mm512_add_epi64(_mm512_and_si512(s, p), _mm512_srli_epi64(s, 61));  // < p + 4
  s = _mm512_min_epu64(s, _mm512_sub_epi64(s, p));  // s - p wraps huge when s < p
  l.sig = _mm512_min_epu64(l.sig, s);
}

__attribute__((target("avx512f"))) void block_avx512(const uint32_t* xs, size_t m,
                                                     const uint64_t* a, const uint64_t* b,
                                                     uint64_t* sig, size_t P) {
  size_t k = 0;
  // 32 perms per pass: four signature vectors and their a0, a1, b stay in registers over all
  // shingles (4 x 4 + broadcast + constants + temporaries < 32 zmm registers).
  for (; k + 32 <= P; k += 32) {
    Lanes l0 = load_lanes(a + k, b + k, sig + k), l1 = load_lanes(a + k + 8, b + k + 8, sig + k + 8);
    Lanes l2 = load_lanes(a + k + 16, b + k + 16, sig + k + 16);
    Lanes l3 = load_lanes(a + k + 24, b + k + 24, sig + k + 24);
    for (size_t i = 0; i < m; ++i) {
      // vpbroadcastd from memory (load port): mul_epu32 ignores the copy in the high halves.
      __m512i x = _mm512_set1_epi32(int(xs[i]));
      update_lanes(l0, x);
      update_lanes(l1, x);
      update_lanes(l2, x);
      update_lanes(l3, x);
    }
    _mm512_storeu_si512(sig + k, l0.sig);
    _mm512_storeu_si512(sig + k + 8, l1.sig);
    _mm512_storeu_si512(sig + k + 16, l2.sig);
    _mm512_storeu_si512(sig + k + 24, l3.sig);
  }
  for (; k + 8 <= P; k += 8) {
    Lanes l = load_lanes(a + k, b + k, sig + k);
    for (size_t i = 0; i < m; ++i) update_lanes(l, _mm512_set1_epi32(int(xs[i])));
    _mm512_storeu_si512(sig + k, l.sig);
  }
  if (k < P) block_scalar(xs, m, a + k, b + k, sig + k, P - k);
}

// AVX-512 IFMA lane, x < 2^32: a = ah*2^9 + al (al < 2^9, ah < 2^52) and ah*x = H*2^52 + L
// (H < 2^32, L < 2^52, the two halves vpmadd52huq / vpmadd52luq give). With 2^61 == 1 (mod p):
//   a*x == al*x + H + L*2^9,  so  s = (b + al*x + H) + (L << 9) < 2^62 + 2^42
// (vpmadd52luq adds b for free; L << 9 < 2^61 needs no mask): 11 ops per 8 pairs, 3 of them IFMA.
struct LanesIfma {
  __m512i al, ah, b, sig;
};

__attribute__((target("avx512f,avx512ifma"))) inline LanesIfma load_ifma(const uint64_t* a,
                                                                          const uint64_t* b,
                                                                          const uint64_t* sig) {
  LanesIfma l;
  __m512i av = _mm512_loadu_si512(a);
  l.al = _mm512_and_si512(av, _mm512_set1_epi64(511));
  l.ah = _mm512_srli_epi64(av, 9);
  l.b = _mm512_loadu_si512(b);
  l.sig = _mm512_loadu_si512(sig);
  return l;
}

__attribute__((target("avx512f,avx512ifma"))) inline void update_ifma(LanesIfma& l, __m512i x) {
  const __m512i p = _mm512_set1_epi64(int64_t(kP));
  __m512i t = _mm512_madd52lo_epu64(l.b, l.al, x);  // b + al*x (< 2^41: exact)
  t = _mm512_madd52hi_epu64(t, l.ah, x);             // + H
  __m512i lo = _mm512_madd52lo_epu64(_mm512_setzero_si512(), l.ah, x);  // L
  __m512i s = _mm512_add_epi64(t, _mm512_slli_epi64(lo, 9));
  s = _mm512_add_epi64(_mm512_and_si512(s, p), _mm512_srli_epi64(s, 61));  // < p + 3
  s = _mm512_min_epu64(s, _mm512_sub_epi64(s, p));
  l.sig = _mm512_min_epu64(l.sig, s);
}

__attribute__((target("avx512f,avx512ifma"))) void block_ifma(const uint32_t* xs, size_t m,
                                                             const uint64_t* a, const uint64_t* b,
                                                             uint64_t* sig, size_t P) {
  // IFMA reads 52-bit fields, so x must be zero-extended: widen a chunk of x to uint64 first,
  // then each broadcast is a vpbroadcastq from memory (a load, no ALU port).
  constexpr size_t kChunk = 256;
  alignas(64) uint64_t wide[kChunk];
  size_t k = 0;
  for (; k + 32 <= P; k += 32) {
    LanesIfma l0 = load_ifma(a + k, b + k, sig + k);
    LanesIfma l1 = load_ifma(a + k + 8, b + k + 8, sig + k + 8);
    LanesIfma l2 = load_ifma(a + k + 16, b + k + 16, sig + k + 16);
    LanesIfma l3 = load_ifma(a + k + 24, b + k + 24, sig + k + 24);
    for (size_t c = 0; c < m; c += kChunk) {
      size_t n = std::min(kChunk, m - c);
      for (size_t i = 0; i < n; ++i) wide[i] = xs[c + i];
      for (size_t i = 0; i < n; ++i) {
        __m512i x = _mm512_set1_epi64(int64_t(wide[i]));
        update_ifma(l0, x);
        update_ifma(l1, x);
        update_ifma(l2, x);
        update_ifma(l3, x);
      }
    }
    _mm512_storeu_si512(sig + k, l0.sig);
    _mm512_storeu_si512(sig + k + 8, l1.sig);
    _mm512_storeu_si512(sig + k + 16, l2.sig);
    _mm512_storeu_si512(sig + k + 24, l3.sig);
  }
  for (; k + 8 <= P; k += 8) {
    LanesIfma l = load_ifma(a + k, b + k, sig + k);
    for (size_t i = 0; i < m; ++i) update_ifma(l, _mm512_set1_epi64(int64_t(xs[i])));
    _mm512_storeu_si512(sig + k, l.sig);
  }
  if (k < P) block_scalar(xs, m, a + k, b + k, sig + k, P - k);
}

// AVX2: the same lane math on 4 lanes. There is no unsigned 64-bit min, so the signature lanes
// are kept XORed with the sign bit (unsigned order == signed order of the flipped values) and the
// canonical s < p (< 2^63) is flipped before the signed compare.
struct Lanes2 {
  __m256i a0, a1, b, sigx;
};

__attribute__((target("avx2"))) inline Lanes2 load_lanes2(const uint64_t* a, const uint64_t* b,
                                                          const uint64_t* sig) {
  const __m256i sign = _mm256_set1_epi64x(INT64_MIN);
  Lanes2 l;
  __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a));
  l.a0 = _mm256_and_si256(av, _mm256_set1_epi64x((int64_t(1) << 29) - 1));
  l.a1 = _mm256_srli_epi64(av, 29);
  l.b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b));
  l.sigx = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sig)), sign);
  return l;
}

__attribute__((target("avx2"))) inline void update_lanes2(Lanes2& l, __m256i x) {
  const __m256i p = _mm256_set1_epi64x(int64_t(kP));
  const __m256i pm1 = _mm256_set1_epi64x(int64_t(kP - 1));
  const __m256i sign = _mm256_set1_epi64x(INT64_MIN);
  __m256i lo = _mm256_mul_epu32(l.a0, x);
  __m256i u = _mm256_mul_epu32(l.a1, x);
  __m256i s = _mm256_add_epi64(_mm256_add_epi64(lo, l.b), _mm256_srli_epi64(u, 32));
  s = _mm256_add_epi64(s, _mm256_and_si256(_mm256_slli_epi64(u, 29), p));
  s = _mm256_add_epi64(_mm256_and_si256(s, p), _mm256_srli_epi64(s, 61));  // < p + 4 < 2^62
  s = _mm256_sub_epi64(s, _mm256_and_si256(_mm256_cmpgt_epi64(s, pm1), p));  // canonical
  __m256i sx = _mm256_xor_si256(s, sign);
  l.sigx = _mm256_blendv_epi8(l.sigx, sx, _mm256_cmpgt_epi64(l.sigx, sx));
}

__attribute__((target("avx2"))) void block_avx2(const uint32_t* xs, size_t m, const uint64_t* a,
                                                const uint64_t* b, uint64_t* sig, size_t P) {
  const __m256i sign = _mm256_set1_epi64x(INT64_MIN);
  size_t k = 0;
  for (; k + 16 <= P; k += 16) {  // 16 perms per pass (16 ymm registers of state: some spill)
    Lanes2 l0 = load_lanes2(a + k, b + k, sig + k);
    Lanes2 l1 = load_lanes2(a + k + 4, b + k + 4, sig + k + 4);
    Lanes2 l2 = load_lanes2(a + k + 8, b + k + 8, sig + k + 8);
    Lanes2 l3 = load_lanes2(a + k + 12, b + k + 12, sig + k + 12);
    for (size_t i = 0; i < m; ++i) {
      __m256i x = _mm256_set1_epi32(int(xs[i]));
      update_lanes2(l0, x);
      update_lanes2(l1, x);
      update_lanes2(l2, x);
      update_lanes2(l3, x);
    }
    Lanes2* ls[4] = {&l0, &l1, &l2, &l3};
    for (int v = 0; v < 4; ++v) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(sig + k + 4 * v),
                          _mm256_xor_si256(ls[v]->sigx, sign));
    }
  }
  for (; k + 4 <= P; k += 4) {
    Lanes2 l = load_lanes2(a + k, b + k, sig + k);
    for (size_t i = 0; i < m; ++i) update_lanes2(l, _mm256_set1_epi32(int(xs[i])));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(sig + k), _mm256_xor_si256(l.sigx, sign));
  }
  if (k < P) block_scalar(xs, m, a + k, b + k, sig + k, P - k);
}

// 64 uint32 counters in four vectors; each hash adds 1 to the lanes of its set bits (the hash's
// 16-bit slices are used directly as write masks). Flushed to uint64 every 2^31 hashes.
__attribute__((target("avx512f"))) void count_bits_avx512(const uint64_t* h, size_t m,
                                                          uint64_t ones[64]) {
  const __m512i one = _mm512_set1_epi32(1);
  for (size_t begin = 0; begin < m; begin += (size_t(1) << 31)) {
    size_t end = std::min(m, begin + (size_t(1) << 31));
    __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0;
    for (size_t i = begin; i < end; ++i) {
      uint64_t x = h[i];
      c0 = _mm512_mask_add_epi32(c0, __mmask16(x), c0, one);
      c1 = _mm512_mask_add_epi32(c1, __mmask16(x >> 16), c1, one);
      c2 = _mm512_mask_add_epi32(c2, __mmask16(x >> 32), c2, one);
      c3 = _mm512_mask_add_epi32(c3, __mmask16(x >> 48), c3, one);
    }
    alignas(64) uint32_t tmp[64];
    _mm512_store_si512(tmp, c0);
    _mm512_store_si512(tmp + 16, c1);
    _mm512_store_si512(tmp + 32, c2);
    _mm512_store_si512(tmp + 48, c3);
    for (int b = 0; b < 64; ++b) ones[b] += tmp[b];
  }
}

__attribute__((target("avx512f"))) size_t count_equal_avx512(const uint64_t* x, const uint64_t* y,
                                                              size_t n) {
  size_t k = 0, eq = 0;
  for (; k + 8 <= n; k += 8) {
    eq += __builtin_popcount(
        _mm512_cmpeq_epu64_mask(_mm512_loadu_si512(x + k), _mm512_loadu_si512(y + k)));
  }
  for (; k < n; ++k) eq += x[k] == y[k];
  return eq;
}

// Kernel level to use now: min(allowed, what the CPU has).
int level() {
  static const int cpu = __builtin_cpu_supports("avx512ifma") ? 3
                         : __builtin_cpu_supports("avx512f")  ? 2
                         : __builtin_cpu_supports("avx2")     ? 1
                                                              : 0;
  return std::min(cpu, g_level.load(std::memory_order_relaxed));
}
#endif

}  // namespace

#ifdef FASTLM_DEDUP_X86
#pragma GCC diagnostic pop
#endif

void fast_minhash_block(const uint32_t* xs, size_t m, const uint64_t* a, const uint64_t* b,
                        uint64_t* sig, size_t P) {
#ifdef FASTLM_DEDUP_X86
  int lv = level();
  if (lv == 3) return block_ifma(xs, m, a, b, sig, P);
  if (lv == 2) return block_avx512(xs, m, a, b, sig, P);
  if (lv == 1) return block_avx2(xs, m, a, b, sig, P);
#endif
  block_scalar(xs, m, a, b, sig, P);
}

void count_bits(const uint64_t* hashes, size_t m, uint64_t ones[64]) {
#ifdef FASTLM_DEDUP_X86
  if (level() >= 2) return count_bits_avx512(hashes, m, ones);
#endif
  for (size_t i = 0; i < m; ++i) {
    for (int b = 0; b < 64; ++b) ones[b] += (hashes[i] >> b) & 1;
  }
}

size_t count_equal(const uint64_t* x, const uint64_t* y, size_t n) {
#ifdef FASTLM_DEDUP_X86
  if (level() >= 2) return count_equal_avx512(x, y, n);
#endif
  size_t eq = 0;
  for (size_t k = 0; k < n; ++k) eq += x[k] == y[k];
  return eq;
}

int set_dedup_simd(int max_level) { return g_level.exchange(max_level); }

const char* dedup_kernel_name() {
#ifdef FASTLM_DEDUP_X86
  int lv = level();
  if (lv == 3) return "avx512ifma";
  if (lv == 2) return "avx512";
  if (lv == 1) return "avx2";
#endif
  return "scalar";
}

}  // namespace fastlm::dedup
