// Fast-mode MinHash kernels: portable scalar (unsigned __int128) and AVX-512 (8 lanes, 32-bit limbs).
//
// Performance notes (2-core Xeon with AVX-512, 128 perms, ~1.3 KB docs, one thread):
// - scalar u128 mulmod, shingle-outer loop: ~22 MB/s for signatures (about 2 ns per perm).
// - AVX-512, perm blocks of 16 outer / shingles inner (signature block and a, b in registers):
//   see the module header of benchmarks/bench_dedup.py for the end-to-end numbers.
#include "dedup/minhash_simd.h"

#include <algorithm>
#include <atomic>

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

std::atomic<bool> g_simd{true};

// x < p, a < p, b < p: a*x + b < 2^122 so one fold gives < 2^62, a second < p + 2.
inline uint64_t mulmod61_reduced(uint64_t a, uint64_t x, uint64_t b) {
  unsigned __int128 v = (unsigned __int128)a * x + b;
  uint64_t r = (uint64_t(v) & kP) + uint64_t(v >> 61);
  r = (r & kP) + (r >> 61);
  return r >= kP ? r - kP : r;
}

void block_scalar(const uint64_t* xs, size_t m, const uint64_t* a, const uint64_t* b, uint64_t* sig,
                  size_t P) {
  for (size_t k = 0; k < P; ++k) {
    uint64_t s = sig[k];
    for (size_t i = 0; i < m; ++i) s = std::min(s, mulmod61_reduced(a[k], xs[i], b[k]));
    sig[k] = s;
  }
}

#ifdef FASTLM_DEDUP_X86
// One lane: a = a1*2^32 + a0, x = x1*2^32 + x0 (a1, x1 < 2^29). With 2^61 == 1 (mod p):
//   a*x == 8*a1*x1 + (mid >> 29) + (mid & (2^29-1)) * 2^32 + a0*x0,  mid = a1*x0 + a0*x1 < 2^62,
// and a0*x0 (< 2^64) is folded to (lo & p) + (lo >> 61) first, so the sum with b stays < 2^64.
__attribute__((target("avx512f"))) inline __m512i mulmod_avx512(__m512i a0, __m512i a1, __m512i b,
                                                                 __m512i x0, __m512i x1) {
  const __m512i p = _mm512_set1_epi64(int64_t(kP));
  const __m512i m29 = _mm512_set1_epi64((int64_t(1) << 29) - 1);
  __m512i lo = _mm512_mul_epu32(a0, x0);
  __m512i mid = _mm512_add_epi64(_mm512_mul_epu32(a1, x0), _mm512_mul_epu32(a0, x1));
  __m512i hi = _mm512_slli_epi64(_mm512_mul_epu32(a1, x1), 3);
  __m512i s = _mm512_add_epi64(_mm512_and_si512(lo, p), _mm512_srli_epi64(lo, 61));
  s = _mm512_add_epi64(s, hi);
  s = _mm512_add_epi64(s, _mm512_srli_epi64(mid, 29));
  s = _mm512_add_epi64(s, _mm512_slli_epi64(_mm512_and_si512(mid, m29), 32));
  s = _mm512_add_epi64(s, b);  // < 4*2^61 + 2^34 < 2^64
  s = _mm512_add_epi64(_mm512_and_si512(s, p), _mm512_srli_epi64(s, 61));  // < p + 5
  return _mm512_min_epu64(s, _mm512_sub_epi64(s, p));  // s - p wraps huge when s < p
}

__attribute__((target("avx512f"))) void block_avx512(const uint64_t* xs, size_t m,
                                                     const uint64_t* a, const uint64_t* b,
                                                     uint64_t* sig, size_t P) {
  const __m512i lo32 = _mm512_set1_epi64(0xFFFFFFFFll);
  size_t k = 0;
  // 16 perms per pass: two signature vectors and their a, b stay in registers over all shingles.
  for (; k + 16 <= P; k += 16) {
    __m512i av0 = _mm512_loadu_si512(a + k), av1 = _mm512_loadu_si512(a + k + 8);
    __m512i a00 = _mm512_and_si512(av0, lo32), a01 = _mm512_srli_epi64(av0, 32);
    __m512i a10 = _mm512_and_si512(av1, lo32), a11 = _mm512_srli_epi64(av1, 32);
    __m512i b0 = _mm512_loadu_si512(b + k), b1 = _mm512_loadu_si512(b + k + 8);
    __m512i s0 = _mm512_loadu_si512(sig + k), s1 = _mm512_loadu_si512(sig + k + 8);
    for (size_t i = 0; i < m; ++i) {
      __m512i x0 = _mm512_set1_epi64(int64_t(xs[i] & 0xFFFFFFFFu));
      __m512i x1 = _mm512_set1_epi64(int64_t(xs[i] >> 32));
      s0 = _mm512_min_epu64(s0, mulmod_avx512(a00, a01, b0, x0, x1));
      s1 = _mm512_min_epu64(s1, mulmod_avx512(a10, a11, b1, x0, x1));
    }
    _mm512_storeu_si512(sig + k, s0);
    _mm512_storeu_si512(sig + k + 8, s1);
  }
  for (; k + 8 <= P; k += 8) {
    __m512i av = _mm512_loadu_si512(a + k);
    __m512i a0 = _mm512_and_si512(av, lo32), a1 = _mm512_srli_epi64(av, 32);
    __m512i bv = _mm512_loadu_si512(b + k), s = _mm512_loadu_si512(sig + k);
    for (size_t i = 0; i < m; ++i) {
      __m512i x0 = _mm512_set1_epi64(int64_t(xs[i] & 0xFFFFFFFFu));
      __m512i x1 = _mm512_set1_epi64(int64_t(xs[i] >> 32));
      s = _mm512_min_epu64(s, mulmod_avx512(a0, a1, bv, x0, x1));
    }
    _mm512_storeu_si512(sig + k, s);
  }
  if (k < P) block_scalar(xs, m, a + k, b + k, sig + k, P - k);
}

bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}
#endif

}  // namespace

#ifdef FASTLM_DEDUP_X86
#pragma GCC diagnostic pop
#endif

void fast_minhash_block(const uint64_t* xs, size_t m, const uint64_t* a, const uint64_t* b,
                        uint64_t* sig, size_t P) {
#ifdef FASTLM_DEDUP_X86
  if (g_simd.load(std::memory_order_relaxed) && cpu_has_avx512()) {
    block_avx512(xs, m, a, b, sig, P);
    return;
  }
#endif
  block_scalar(xs, m, a, b, sig, P);
}

bool set_minhash_simd(bool enable) { return g_simd.exchange(enable); }

const char* minhash_kernel_name() {
#ifdef FASTLM_DEDUP_X86
  if (g_simd.load() && cpu_has_avx512()) return "avx512";
#endif
  return "scalar";
}

}  // namespace fastlm::dedup
