// A CPU emulator for fastlm's CUDA kernels, so that CI (no GPU) runs their logic, not only
// their compile. With FASTLM_CUDA_EMU defined, cuda_common.cuh includes this header instead of
// the CUDA headers, and csrc/kernels/*.cu compile as plain C++ into fastlm._cuda_emu.
//
// Model. Every CUDA thread of a block is a fiber (its own stack) on one OS thread; blocks run
// one after another. A fiber runs until it reaches a barrier (__syncthreads) or a warp
// collective (__shfl_xor_sync, ldmatrix, mma.sync), so the code between two barriers runs
// "atomically" per thread, in an order that is reshuffled at every round (seeded): a missing
// __syncthreads shows up as a changed result. Strict where hardware is loose:
//   - a cp.async copy lands either when issued or only at the cp.async.wait_group that must
//     cover it (a seeded coin per copy, or one policy for all: set_copy_timing), so both a read
//     before the wait and a copy over data that other warps still read change the result; and
//     dynamic shared memory starts filled with 0xFF bytes (NaN as bf16/fp16/fp32), so a read of
//     never-written shared memory poisons the result;
//   - a warp collective needs all 32 lanes at the same call (same kind), a block barrier all
//     live threads at the same __syncthreads (file and line): anything else is reported as a
//     divergent collective, a divergent barrier or a deadlock;
//   - ldmatrix / cp.async addresses must be 16-byte aligned and inside the block's dynamic
//     shared memory, and every typed load and store of the kernels must be aligned to its type
//     (a uint4 vector to 16 bytes: -fsanitize=alignment with handlers in cuda_emu.cpp); the
//     kernel's dynamic shared memory must not exceed the size it was launched with (checked
//     with a canary after each block), nor 48 KB without cudaFuncSetAttribute, nor 227 KB
//     (sm_90);
//   - a launch with more than 1024 threads, or a zero or oversized grid, fails as on a GPU;
//   - wgmma (sm_90a): the product lands at the wait_group that covers it, reading the shared
//     operands then, which must still hold what they held at the issue (the hardware reads them
//     at any time in between: an operand that arrives after the issue, or is overwritten in
//     flight, is an error), and its accumulators read NaN until then; an issue without a
//     wgmma.fence since the last wait, operands that differ across the warpgroup, a descriptor
//     outside shared memory or with a swizzle, a read of shared memory (at the issue or at the
//     landing) that a cp.async wrote without a fence.proxy.async by the copying thread since,
//     A registers changed while their product
//     is in flight, and a thread ending with products in flight are errors (the proxy fence is
//     modelled for cp.async writes and for plain stores made through store_for_wgmma).
// Needs only POSIX ucontext and -fsanitize=alignment (GCC or Clang).
// Errors become the launch's error (cudaGetLastError), with a message naming the block and
// thread. Not modelled: timing, registers, bank conflicts, L2, memory coherence beyond the
// orderings above, atomics other than float atomicAdd (trivially atomic on one OS thread), and
// races between blocks (blocks run one after another, each to its end). Global memory is
// bounds-checked only where a test names its tensors (set_global_regions): cp.async sources and
// atomics.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

// ---- CUDA qualifiers and builtins, as plain C++.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static  // one block runs at a time: a static is the block's shared variable

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
struct alignas(8) float2 {
  float x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }

// 16-bit float types: storage plus round-to-nearest-even conversions (as cuda_bf16.h/fp16.h).
struct __nv_bfloat16 {
  uint16_t bits;
};
struct __half {
  uint16_t bits;
};
struct __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
struct __half2 {
  __half x, y;
};

