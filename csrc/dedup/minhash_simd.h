// SIMD kernels of the fast MinHash mode: min over shingles of (a_k*x + b_k) mod (2^61-1).
#pragma once
#include <cstddef>
#include <cstdint>

namespace fastlm::dedup {

// sig[k] = min(sig[k], min over i of (a[k]*xs[i] + b[k]) mod (2^61-1)) for k < P. Requires
// a[k], b[k] < 2^61-1 and xs[i] < 2^61-1 (already reduced mod p: a*x == a*(x mod p)).
// Dispatches at run time to AVX-512 when the CPU has it (and SIMD is enabled), else scalar.
void fast_minhash_block(const uint64_t* xs, size_t m, const uint64_t* a, const uint64_t* b,
                        uint64_t* sig, size_t P);

// Test hook: enable/disable the SIMD path (returns the previous setting). Results are identical.
bool set_minhash_simd(bool enable);

// Name of the kernel fast_minhash_block uses now: "avx512" or "scalar".
const char* minhash_kernel_name();

}  // namespace fastlm::dedup
