// SIMD kernels of dedup with run-time dispatch: fast-mode MinHash and SimHash bit counting.
#pragma once
#include <cstddef>
#include <cstdint>

namespace fastlm::dedup {

// sig[k] = min(sig[k], min over i of (a[k]*xs[i] + b[k]) mod (2^61-1)) for k < P. Requires
// a[k], b[k] < 2^61-1; xs are 32-bit shingle hashes (the kernels rely on x < 2^32).
// Dispatches at run time to AVX-512 IFMA, AVX-512 or AVX2 when the CPU has it (see
// set_dedup_simd), else scalar.
void fast_minhash_block(const uint32_t* xs, size_t m, const uint64_t* a, const uint64_t* b,
                        uint64_t* sig, size_t P);

// Number of k < n with x[k] == y[k] (signature agreement for LSH verification).
size_t count_equal(const uint64_t* x, const uint64_t* y, size_t n);

// ones[b] += number of hashes with bit b set, for b < 64 (uint64 counters; any m).
void count_bits(const uint64_t* hashes, size_t m, uint64_t ones[64]);

// Test hook: highest kernel level to use (0 scalar, 1 AVX2, 2 AVX-512, 3 AVX-512 IFMA; the CPU
// may allow less); returns the previous setting. Results are identical at every level.
int set_dedup_simd(int max_level);

// Name of the MinHash kernel in use now: "avx512ifma", "avx512", "avx2" or "scalar" (SimHash bit
// counting and slot compares have AVX-512 and scalar versions).
const char* dedup_kernel_name();

}  // namespace fastlm::dedup