namespace fastlm {
namespace emu {

inline uint32_t f2u(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float u2f(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float bf16_to_float(uint16_t b) { return u2f(static_cast<uint32_t>(b) << 16); }
inline uint16_t float_to_bf16(float f) {
  uint32_t u = f2u(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return static_cast<uint16_t>(u >> 16);
}
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {  // zero or subnormal: m * 2^-24, exact in float
    const float v = static_cast<float>(m) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  if (e == 31) return u2f(sign | 0x7f800000u | (m << 13));  // inf / NaN
  return u2f(sign | ((e + 112) << 23) | (m << 13));
}
// Round to nearest, ties to even (as __float2half). Tested against torch over every half value
// and random floats (tests/test_cuda_emu.py).
inline uint16_t float_to_half(float f) {
  const uint32_t x = f2u(f), sign = (x >> 16) & 0x8000u, a = x & 0x7fffffffu;
  if (a >= 0x7f800000u) return static_cast<uint16_t>(sign | (a > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520: inf
  const uint32_t e = a >> 23;
  uint32_t q, rem, halfway;
  if (e < 113) {  // below 2^-14: a subnormal half, m * 2^(e - 126) units of 2^-24
    if (e < 102) return static_cast<uint16_t>(sign);  // below 2^-25: rounds to zero
    const uint32_t m = (a & 0x7fffffu) | 0x800000u, shift = 126 - e;
    q = m >> shift;
    rem = m & ((1u << shift) - 1);
    halfway = 1u << (shift - 1);
  } else {
    q = ((e - 112) << 10) | ((a & 0x7fffffu) >> 13);
    rem = a & 0x1fffu;
    halfway = 0x1000u;
  }
  if (rem > halfway || (rem == halfway && (q & 1u))) ++q;  // a carry moves into the exponent
  return static_cast<uint16_t>(sign | q);
}

// The calling fiber's coordinates.
uint3 thread_idx();
uint3 block_idx();
dim3 block_dim();
dim3 grid_dim();

void sync_block(const char* file, int line);              // __syncthreads
uint32_t shfl_xor(uint32_t v, int lane_mask, unsigned mask);  // __shfl_xor_sync on 32 bits
void ldmatrix_x4(uint32_t* r, const void* p, bool trans);
void cp_async16(void* smem, const void* gmem, bool valid);
void cp_async_commit();
void cp_async_wait(int n);
void mma16816(float* c, const uint32_t* a, const uint32_t* b, bool bf16);
unsigned char* dynamic_smem();
// wgmma (csrc/kernels/wgmma.cuh): a warpgroup collective (128 threads, 4 consecutive warps) at
// issue; the product is computed when the wait_group covering it runs, from the shared memory
// of that moment (which must match the issue's: a hash of the operands is compared), and the
// accumulators read NaN in between. An issue needs a wgmma.fence since
// the thread's last wait_group; a thread may not end with products in flight. Operands in
// shared memory: descriptors with no swizzle (the only layout the kernels use).
uint32_t smem_address(const void* p);  // offset in the block's dynamic shared memory
void wgmma_fence();
void fence_proxy_async();  // this thread's landed cp.async copies and marked stores: readable
// A plain store of `bytes` at p (shared memory) that a wgmma reads later: like cp.async data, it
// needs the storing thread's fence.proxy.async before that read.
void mark_store_for_wgmma(const void* p, size_t bytes);
void wgmma_commit();
void wgmma_wait(int n);
void wgmma(float* d, int n, const uint32_t* a, uint64_t desc_a, uint64_t desc_b, bool scale_d,
           bool trans_a, bool trans_b, bool bf16);
// Global memory a test lets the kernels touch ([address, address + bytes) each): every valid
// cp.async source and every atomic must then lie inside one region, else the launch fails (a
// GPU would read or add past the tensor, or fault). An empty list (the default) checks nothing.
// Plain loads and stores are not seen here: tests put NaN guards around their tensors.
void set_global_regions(const std::vector<std::pair<uint64_t, uint64_t>>& regions);
void check_global(const void* p, size_t bytes, const char* what);
// Scheduling seed (0: threads in index order; default 1, or $FASTLM_EMU_SEED).
void set_seed(uint64_t seed);
// When a cp.async copy lands: "lazy" (at the wait_group that must cover it: catches reads
// before the wait), "eager" (at issue: catches copies over data other warps still read) or
// "mixed" (default: a seeded coin per copy, both kinds of hazard in one run).
void set_copy_timing(const std::string& mode);
// How wgmma reads a descriptor's leading and stride byte offsets: "isa" (wgmma.cuh's reading, the
// default) or the other way round for every operand ("swapped"), the K-major ones only
// ("swapped-k-major") or the MN-major ones only ("swapped-mn-major"): a stand-in for hardware
// that disagrees with wgmma.cuh, for tests of the FASTLM_WGMMA_SWAP fallback.
void set_wgmma_reading(const std::string& mode);
// Kernels with deliberate bugs (csrc/emu/selftest.cpp): "ok", "wrong" or the launch error.
std::string selftest(const std::string& name);

// Grid execution: runs body once per thread of every block (fibers, see above).
void run_grid(const void* kernel, dim3 grid, dim3 block, size_t smem,
              const std::function<void()>& body);

template <class... P>
struct Launch {
  void (*kernel)(P...);
  dim3 grid, block;
  size_t smem;
  template <class... A>
  void operator()(A&&... a) const {
    std::tuple<P...> args(std::forward<A>(a)...);
    auto k = kernel;
    run_grid(reinterpret_cast<const void*>(k), grid, block, smem,
             [&] { std::apply(k, args); });
  }
};
template <class... P>
Launch<P...> launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, void*) {
  return {kernel, grid, block, smem};
}

}  // namespace emu
}  // namespace fastlm

#define threadIdx (::fastlm::emu::thread_idx())
#define blockIdx (::fastlm::emu::block_idx())
#define blockDim (::fastlm::emu::block_dim())
#define gridDim (::fastlm::emu::grid_dim())

#define __syncthreads() ::fastlm::emu::sync_block(__FILE__, __LINE__)
inline float __shfl_xor_sync(unsigned mask, float v, int lane_mask) {
  return ::fastlm::emu::u2f(::fastlm::emu::shfl_xor(::fastlm::emu::f2u(v), lane_mask, mask));
}
inline int __shfl_xor_sync(unsigned mask, int v, int lane_mask) {
  return static_cast<int>(::fastlm::emu::shfl_xor(static_cast<uint32_t>(v), lane_mask, mask));
}
inline float atomicAdd(float* p, float v) {  // fibers on one OS thread: atomic by construction
  ::fastlm::emu::check_global(p, sizeof(float), "atomicAdd");
  float old = *p;
  *p = old + v;
  return old;
}
// sm_90's vector atomic: p must be 8-byte aligned (the float2 access checks it, as a GPU faults).
inline float2 atomicAdd(float2* p, float2 v) {
  ::fastlm::emu::check_global(p, sizeof(float2), "atomicAdd(float2)");
  float2 old = *p;
  *p = {old.x + v.x, old.y + v.y};
  return old;
}
inline float __expf(float x) { return std::exp(x); }
using std::max;
using std::min;

inline float __bfloat162float(__nv_bfloat16 x) { return ::fastlm::emu::bf16_to_float(x.bits); }
inline __nv_bfloat16 __float2bfloat16(float x) { return {::fastlm::emu::float_to_bf16(x)}; }
inline float __half2float(__half x) { return ::fastlm::emu::half_to_float(x.bits); }
inline __half __float2half(float x) { return {::fastlm::emu::float_to_half(x)}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
  return {__float2bfloat16(lo), __float2bfloat16(hi)};
}
inline __half2 __floats2half2_rn(float lo, float hi) {
  return {__float2half(lo), __float2half(hi)};
}

// ---- The runtime API the kernels' host code uses.
typedef void* cudaStream_t;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorLaunchFailure = 719 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
const char* cudaGetErrorString(cudaError_t err);
cudaError_t cudaGetLastError();
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t stream);
namespace fastlm {
namespace emu {
cudaError_t set_max_dynamic_smem(const void* kernel, int bytes);
}
}  // namespace fastlm
template <class F>
cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return ::fastlm::emu::set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), value);
}
